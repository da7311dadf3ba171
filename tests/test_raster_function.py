"""The package's ArcGIS raster function (GeolearnObjectDetector.py), run as ArcGIS Pro runs it.

The script runs in a subprocess whose import system refuses geolearn, fastai and rasterio (and,
in one case, torchvision): only numpy and torch, as in Pro's deep-learning environment. It is
driven in Pro's order — initialize, getParameterInfo, getConfiguration, vectorize per tile —
over tiles of the sample scene, and its features must be ``model.predict``'s boxes on the same
tiles: the boxes whose centre lies in the tile without its padding, in that part's pixels.

The model is not trained: its classifier's last layer gets random weights, so that it fires on
scattered anchors with varied scores and boxes. What is tested is that two paths agree on every
box, not that the boxes are good.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from conftest import TINY_CHIPS, firing_retinanet, make_folder
from geolearn import prepare_data
from geolearn.learn.emd import INFERENCE_FUNCTION, read_emd
from geolearn.learn.retinanet import RetinaNet
from geolearn.models import raster_function
from geolearn.inference.windows import plan_windows

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / "sample_data" / "sample_scene.tif"
CHIP = 64

# Run in the subprocess: refuse the libraries ArcGIS Pro's environment lacks, then drive the
# raster function as Pro does, for every case of the job file, and write what vectorize returned.
DRIVER = r'''
import importlib.abc, importlib.util, json, sys
import numpy as np

REFUSED = set(sys.argv[2].split(","))

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ImportError(f"{name} is not installed in ArcGIS Pro's environment")
        return None

sys.meta_path.insert(0, Refuse())
job = json.load(open(sys.argv[1]))
spec = importlib.util.spec_from_file_location("GeolearnObjectDetector", job["script"])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
results = []
for case in job["cases"]:
    detector = module.GeolearnObjectDetector()
    detector.initialize(model=job["emd"], device=-1)
    names = [p["name"] for p in detector.getParameterInfo()]
    configuration = detector.getConfiguration(**case["scalars"])
    tiles = []
    for tile_path, mask_path in case["tiles"]:
        pixels = np.load(tile_path)
        mask = np.load(mask_path)
        padding = configuration["padding"]
        assert pixels.shape[1:] == (configuration["ty"] + 2 * padding, configuration["tx"] + 2 * padding), (
            pixels.shape, configuration)
        out = detector.vectorize(raster_pixels=pixels, raster_mask=mask)
        tiles.append(json.loads(out["output_vectors"]))
    results.append({"parameters": names, "configuration": {k: v for k, v in configuration.items()
                                                           if k != "extractBands"},
                    "fields": json.loads(detector.getFields()), "geometry": detector.getGeometryType(),
                    "tiles": tiles, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in
                                                     ("geolearn", "fastai", "rasterio", "torchvision"))})
json.dump(results, open(job["out"], "w"))
'''


@pytest.fixture(scope="module")
def rgb_package(tiny_data, tmp_path_factory):
    model = firing_retinanet(tiny_data, seed=0)
    folder = model.save(tmp_path_factory.mktemp("pkg") / "trees", compute_metrics=False)
    return model, folder


@pytest.fixture(scope="module")
def ms_package(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("ms"), TINY_CHIPS, suffix=".tif", bands=4, dtype="uint16")
    data = prepare_data(root, chip_size=CHIP, batch_size=4, val_split_pct=0.34)
    model = firing_retinanet(data, seed=1)
    folder = model.save(tmp_path_factory.mktemp("pkg") / "ms", compute_metrics=False)
    return model, folder


def _scene_tile(row: int, col: int, height: int, width: int) -> np.ndarray:
    with rasterio.open(SCENE) as src:
        return src.read(window=Window(col, row, width, height))


def _run_pro(folder: Path, cases: list[dict], tmp_path: Path, refuse: str = "geolearn,fastai,rasterio") -> list[dict]:
    """Drives the package's raster function in a subprocess as Pro does; tiles are (pixels, mask) arrays."""
    job_cases = []
    for c, case in enumerate(cases):
        tiles = []
        for t, (pixels, mask) in enumerate(case["tiles"]):
            tile_path, mask_path = tmp_path / f"tile{c}_{t}.npy", tmp_path / f"mask{c}_{t}.npy"
            np.save(tile_path, pixels)
            np.save(mask_path, mask)
            tiles.append((str(tile_path), str(mask_path)))
        job_cases.append({"scalars": case["scalars"], "tiles": tiles})
    job = {"script": str(folder / INFERENCE_FUNCTION), "emd": str(folder / f"{folder.name}.emd"),
           "cases": job_cases, "out": str(tmp_path / "out.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "driver.py").write_text(DRIVER)
    # A clean interpreter from another folder: nothing of the repository on its path.
    done = subprocess.run([sys.executable, "-I", str(tmp_path / "driver.py"), str(tmp_path / "job.json"), refuse],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def _expected(model: RetinaNet, pixels: np.ndarray, padding: int, threshold: float) -> list[tuple]:
    """model.predict on the tile, the boxes whose centre is in the unpadded part, in its pixels."""
    boxes, labels, scores = model.predict(pixels.transpose(1, 2, 0), threshold=threshold, nms_overlap=0.1,
                                          batch_size=4)
    height, width = pixels.shape[1:]
    kept = []
    for (x, y, w, h), label, score in zip(boxes, labels, scores):
        cx, cy = x + w / 2, y + h / 2
        if padding <= cx < width - padding and padding <= cy < height - padding:
            kept.append((x - padding, y - padding, x + w - padding, y + h - padding, label, score * 100))
    return kept


def _found(features: dict) -> list[tuple]:
    found = []
    for feature in features["features"]:
        ring = feature["geometry"]["rings"][0]
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        found.append((min(xs), min(ys), max(xs), max(ys), feature["attributes"]["Class"],
                      feature["attributes"]["Confidence"]))
        assert ring[0] == [min(xs), min(ys)] and ring[2] == [max(xs), max(ys)]  # arcgis.learn's corner order
    return found


def _assert_same(found: list[tuple], expected: list[tuple]) -> None:
    assert len(found) == len(expected), (found, expected)
    for got, want in zip(found, expected):
        assert got[4] == want[4]  # class name
        assert got[5] == pytest.approx(want[5], abs=0.1)  # Confidence: score × 100, within 1e-3
        assert np.abs(np.array(got[:4]) - np.array(want[:4])).max() <= 0.5


@pytest.mark.parametrize("padding, batch_size, refuse", [
    (8, 1, "geolearn,fastai,rasterio"),
    (8, 4, "geolearn,fastai,rasterio"),
    (0, 1, "geolearn,fastai,rasterio"),
    (8, 4, "geolearn,fastai,rasterio,torchvision"),  # the plain-torch NMS
])
def test_the_raster_function_finds_what_predict_finds_on_tiles_of_the_sample_scene(
        rgb_package, tmp_path, padding, batch_size, refuse):
    model, folder = rgb_package
    rows, columns = (1, 1) if batch_size == 1 else (2, 2)
    inner = CHIP - 2 * padding
    height, width = rows * inner + 2 * padding, columns * inner + 2 * padding
    tiles = [_scene_tile(r, c, height, width) for r, c in [(300, 400), (1000, 1500), (2000, 200)]]
    nodata = np.zeros_like(tiles[0])  # a tile with nothing to find: Pro sends it with an all-zero mask
    threshold = 0.3
    scalars = {"padding": str(padding), "threshold": str(threshold), "batch_size": str(batch_size),
               "nms_overlap": "0.1"}
    (result,) = _run_pro(folder, [{"scalars": scalars, "tiles": [(t, np.ones_like(t)) for t in tiles]
                                   + [(nodata, np.zeros_like(nodata))]}], tmp_path, refuse)

    assert {m.split(".")[0] for m in result["loaded"]} <= ({"torchvision"} - set(refuse.split(",")))
    assert result["parameters"] == ["raster", "model", "device", "padding", "threshold", "nms_overlap", "batch_size",
                                    "exclude_pad_detections"]
    assert result["configuration"]["tx"] == columns * inner and result["configuration"]["ty"] == rows * inner
    assert result["geometry"] == 4
    assert [f["name"] for f in result["fields"]["fields"]] == ["OID", "Class", "Confidence", "Shape"]
    total = 0
    for tile, features in zip(tiles, result["tiles"]):
        expected = _expected(model, tile, padding, threshold)
        _assert_same(_found(features), expected)
        total += len(expected)
    assert total >= 3  # the comparison compared boxes
    assert result["tiles"][-1]["features"] == []


def test_a_multispectral_package_runs_in_pro_as_predict(ms_package, tmp_path):
    model, folder = ms_package
    rng = np.random.default_rng(5)
    tiles = [(rng.random((4, 112, 112)) * 10000).astype(np.uint16) for _ in range(2)]
    (result,) = _run_pro(folder, [{"scalars": {"batch_size": "4", "threshold": "0.3"},
                                   "tiles": [(t, np.ones_like(t)) for t in tiles]}], tmp_path)
    assert result["configuration"]["padding"] == CHIP // 8  # detect_objects' default
    total = 0
    for tile, features in zip(tiles, result["tiles"]):
        expected = _expected(model, tile, CHIP // 8, 0.3)
        _assert_same(_found(features), expected)
        total += len(expected)
    assert total >= 2


def test_the_dialog_defaults_are_the_models_own(rgb_package, tmp_path):
    model, folder = rgb_package
    emd = json.loads((folder / "trees.emd").read_text())
    assert emd["InferenceFunction"] == "GeolearnObjectDetector.py"
    assert emd["geolearn"]["network_script"] == "trees_detector.pt"
    with zipfile.ZipFile(folder / "trees.dlpk") as archive:
        assert {"GeolearnObjectDetector.py", "trees_detector.pt", "trees.emd", "trees.pth"} <= set(archive.namelist())
    assert (folder / "GeolearnObjectDetector.py").read_bytes() == Path(raster_function.__file__).read_bytes()

    detector = raster_function.GeolearnObjectDetector()
    detector.initialize(model=str(folder / "trees.emd"), device=-1)
    defaults = {p["name"]: p.get("value") for p in detector.getParameterInfo()}
    assert defaults["threshold"] == model.threshold == 0.5 and defaults["padding"] == CHIP // 8
    assert defaults["nms_overlap"] == 0.1 and defaults["exclude_pad_detections"] == "True"
    configuration = detector.getConfiguration(batch_size=6)  # 2 rows × 3 columns of 48 px
    assert (configuration["ty"], configuration["tx"], configuration["fixedTileSize"]) == (96, 144, 1)
    assert configuration["extractBands"] == (0, 1, 2)
    with pytest.raises(ValueError, match=r"padding=40: pixels of context on each side of a 64 px window, from 0 to 31"):
        detector.getConfiguration(padding=40)
    with pytest.raises(ValueError, match=r"threshold=1.5: give a number between 0 and 1"):
        detector.getConfiguration(threshold="1.5")
    with pytest.raises(ValueError, match=r"batch_size='four': give a number"):
        detector.getConfiguration(batch_size="four")


def test_a_package_without_its_network_script_says_how_to_get_one(rgb_package, tmp_path):
    _, folder = rgb_package
    emd = json.loads((folder / "trees.emd").read_text())
    del emd["geolearn"]["network_script"]
    (tmp_path / "old.emd").write_text(json.dumps(emd))
    with pytest.raises(ValueError, match=r"saved by geolearn 0.1 or by arcgis.learn.*save it again"):
        raster_function.GeolearnObjectDetector().initialize(model=str(tmp_path / "old.emd"))


def test_a_package_written_by_geolearn_0_1_still_loads_and_predicts(rgb_package, tmp_path):
    model, folder = rgb_package
    # What 0.1 wrote: Esri's script named but not shipped, no threshold or network script.
    emd = json.loads((folder / "trees.emd").read_text())
    emd["InferenceFunction"] = "ArcGISObjectDetector.py"
    emd["geolearn"]["version"] = "0.1.0"
    for key in ("threshold", "network_script"):
        del emd["geolearn"][key]
    old = tmp_path / "old"
    old.mkdir()
    (old / "old.emd").write_text(json.dumps(emd).replace('"trees.pth"', '"old.pth"'))
    (old / "old.pth").write_bytes((folder / "trees.pth").read_bytes())
    with zipfile.ZipFile(tmp_path / "old.dlpk", "w") as archive:
        for file in old.iterdir():
            archive.write(file, file.name)
    loaded = RetinaNet.from_model(tmp_path / "old.dlpk")
    assert read_emd(old / "old.emd").config.threshold is None and loaded.threshold == 0.5
    loaded.mixed_precision = False
    tile = _scene_tile(300, 400, CHIP, CHIP).transpose(1, 2, 0)
    assert loaded.predict(tile, threshold=0.3) == model.predict(tile, threshold=0.3)
    resaved = loaded.save(tmp_path / "resaved", compute_metrics=False)  # and a new save runs in Pro
    assert (resaved / "GeolearnObjectDetector.py").exists() and (resaved / "resaved_detector.pt").exists()


def test_the_plain_torch_nms_keeps_what_torchvision_keeps():
    from torchvision.ops import batched_nms

    generator = torch.Generator().manual_seed(3)
    corner = torch.rand(300, 2, generator=generator) * 200
    boxes = torch.cat([corner, corner + 5 + torch.rand(300, 2, generator=generator) * 40], dim=1)
    scores = torch.rand(300, generator=generator)
    groups = torch.randint(1, 4, (300,), generator=generator)
    for overlap in (0.1, 0.5):
        assert torch.equal(raster_function._plain_batched_nms(boxes, scores, groups, overlap),
                           batched_nms(boxes, scores, groups, overlap))


@pytest.mark.parametrize("height, width, overlap", [(112, 112, 16), (100, 160, 40), (64, 64, 0), (50, 200, 10)])
def test_the_window_grid_is_plan_windows(height, width, overlap):
    windows, edges = raster_function.window_grid(height, width, CHIP, overlap)
    plan = plan_windows(height, width, CHIP, overlap)
    assert torch.equal(windows, plan.windows) and torch.equal(edges, plan.neighbour_edges)
