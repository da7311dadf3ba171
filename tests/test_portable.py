"""ONNX export: ONNX Runtime matches torch float32, and the QGIS Deepness plugin's decoding matches predict."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from conftest import firing_retinanet, make_folder
from geolearn import prepare_data
from geolearn.cli import main
from geolearn.data.normalization import Normalization
from geolearn.learn.network_files import onnx_network
from geolearn.models.portable import DecodingNetwork, deepness_metadata

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CHIP = 64
# One class (Deepness keeps the best class per anchor, predict every class above the threshold:
# with one class the two are the same set).
TREE_CHIPS = {f"{i:09d}": ([[10 + i, 12, 30 + i, 28]], ["1"]) if i % 4 else ([], []) for i in range(12)}


@pytest.fixture(scope="module")
def tree_model(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("trees"), TREE_CHIPS, classes={1: "tree"})
    data = prepare_data(root, chip_size=CHIP, batch_size=4, val_split_pct=0.34)
    return firing_retinanet(data, seed=2)


@pytest.fixture(scope="module")
def onnx_package(tree_model, tmp_path_factory):
    return tree_model.save(tmp_path_factory.mktemp("pkg") / "trees", framework="onnx", compute_metrics=False)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_runtime_matches_torch_float32(tree_model, onnx_package):
    assert (onnx_package / "trees.onnx").exists()
    with zipfile.ZipFile(onnx_package / "trees.dlpk") as archive:
        assert "trees.onnx" in archive.namelist()
    session = _session(onnx_package / "trees.onnx")
    (image_input,), (output,) = session.get_inputs(), session.get_outputs()
    assert image_input.name == "images" and image_input.shape == ["batch", 3, CHIP, CHIP]
    assert output.name == "detections" and output.shape == ["batch", 4 + 1, len(tree_model.anchors)]
    generator = torch.Generator().manual_seed(0)
    chips = torch.randn(3, 3, CHIP, CHIP, generator=generator)
    got = session.run(None, {"images": chips.numpy()})[0]
    with torch.no_grad():
        boxes, scores = DecodingNetwork(tree_model.model.eval(), tree_model.anchors, CHIP)(chips)
    assert got.shape == (3, 5, len(tree_model.anchors))
    np.testing.assert_allclose(got[:, 0], ((boxes[..., 0] + boxes[..., 2]) / 2).numpy(), atol=1e-4)
    np.testing.assert_allclose(got[:, 3], (boxes[..., 3] - boxes[..., 1]).numpy(), atol=1e-4)
    np.testing.assert_allclose(got[:, 4], scores[..., 0].numpy(), atol=1e-4)


def _deepness_detect(session, tile_hwc: np.ndarray, confidence: float, iou_threshold: float) -> list[tuple]:
    """What the Deepness plugin does with a tile (deepness/processing/models: model_base.py preprocessing,
    detector.py's YOLO_Ultralytics postprocessing and non_max_suppression_fast, commit f450c63), restated."""
    meta = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    batch = tile_hwc[None].astype(np.float32) * (1.0 / 255.0)
    batch = (batch - np.array(meta["standardization_mean"])) / np.array(meta["standardization_std"])
    batch = np.transpose(batch, (0, 3, 1, 2)).astype(np.float32)
    rows = np.transpose(session.run(None, {"images": batch})[0][0], (1, 0))  # [anchors, 4 + C]
    rows = rows[rows[:, 4:].max(axis=1) >= confidence]
    if len(rows) == 0:
        return []
    probabilities = rows[:, 4:].max(axis=1)
    xyxy = rows.copy()
    xyxy[:, 0], xyxy[:, 1] = rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2
    xyxy[:, 2], xyxy[:, 3] = rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2
    # Greedy NMS by confidence; the plugin counts areas and overlaps inclusive of the end pixel (+1).
    area = (xyxy[:, 2] - xyxy[:, 0] + 1) * (xyxy[:, 3] - xyxy[:, 1] + 1)
    order, picked = np.argsort(probabilities), []
    while order.size > 0:
        best = order[-1]
        picked.append(best)
        others = order[:-1]
        w = np.maximum(0.0, np.minimum(xyxy[best, 2], xyxy[others, 2]) - np.maximum(xyxy[best, 0], xyxy[others, 0]) + 1)
        h = np.maximum(0.0, np.minimum(xyxy[best, 3], xyxy[others, 3]) - np.maximum(xyxy[best, 1], xyxy[others, 1]) + 1)
        overlap = w * h / (area[best] + area[others] - w * h)
        order = others[overlap < iou_threshold]
    kept = xyxy[picked]
    boxes = np.array(kept[:, :4], dtype=int)  # the plugin's boxes are whole pixels (truncated)
    classes = np.argmax(kept[:, 4:], axis=1)
    return [(*box.tolist(), meta["class_names"][str(c)], float(p)) for box, c, p in zip(boxes, classes, kept[:, 4:].max(axis=1))]


def test_the_deepness_plugin_decodes_what_predict_finds(tree_model, onnx_package):
    session = _session(onnx_package / "trees.onnx")
    meta = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["model_type"] == "Detector" and meta["det_type"] == "YOLO_Ultralytics"
    assert meta["class_names"] == {"0": "tree"} and meta["tiles_size"] == CHIP
    assert meta["det_conf"] == pytest.approx(tree_model.threshold) and meta["det_iou_thresh"] == 0.1
    geolearn = meta["geolearn"]
    assert geolearn["chip_size"] == CHIP and geolearn["zoom"] == 1.0 and geolearn["class_names"] == ["tree"]
    rng = np.random.default_rng(4)
    total = 0
    for _ in range(4):
        tile = (rng.random((CHIP, CHIP, 3)) * 255).astype(np.uint8)
        # NMS off on both sides (IoU 1): the plugin counts box sides +1 pixel in its IoU, so near the
        # overlap threshold it may keep another box than torchvision's NMS (docs/model-packages.md).
        found = _deepness_detect(session, tile, confidence=0.3, iou_threshold=1.0)
        boxes, labels, scores = tree_model.predict(tile, threshold=0.3, nms_overlap=1.0)
        assert len(found) == len(boxes)
        for (x1, y1, x2, y2, name, score), (x, y, w, h), label, want in zip(found, boxes, labels, scores):
            assert name == label and score == pytest.approx(want, abs=1e-4)
            assert np.abs(np.array([x1, y1, x2, y2]) - np.array([x, y, x + w, y + h])).max() < 1  # whole pixels
        total += len(found)
    assert total >= 3  # boxes were compared


def test_deepness_standardisation_is_geolearns_normalisation():
    norm = Normalization((100.0, 0.0), (4100.0, 2000.0), (0.5, 0.25), (0.2, 0.1), False)
    meta = deepness_metadata(["a"], 64, norm, threshold=0.5, nms_overlap=0.1, overlap_percent=25, cell_size_m=None)
    raw = torch.tensor([[[100.0, 2100.0, 4100.0]], [[0.0, 500.0, 2000.0]]])
    mean, std = np.array(json.loads(meta["standardization_mean"])), np.array(json.loads(meta["standardization_std"]))
    deepness = (raw.numpy() / 255 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(deepness, norm.normalize(raw).numpy(), rtol=1e-5, atol=1e-5)
    assert "resolution" not in meta  # unknown ground sampling: Deepness asks the user


def test_geolearn_export_onnx_writes_the_file_once(onnx_package, tmp_path, capsys):
    out = tmp_path / "trees.onnx"
    assert main(["export-onnx", str(onnx_package / "trees.dlpk"), str(out), "--threshold", "0.4"]) == 0
    assert "QGIS Deepness" in capsys.readouterr().out
    meta = _session(out).get_modelmeta().custom_metadata_map
    assert json.loads(meta["det_conf"]) == 0.4
    assert main(["export-onnx", str(onnx_package / "trees.dlpk"), str(out)]) == 2
    assert "exists; pass overwrite=True" in capsys.readouterr().err


@pytest.mark.parametrize("epsg, resolution", [(32633, 5.0), (4326, None)])
def test_deepness_resolution_is_the_networks_pixel_in_cm_for_metric_crss(tree_model, monkeypatch, epsg, resolution):
    from rasterio.crs import CRS

    # 0.1 m training pixels, enlarged twice (resize_to): the network sees 5 cm pixels.
    config = tree_model.config.replace(cell_size=0.1, crs_wkt=CRS.from_epsg(epsg).to_wkt(), zoom=2.0)
    captured = {}
    monkeypatch.setattr("geolearn.learn.network_files.onnx_bytes", lambda *args: captured.update(meta=args[-1]) or b"")
    onnx_network(tree_model.model, config, tree_model.anchors, tree_model.threshold)
    got = captured["meta"].get("resolution")
    assert (json.loads(got) if got is not None else None) == (pytest.approx(resolution) if resolution else None)
