"""Bad arguments at the public entry points: refused before any work, by name, with the fix.

Each case was a raw traceback from deep inside a library, or a silent wrong result, before
geolearn/checks.py (issue 15's list).
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geolearn import prepare_data
from geolearn.checks import fraction, positive_number, whole_number
from geolearn.errors import GeolearnError, GeolearnWarning, InvalidArgumentError, TrainingDivergedError
from geolearn.learn.retinanet import RetinaNet

from conftest import TINY_CHIPS, make_folder


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (lambda v: whole_number("batch_size", v), 0, r"batch_size=0: give a whole number >= 1"),
        (lambda v: whole_number("batch_size", v), 2.5, r"batch_size=2\.5: give a whole number"),
        (lambda v: whole_number("batch_size", v), True, r"batch_size=True: give a whole number"),
        (lambda v: positive_number("lr", v), 0, r"lr=0: give a finite number > 0"),
        (lambda v: positive_number("lr", v), -1e-3, r"lr=-0\.001: give a finite number > 0"),
        (lambda v: positive_number("lr", v), float("inf"), r"lr=inf: give a finite number > 0"),
        (lambda v: positive_number("lr", v), "1e-3", r"lr='1e-3': give a finite number > 0"),
        (lambda v: fraction("threshold", v), 1.5, r"threshold=1\.5: give a number from 0 to 1"),
        (lambda v: fraction("threshold", v), float("nan"), r"threshold=nan: give a number from 0 to 1"),
        (lambda v: fraction("val_split_pct", v, include_one=False), -0.1, r"val_split_pct=-0\.1: give a number from 0 to less than 1"),
    ],
)
def test_checks_name_the_argument_and_its_value(check, value, message):
    with pytest.raises(InvalidArgumentError, match=message) as info:
        check(value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, GeolearnError)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("chips"), TINY_CHIPS)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"chip_size": 0}, r"chip_size=0: give a whole number >= 8, e.g. 224"),
        ({"batch_size": 0}, r"batch_size=0: give a whole number >= 1, e.g. 8"),
        ({"val_split_pct": -0.1}, r"val_split_pct=-0\.1: give a number from 0 to less than 1"),
        ({"val_split_pct": 1.0}, r"val_split_pct=1\.0: give a number from 0 to less than 1"),
    ],
)
def test_prepare_data_refuses_sizes_and_fractions_out_of_range(folder, arguments, message):
    with pytest.raises(InvalidArgumentError, match=message):
        prepare_data(folder, **{"chip_size": 64, "batch_size": 4} | arguments)


@pytest.fixture(scope="module")
def model(tiny_data):
    return RetinaNet(tiny_data, backbone="resnet18", pretrained=False)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"epochs": 0}, r"epochs=0: give a whole number >= 1"),
        ({"lr": 0}, r"lr=0: give a finite number > 0"),
        ({"lr": -1e-3}, r"lr=-0\.001: give a finite number > 0"),
        ({"lr": float("nan")}, r"lr=nan: give a finite number > 0"),
        ({"lr": slice(0, 1e-3)}, r"lr=0: give a finite number > 0, e\.g\. slice\(1e-4, 1e-3\)"),
    ],
)
def test_fit_refuses_epochs_and_learning_rates_it_cannot_train_with(model, arguments, message):
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match=message):
        model.fit(**{"epochs": 1, "lr": 1e-3, "checkpoint": False} | arguments)
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())  # nothing trained


def test_a_loss_that_becomes_nan_stops_fit_with_what_to_try(model, monkeypatch):
    before = {k: v.detach().clone() for k, v in model.model.named_parameters()}
    monkeypatch.setattr(model.learn, "loss_func", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDivergedError, match=r"the training loss became nan at epoch 1, batch 1, at a learning "
                                                    r"rate of .*Train with a lower one"):
        model.fit(1, lr=1e-3, checkpoint=False)
    after = dict(model.model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step was taken with the NaN


def test_save_refuses_weights_that_hold_nan(model, tmp_path):
    bias = model.model.classifier[-1].bias
    original = float(bias[0])
    with torch.no_grad():
        bias[0] = float("nan")
    try:
        with pytest.raises(ValueError, match=r"1 tensors hold NaN or infinity \(e\.g\. 'classifier\..*bias'\): training "
                                             r"diverged"):
            model.save(tmp_path / "diverged", compute_metrics=False)
        assert not (tmp_path / "diverged").exists()
    finally:
        with torch.no_grad():
            bias[0] = original


@pytest.mark.parametrize(("name", "value"), [("threshold", 1.5), ("threshold", float("nan")), ("nms_overlap", -0.2)])
def test_predict_and_detect_objects_refuse_scores_outside_zero_to_one(model, tmp_path, name, value):
    raster = tmp_path / "scene.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(0, 64, 1, 1)) as dst:
        dst.write(np.zeros((3, 64, 64), dtype=np.uint8))
    with pytest.raises(InvalidArgumentError, match=rf"{name}={value}: give a number from 0 to 1"):
        model.predict(np.zeros((64, 64, 3), dtype=np.uint8), **{name: value})
    with pytest.raises(InvalidArgumentError, match=rf"{name}={value}: give a number from 0 to 1"):
        model.detect_objects(raster, tmp_path / "out.gpkg", progress=False, **{name: value})
    assert not (tmp_path / "out.gpkg").exists()


def test_without_validation_chips_fit_says_which_options_need_them_and_the_metric_refuses(folder):
    data = prepare_data(folder, chip_size=64, batch_size=4, val_split_pct=0)
    model = RetinaNet(data, backbone="resnet18", pretrained=False)
    with pytest.raises(ValueError, match=r"early_stopping=True watches the validation chips, and the data has none"):
        model.fit(1, lr=1e-3, early_stopping=True)
    before = [p.detach().clone() for p in model.model.parameters()]
    with pytest.warns(GeolearnWarning, match=r"checkpoint=True: no checkpoint is kept, as the data has no validation"):
        model.fit(1, lr=1e-3)  # the default checkpoint=True: it trains on, without
    assert any(not torch.equal(a, b) for a, b in zip(before, model.model.parameters()))
    assert not list((folder / "models").glob("checkpoint_*"))
    with pytest.raises(RuntimeError, match=r"average_precision_score\(\) works on the validation chips, and the data "
                                           r"has none"):
        model.average_precision_score()
    with pytest.raises(RuntimeError, match=r"show_results\(\) works on the validation chips"):
        model.show_results()
