"""The arcgis-style RetinaNet: construction, fit, lr_find, average precision."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import rasterio
import torch
from matplotlib.figure import Figure
from rasterio.transform import from_origin
from torchvision.models import resnet34

from geolearn import prepare_data
from geolearn.inference import predict as predict_module
from geolearn.learn.retinanet import RetinaNet
from geolearn.models.anchors import DEFAULT_SCALES

from conftest import make_folder

@pytest.fixture
def model(tiny_data):
    return RetinaNet(tiny_data, backbone="resnet18", pretrained=False)


def test_class_facts(model):
    assert RetinaNet.backbones() == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert model.supported_backbones == RetinaNet.backbones()
    assert model.supported_datasets == ["PASCAL_VOC_rectangles", "KITTI_rectangles", "COCO_rectangles", "YOLO_rectangles"]
    assert model.available_metrics == ["valid_loss", "average_precision"]
    assert model.scales == pytest.approx(DEFAULT_SCALES) and model.ratios == [0.5, 1.0, 2.0]


def test_backbone_as_torchvision_function(tiny_data):
    model = RetinaNet(tiny_data, backbone=resnet34, pretrained=False)
    assert model.model.encoder[4][2].conv1.weight.shape == (64, 64, 3, 3)  # resnet34 has 3 blocks in layer1


def test_three_parameter_groups_and_float_lr_is_a_slice(model):
    assert len(model.learn.splitter(model.model)) == 3
    model.learn.create_opt()
    model.learn.opt.set_hypers(lr=slice(1e-4, 1e-3))
    lrs = [group["lr"] for group in model.learn.opt.hypers]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-3)


def test_float_lr_is_a_slice_only_for_learned_backbone_weights(tiny_data, monkeypatch, tmp_path):
    random = RetinaNet(tiny_data, backbone="resnet18", pretrained=False)
    assert random._group_rates(1e-3) == 1e-3  # nothing to protect: every group at lr
    assert random._group_rates(slice(1e-5, 1e-3)) == slice(1e-5, 1e-3)
    import geolearn.models.backbones as backbones

    monkeypatch.setattr(backbones, "pretrained_state_dict", lambda spec: spec.builder(weights=None).state_dict())
    imagenet = RetinaNet(tiny_data, backbone="resnet18")
    assert imagenet._group_rates(1e-3) == slice(1e-4, 1e-3)  # arcgis.learn's discriminative rates
    weights = tmp_path / "trained.pth"
    torch.save(random.model.state_dict(), weights)
    loaded = RetinaNet(tiny_data, backbone="resnet18", pretrained=False, pretrained_path=weights)
    assert loaded._group_rates(1e-3) == slice(1e-4, 1e-3)


def test_random_backbone_is_not_frozen_but_a_pretrained_one_is(tiny_data, monkeypatch):
    model = RetinaNet(tiny_data, backbone="resnet18", pretrained=False)
    assert all(p.requires_grad for p in model.model.encoder.parameters())
    # Pretend ImageNet weights were found: the backbone (but its BatchNorm) starts frozen.
    import geolearn.models.backbones as backbones

    monkeypatch.setattr(backbones, "pretrained_state_dict", lambda spec: spec.builder(weights=None).state_dict())
    frozen = RetinaNet(tiny_data, backbone="resnet18")
    assert not frozen.model.encoder[0].weight.requires_grad
    assert frozen.model.encoder[1].weight.requires_grad  # BatchNorm trains
    assert frozen.model.classifier[0][0].weight.requires_grad
    frozen.unfreeze()
    assert frozen.model.encoder[0].weight.requires_grad


def test_fit_prints_the_five_columns(model, capsys):
    model.fit(2, lr=1e-3, checkpoint=False)
    out = capsys.readouterr().out
    # stdout is not a terminal here (a log, CI): the epoch table alone, no progress bar updates.
    assert "\r" not in out and "█" not in out, out[:500]
    lines = out.splitlines()
    assert re.fullmatch(r"epoch\s+train_loss\s+valid_loss\s+average_precision\s+time\s*", lines[0]), lines[0]
    # One row per epoch: epoch, three numbers (NaN would not match), mm:ss.
    rows = [re.fullmatch(r"([01])\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+\d\d:\d\d\s*", line) for line in lines[1:3]]
    assert all(rows) and [row[1] for row in rows] == ["0", "1"], out[-2000:]
    assert len(model.learn.recorder.values) == 2
    assert isinstance(model.plot_losses(), Figure)


def test_fit_shows_fastai_bars_where_watched(model, capsys, monkeypatch):
    import geolearn.learn.callbacks as callbacks

    monkeypatch.setattr(callbacks, "watched", lambda: True)  # a notebook or a terminal
    model.fit(1, lr=1e-3, checkpoint=False)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "\r" in out  # fastprogress's bar, updated in place
    assert re.search(r"epoch\s+train_loss\s+valid_loss\s+average_precision\s+time", out)


def test_lr_find_returns_a_float_in_range_and_restores_weights(model, capsys):
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    lr = model.lr_find(allow_plot=False, num_it=12)
    assert capsys.readouterr().out == ""  # the range test's epochs are not a table to print
    assert isinstance(lr, float) and 1e-7 <= lr <= 10
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.lr_find_figure, Figure)


def test_fit_with_checkpoint_reloads_the_best_epoch(model, tiny_data):
    model.fit(2, lr=1e-3, checkpoint=True, monitor="average_precision")
    saved = list((tiny_data.path / "models").glob("checkpoint_*.pth"))
    assert saved, "checkpoint=True saves the best epoch under <data.path>/models"


def test_bad_fit_arguments(model):
    with pytest.raises(ValueError, match=r"monitor='accuracy': choose one of \['valid_loss', 'average_precision'\]"):
        model.fit(1, lr=1e-3, monitor="accuracy")
    with pytest.raises(ValueError, match="checkpoint='some'"):
        model.fit(1, lr=1e-3, checkpoint="some")


def test_average_precision_score_per_class_and_mean(model):
    scores = model.average_precision_score(show_progress=False)
    assert set(scores) == {"pool", "tree"} and all(0.0 <= v <= 1.0 for v in scores.values())
    mean = model.average_precision_score(mean=True, show_progress=False)
    assert mean == pytest.approx(sum(scores.values()) / len(scores)) if scores else mean == 0.0


def test_auto_anchors_cover_the_boxes(tiny_data):
    model = RetinaNet(tiny_data, backbone="resnet18", pretrained=False, scales="auto")
    fit = RetinaNet.suggest_anchors(tiny_data)
    assert model.scales == pytest.approx(list(fit.scales)) and fit.coverage > 0


def test_unknown_keyword_is_refused(tiny_data):
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['backbones'\\]"):
        RetinaNet(tiny_data, backbones="resnet18")


@pytest.mark.slow
def test_overfits_one_chip(tmp_path):
    """One chip, many steps: the loss falls at least 10x and its objects are found at IoU >= 0.5."""
    root = make_folder(tmp_path / "one", {"a": ([[8, 8, 30, 20], [36, 34, 58, 58]], ["1", "2"])})
    data = prepare_data(root, chip_size=64, batch_size=1, val_split_pct=0.0, valid_path=root, transforms=False)
    model = RetinaNet(data, backbone="resnet18", pretrained=False)
    model.fit(40, lr=1e-3, checkpoint=False)
    first = float(model.learn.recorder.losses[0])  # the loss of the first step
    last = float(model.learn.recorder.values[-1][1])  # the validation loss on the same chip at the end
    assert last <= first / 10
    assert model.average_precision_score(iou_thresh=0.5, show_progress=False) == {"pool": 1.0, "tree": 1.0}


def test_lr_suggestion_on_a_flat_then_diverging_curve_stays_well_below_the_takeoff():
    from geolearn.learn.lr_rule import TAKEOFF_DIVISOR, suggest_lr

    lrs = torch.logspace(-7, -1, 61).tolist()  # ten points a decade
    losses = [5.0] * 50 + torch.linspace(8.0, 30.0, 11).tolist()  # takes off at lrs[50] = 1e-2
    assert suggest_lr(lrs, losses, valley_lr=5e-5) == pytest.approx(1e-2 / TAKEOFF_DIVISOR, rel=1e-3)
    assert TAKEOFF_DIVISOR == 15


def test_lr_suggestion_keeps_a_higher_valley_and_a_curve_that_never_takes_off():
    from geolearn.learn.lr_rule import suggest_lr

    lrs = torch.logspace(-7, -1, 61).tolist()
    losses = [5.0] * 50 + torch.linspace(8.0, 30.0, 11).tolist()
    assert suggest_lr(lrs, losses, valley_lr=3e-3) == 3e-3
    assert suggest_lr(lrs, [5.0] * 61, valley_lr=2e-4) == 2e-4


def test_time_budget_ends_fit_with_the_schedule_finished_and_whole_rows(model, monkeypatch):
    import time as time_module

    clock = iter(range(10**6))  # a fake clock: one second passes at each look at it
    monkeypatch.setattr(time_module, "perf_counter", lambda: float(next(clock)))
    model.fit(100, lr=1e-3, checkpoint=False, time_budget=40)
    rows = model.learn.recorder.values
    assert 1 <= len(rows) < 100
    # Each row has train_loss, valid_loss and average_precision, also for the epoch the budget cut.
    assert all(len(row) == 3 and all(math.isfinite(v) for v in row) for row in rows)
    assert rows[-1][2] <= 1.0  # the AP column holds the AP, not a shifted loss
    lrs = model.learn.recorder.hps["lr"]
    assert max(lrs) == pytest.approx(1e-3, rel=0.05)  # warmed up to lr...
    assert lrs[-1] < 1e-4  # ...and annealed by the end of the budget


def test_time_budget_must_be_positive(model):
    with pytest.raises(ValueError, match=r"time_budget=0: give the seconds fit may take"):
        model.fit(1, lr=1e-3, time_budget=0)


def test_imagenet_weights_where_torchvision_looks_give_the_pretrained_recipe(tiny_data, monkeypatch, tmp_path):
    # A stand-in for resnet18's ImageNet file, at the path torchvision loads it from (no download:
    # the file is there). The model starts from it, frozen, with arcgis.learn's discriminative rates,
    # and the same loss and time-budgeted schedule as from random weights.
    import warnings

    import torchvision

    from geolearn.errors import GeolearnWarning

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    stand_in = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        stand_in.conv1.weight.fill_(0.01)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(stand_in.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeolearnWarning)  # no "weights cannot be downloaded" warning
        model = RetinaNet(tiny_data, backbone="resnet18")
    assert model.model.encoder.pretrained
    assert torch.all(model.model.encoder[0].weight == 0.01)
    assert not model.model.encoder[0].weight.requires_grad  # frozen, as in arcgis.learn
    assert model._group_rates(1e-3) == slice(1e-4, 1e-3)
    assert model.loss_func.ignore_cut_boxes
    model.fit(1, lr=1e-3, checkpoint=False, time_budget=600)
    assert len(model.learn.recorder.values) == 1
    assert torch.all(model.model.encoder[0].weight == 0.01)  # the frozen stem did not move


def test_fit_calibrates_the_detection_threshold_that_detect_objects_and_the_package_keep(
        model, monkeypatch, tmp_path):
    assert model.threshold == 0.5  # not fitted: arcgis.learn's default
    # The validation chips as the closing pass sees them: three crowns; by score a TP 0.8,
    # an FP 0.6, TPs 0.5 and 0.3. F1 down to each: 0.5, 0.4, 0.67, 0.86 -> best at the last,
    # so the cut is halfway between 0.3 and the 0.05 the detections were made at.
    crowns = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0]])
    found = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 30.0, 10.0, 40.0], [20.0, 0.0, 30.0, 10.0],
                          [40.0, 0.0, 50.0, 10.0]])
    seen = {}

    def validation_pass(network, loader, settings, dtype, progress):
        seen["floor"], seen["nms"] = settings.detect_thresh, settings.nms_overlap
        return [(found, torch.tensor([1, 1, 2, 1]), torch.tensor([0.8, 0.6, 0.5, 0.3]))], [(crowns, torch.tensor([1, 2, 1]))]

    monkeypatch.setattr("geolearn.learn.training.evaluate", validation_pass)
    model.fit(1, lr=1e-3, checkpoint=False)
    assert seen == {"floor": 0.05, "nms": 0.1}
    assert model.threshold == pytest.approx(0.175)

    thresholds = []
    real_runner = predict_module.network_runner
    monkeypatch.setattr(predict_module, "network_runner",
                        lambda *a, **k: thresholds.append(k["score_thresh"]) or real_runner(*a, **k))
    raster = tmp_path / "scene.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(0, 64, 1, 1)) as dst:
        dst.write(np.zeros((3, 64, 64), dtype=np.uint8))
    model.detect_objects(raster, progress=False)
    model.detect_objects(raster, threshold=0.9, progress=False)
    assert thresholds == [pytest.approx(0.175), 0.9]

    folder = model.save(tmp_path / "calibrated", compute_metrics=False)
    assert RetinaNet.from_model(folder / "calibrated.dlpk").threshold == pytest.approx(0.175)
    with pytest.raises(ValueError, match=r"threshold=1\.5: give a score between 0 and 1"):
        model.threshold = 1.5


def test_no_validation_detections_leave_the_threshold_at_one_half(model, monkeypatch):
    monkeypatch.setattr("geolearn.learn.training.evaluate", lambda *a: ([(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                                                          torch.zeros(0))], [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))]))
    model.fit(1, lr=1e-3, checkpoint=False)
    assert model.threshold == 0.5
