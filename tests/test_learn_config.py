"""ModelConfig: one description of a model, from the data, into the EMD and back."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from geolearn import prepare_data
from geolearn.data.esri import ClassInfo
from geolearn.data.normalization import Normalization
from geolearn.learn.config import ModelConfig
from geolearn.learn.retinanet import RetinaNet
from geolearn.models.anchors import DEFAULT_RATIOS, DEFAULT_SCALES

from conftest import CHIP, chip_pixels

UTM33N = "EPSG:32633"


def multispectral_config(**changes) -> ModelConfig:
    fields = dict(
        class_infos=[ClassInfo(3, "roof", (200, 10, 10)), ClassInfo(7, "pool", (0, 0, 255))],
        chip_size=128,
        normalization=Normalization((0.0, 10.0, 0.0, 100.0), (1000.0, 2010.0, 4000.0, 5100.0),
                                    (0.5, 0.25, 0.1, 0.4), (0.1, 0.2, 0.05, 0.3), False),
        n_bands=4,
        band_names=["red", "green", "blue", "nir"],
        extract_bands=[0, 1, 2, 3],
        resize_to=192,
        zoom=1.5,
        cell_size=0.25,
        crs_wkt=None,
        backbone="resnet34",
        scales=[1.0, 0.5],
        ratios=[0.5, 1.0, 2.0],
        learning_rate=3e-4,
        threshold=0.31,
    )
    return ModelConfig(**(fields | changes))


def test_sequences_become_tuples_and_the_config_is_frozen():
    config = multispectral_config()
    assert config.class_infos == (ClassInfo(3, "roof", (200, 10, 10)), ClassInfo(7, "pool", (0, 0, 255)))
    assert config.scales == (1.0, 0.5) and config.band_names == ("red", "green", "blue", "nir")
    assert config.classes == ["background", "roof", "pool"]
    assert config.window_size == round(128 / 1.5) == 85
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.chip_size = 64  # type: ignore[misc]
    assert config.replace(threshold=0.5).threshold == 0.5 and config.threshold == 0.31


@pytest.mark.parametrize(("changes", "message"), [
    ({"scales": [-1, 1]}, r"scales=\[-1, 1\]: give a non-empty list of positive numbers"),
    ({"scales": []}, r"scales=\[\]: give a non-empty list"),
    ({"ratios": "huge"}, r"ratios='huge': give a non-empty list"),
    ({"chip_size": 0}, r"chip_size=0: give the training chips' side"),
    ({"zoom": 0}, r"zoom=0: network pixels per imagery pixel"),
    ({"threshold": 1.2}, r"threshold=1.2: a detection score between 0 and 1"),
    ({"n_bands": 3}, r"normalization has 4 bands, the model reads 3"),
    ({"class_infos": []}, r"classes=\[\]: give a non-empty list of ClassInfo"),
])
def test_a_value_no_network_could_use_is_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        multispectral_config(**changes)


def test_the_score_threshold_is_the_calibrated_one_else_arcgis_default():
    assert multispectral_config().score_threshold == 0.31
    assert multispectral_config(threshold=None).score_threshold == 0.5


def test_the_emd_round_trip_gives_back_the_same_config(tmp_path):
    config = multispectral_config()
    (tmp_path / "roofs.pth").write_bytes(b"")  # read_emd wants the weights file beside the EMD
    (tmp_path / "roofs.emd").write_text(json.dumps(config.to_emd("roofs.pth")))
    assert ModelConfig.from_emd(tmp_path / "roofs.emd") == config
    assert ModelConfig.from_emd(tmp_path) == config  # the folder holding it


def test_the_emd_speaks_arcgis_learn(tmp_path):
    emd = multispectral_config().to_emd("roofs.pth", average_precision={"roof": 0.5, "pool": 0.25})
    assert emd["ModelParameters"] == {"scales": [1.0, 0.5], "ratios": [0.5, 1.0, 2.0], "backbone": "resnet34",
                                      "backend": "pytorch"}
    assert emd["ImageHeight"] == emd["ImageWidth"] == 128 and emd["resize_to"] == 192
    assert emd["IsMultispectral"] is True and emd["Bands"] == ["red", "green", "blue", "nir"]
    assert emd["LearningRate"] == "3.0000e-04" and emd["average_precision_score"] == {"roof": 0.5, "pool": 0.25}
    assert emd["Classes"] == [{"Value": 3, "Name": "roof", "Color": [200, 10, 10]},
                              {"Value": 7, "Name": "pool", "Color": [0, 0, 255]}]
    assert emd["geolearn"]["zoom"] == 1.5 and emd["geolearn"]["threshold"] == 0.31


def test_from_data_describes_the_data_with_the_default_anchors(voc_folder):
    data = prepare_data(voc_folder, chip_size=48, resize_to=96, batch_size=2, val_split_pct=0.0)
    config = ModelConfig.from_data(data)
    assert config.classes == data.classes == ["background", "pool", "tree"]
    assert [c.value for c in config.class_infos] == sorted(data.class_mapping)
    assert config.chip_size == 48 and config.resize_to == 96 and config.n_bands == 3
    assert config.zoom == 96 / CHIP  # the exported chips are CHIP px: enlarged 1.5 times
    assert config.normalization == data.normalization
    assert (config.backbone, config.scales, config.ratios) == ("resnet50", DEFAULT_SCALES, DEFAULT_RATIOS)
    assert config.learning_rate is None and config.threshold is None


def test_prepare_data_reads_the_zoom_from_the_chips_it_read(voc_folder):
    assert prepare_data(voc_folder, chip_size=32, val_split_pct=0.0).zoom == 1.0
    assert prepare_data(voc_folder, chip_size=32, resize_to=32, val_split_pct=0.0).zoom == 32 / CHIP


def test_a_model_built_from_its_config_and_weights_predicts_as_the_original(tiny_data):
    torch.manual_seed(0)
    model = RetinaNet(tiny_data, backbone="resnet18", pretrained=False, mixed_precision=False)
    torch.nn.init.normal_(model.model.classifier[-1].weight, std=0.05)
    model.model.eval()
    rebuilt = RetinaNet.from_config(model.config, weights=model.model.state_dict())
    rebuilt.mixed_precision = False
    assert rebuilt.config == model.config and rebuilt.scales == model.scales
    image = np.moveaxis(chip_pixels([[10, 10, 30, 20]], size=96), 0, -1)
    expected = model.predict(image, threshold=0.2)
    assert len(expected[0]) > 0  # the comparison below is not between two empty results
    assert rebuilt.predict(image, threshold=0.2) == expected


def test_fit_records_its_learning_rate_and_threshold_in_the_config(tiny_data, tmp_path):
    torch.manual_seed(0)
    model = RetinaNet(tiny_data, backbone="resnet18", pretrained=False)
    model.fit(1, lr=1e-3, checkpoint=False)
    assert model.config.learning_rate == 1e-3
    assert model.config.threshold is None or 0.05 <= model.config.threshold <= 1
    folder = model.save(tmp_path / "m", compute_metrics=False)
    # The EMD always names the bands read (arcgis.learn's ExtractBands): "all" comes back as the list.
    assert model.config.extract_bands is None
    assert ModelConfig.from_emd(folder) == model.config.replace(extract_bands=(0, 1, 2))


def test_the_chip_headers_are_read_once_by_prepare_data(voc_folder, monkeypatch):
    data = prepare_data(voc_folder, chip_size=48, resize_to=96, batch_size=2, val_split_pct=0.0)
    assert data.train_ds.sizes == [(CHIP, CHIP)] * len(data.train_ds.images)

    def refuse(path):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr("geolearn.data.dataset.read_image_info", refuse)
    monkeypatch.setattr("geolearn.data.images.read_image_info", refuse)
    fit = RetinaNet.suggest_anchors(data)  # boxes scaled by resize_to / the recorded sides
    assert len(fit.scales) > 0 and 0 < fit.coverage <= 1
    assert ModelConfig.from_data(data).zoom == 96 / CHIP
