"""RetinaNet.save / load / from_model / predict / show_results."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from geolearn import prepare_data
from geolearn.errors import ImageReadError, ModelDefinitionError
from geolearn.learn.retinanet import RetinaNet

from conftest import chip_pixels, write_image

@pytest.fixture
def model(tiny_data):
    torch.manual_seed(0)
    model = RetinaNet(tiny_data, backbone="resnet18", pretrained=False)
    # Fresh heads predict the prior everywhere; small random weights give varied scores.
    for head in (model.model.classifier, model.model.box_regressor):
        torch.nn.init.normal_(head[-1].weight, std=0.05)
    model.model.eval()
    return model


def test_save_writes_the_package(model, tiny_data):
    folder = model.save("pools", compute_metrics=True)
    assert folder == tiny_data.path / "models" / "pools"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"pools.pth", "pools.emd", "pools.dlpk", "model_metrics.html", "ModelCharacteristics/show_results.png"} <= names
    emd = json.loads((folder / "pools.emd").read_text())
    assert emd["ModelFile"] == "pools.pth" and emd["ModelParameters"]["backbone"] == "resnet18"
    assert [c["Name"] for c in emd["Classes"]] == ["pool", "tree"]
    assert set(emd["average_precision_score"]) == {"pool", "tree"}  # both have validation ground truth
    with zipfile.ZipFile(folder / "pools.dlpk") as archive:
        assert "pools.emd" in archive.namelist() and "pools.pth" in archive.namelist()


@pytest.mark.parametrize("form", ["emd", "folder", "dlpk"])
def test_from_model_predicts_identically(model, tmp_path, form):
    folder = model.save(tmp_path / "saved" / "m", compute_metrics=False)
    source = {"emd": folder / "m.emd", "folder": folder, "dlpk": folder / "m.dlpk"}[form]
    loaded = RetinaNet.from_model(source)
    image = np.moveaxis(chip_pixels([[10, 10, 30, 20]], size=160), 0, -1)
    expected = model.predict(image, threshold=0.2, batch_size=4)
    assert len(expected[0]) > 0  # two empty results would agree whatever was loaded
    assert loaded.predict(image, threshold=0.2, batch_size=4) == expected
    assert loaded.scales == model.scales and loaded.ratios == model.ratios


def test_load_restores_identical_weights(model, tiny_data):
    model.save("again", compute_metrics=False)
    other = RetinaNet(tiny_data, backbone="resnet18", pretrained=False)
    other.load("again")
    assert all(torch.equal(a, b) for a, b in zip(model.model.state_dict().values(), other.model.state_dict().values()))


def test_a_model_without_data_predicts_and_saves_but_does_not_train(model, tmp_path):
    loaded = RetinaNet.from_model(model.save(tmp_path / "m", compute_metrics=False))
    for call in (lambda: loaded.fit(1), loaded.lr_find, loaded.average_precision_score, loaded.show_results):
        with pytest.raises(RuntimeError, match=r"needs training data.*from_model\(emd_path, data="):
            call()
    assert (loaded.save(tmp_path / "resaved") / "resaved.pth").exists()


def test_predict_reads_files_and_returns_xywh_boxes_and_names(model, tmp_path):
    path = write_image(tmp_path / "scene.png", chip_pixels([[40, 50, 70, 60]], size=200))
    boxes, labels, scores = model.predict(path, threshold=0.2)
    assert len(boxes) == len(labels) == len(scores) > 0
    for (x, y, w, h), label in zip(boxes, labels):
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 200 + 1e-4 and y + h <= 200 + 1e-4
        assert label in ("pool", "tree")
    assert model.predict(path, threshold=0.2, return_scores=False) == (boxes, labels)
    model.predict(path, threshold=0.2, visualize=True)
    assert isinstance(model.predict_figure, Figure)


def test_predict_refuses_a_truncated_png_instead_of_reading_zeros(model, tmp_path):
    path = write_image(tmp_path / "scene.png", chip_pixels([[40, 50, 70, 60]], size=200))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(ImageReadError, match=r"scene\.png: the PNG is truncated"):
        model.predict(path)


def test_predict_refuses_the_wrong_band_count(model):
    with pytest.raises(ValueError, match="the image has 4 bands, the model takes 3"):
        model.predict(np.zeros((64, 64, 4), dtype=np.uint8))


def test_show_results_draws_truth_and_predictions(model):
    figure = model.show_results(rows=2, thresh=0.2)
    assert isinstance(figure, Figure) and len(figure.axes) == 4


def test_publish_is_outside_geolearn(model):
    with pytest.raises(NotImplementedError, match="outside geolearn"):
        model.save("x", publish=True)


def test_an_arcgis_learn_model_folder_loads_and_predicts(tmp_path):
    """A folder as arcgis.learn saves it (EMD with its older class keys, plain state_dict .pth)."""
    from test_retinanet_model import REF, recipe_state_dict

    folder = tmp_path / "arcgis_model"
    folder.mkdir()
    weights = recipe_state_dict("resnet18")  # arcgis.learn's keys, filled by the reference recipe
    torch.save(weights, folder / "trees.pth")
    emd = {
        "Framework": "arcgis.learn.models._inferencing",
        "ModelConfiguration": "_RetinaNet_Inference",
        "ModelType": "ObjectDetection",
        "ModelFile": "trees.pth",
        "ModelName": "RetinaNet",
        "ImageHeight": 256,
        "ImageWidth": 256,
        "ExtractBands": [0, 1, 2],
        "ModelParameters": {"backbone": "resnet18", "scales": [1, 2 ** (-1 / 3), 2 ** (-2 / 3)], "ratios": [0.5, 1, 2]},
        "Classes": [{"ClassValue": 1, "ClassName": "pool", "Color": [0, 0, 255]},
                    {"ClassValue": 2, "ClassName": "tree", "Color": [0, 255, 0]}],
        "IsMultispectral": False,
        "LearningRate": "1.0000e-03",
    }
    (folder / "trees.emd").write_text(json.dumps(emd))
    model = RetinaNet.from_model(folder)
    assert all(torch.equal(model.model.state_dict()[key], value) for key, value in weights.items())
    reference = torch.load(REF / "forward_resnet18_256.pt", weights_only=True)
    model.model.eval()
    with torch.no_grad():
        cls, box = model.model(reference["input"])
    assert torch.allclose(cls, reference["cls"], atol=1e-5) and torch.allclose(box, reference["box"], atol=1e-5)
    boxes, labels, scores = model.predict(np.full((300, 300, 3), 100, dtype=np.uint8), threshold=0.5)
    assert len(boxes) == len(labels) == len(scores) and set(labels) <= {"pool", "tree"}


def test_torchscript_package_gives_the_same_outputs(model, tmp_path):
    folder = model.save(tmp_path / "scripted", framework="torchscript", compute_metrics=False)
    traced = torch.jit.load(str(folder / "scripted.pt"))
    images = torch.randn(2, 3, 64, 64)
    model.model.eval()
    with torch.no_grad():
        expected, got = model.model(images), traced(images)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(expected, got))
    with zipfile.ZipFile(folder / "scripted.dlpk") as archive:
        assert "scripted.pt" in archive.namelist()


def test_the_package_records_the_training_imagerys_cell_size_and_crs(tmp_path):
    from geolearn import export_training_data
    from geolearn.sample import make_scene

    scene = make_scene(tmp_path / "scene", size=512, seed=1)
    chips = export_training_data(str(scene.raster), str(scene.labels), output_location=str(tmp_path / "chips"),
                                 progress=False)
    data = prepare_data(chips, chip_size=128, batch_size=4)
    model = RetinaNet(data, backbone="resnet18", pretrained=False)
    folder = model.save(tmp_path / "m", compute_metrics=False)
    emd = json.loads((folder / "m.emd").read_text())
    assert emd["MinCellSize"]["x"] == pytest.approx(0.3)
    assert emd["MinCellSize"]["spatialReference"] == {"wkid": 32633, "latestWkid": 32633}
    assert "UTM zone 33N" in emd["geolearn"]["crs_wkt"]
    loaded = RetinaNet.from_model(folder)
    assert loaded.config.crs_wkt == emd["geolearn"]["crs_wkt"]


def test_from_model_takes_the_saved_tensors_as_float32_parameters(model, tmp_path):
    folder = model.save(tmp_path / "m", compute_metrics=False)
    saved = torch.load(folder / "m.pth", weights_only=True)
    torch.save({name: value.half() if value.is_floating_point() else value for name, value in saved.items()},
               folder / "m.pth")  # float16 weights load as float32, like load_state_dict's copy would
    loaded = RetinaNet.from_model(folder / "m.emd")
    state = loaded.model.state_dict()
    assert not any(t.is_meta for t in state.values())
    assert all(state[name].dtype == value.dtype for name, value in saved.items())
    assert all(torch.equal(state[name], value.half().to(value.dtype)) for name, value in saved.items())


def test_weights_that_do_not_fit_the_emd_name_both_files_and_how_they_differ(model, tmp_path, tiny_data):
    folder = model.save(tmp_path / "trees", compute_metrics=False)
    other = RetinaNet(tiny_data, backbone="resnet34", pretrained=False)
    torch.save(other.model.state_dict(), folder / "trees.pth")  # a resnet34's weights beside a resnet18's EMD
    with pytest.raises(ModelDefinitionError, match=r"trees\.pth: the weights do not fit the network: \d+ the network "
                                                   r"does not have \(e\.g\. 'encoder\.4\.2\.conv1\.weight'\); .*trees\.emd describes "
                                                   r"a resnet18 with 2 classes and 9 anchors per cell"):
        RetinaNet.from_model(folder / "trees.emd")
    with pytest.raises(ModelDefinitionError, match=r"trees\.pth: the weights do not fit the network: .*; this model is "
                                                   r"a resnet18 with 2 classes"):
        model.load(folder / "trees.pth")
    head = {k: v for k, v in model.model.state_dict().items()}
    head["classifier.4.weight"] = torch.zeros(9, 256, 3, 3)  # one class's outputs instead of two
    torch.save(head, folder / "trees.pth")
    with pytest.raises(ModelDefinitionError, match=r"1 of another shape \(e\.g\. 'classifier\.4\.weight': "
                                                   r"\[9, 256, 3, 3\] in the weights, \[18, 256, 3, 3\] in the network\)"):
        RetinaNet.from_model(folder)
