"""fastai callbacks: CPU autocast, the per-dtype choice of precision callbacks, the AP column."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from fastai.callback.fp16 import MixedPrecision

from geolearn.learn.callbacks import AveragePrecisionMetric, Autocast, precision_callbacks
from geolearn.learn.evaluation import DetectionSettings
from geolearn.models.anchors import make_anchors


def test_callbacks_for_each_dtype():
    assert precision_callbacks(None) == []
    assert isinstance(precision_callbacks(torch.bfloat16)[0], Autocast)
    assert isinstance(precision_callbacks(torch.float16)[0], MixedPrecision)


def test_autocast_runs_the_forward_in_bf16_and_hands_back_float32():
    class FakeLearner:
        model = torch.nn.Linear(4, 2)

    learner = FakeLearner()
    callback = Autocast(torch.bfloat16)
    callback.learn = learner
    callback.before_batch()
    learner.pred = [learner.model(torch.ones(1, 4))]
    assert learner.pred[0].dtype is torch.bfloat16  # inside autocast
    callback.after_pred()
    assert learner.pred[0].dtype is torch.float32
    callback.after_loss()
    assert learner.model(torch.ones(1, 4)).dtype is torch.float32  # autocast is off again


def test_average_precision_metric_scores_a_perfect_detection_one():
    metric = AveragePrecisionMetric(DetectionSettings(make_anchors(64), chip_size=64))
    cls_logits = torch.full((1, 774, 2), -10.0)
    cls_logits[0, 5, 0] = 3.0  # anchor 5 with zero deltas: (0, 0, 14, 14) px, class 1
    learn = SimpleNamespace(  # what fastai's Learner holds after a validation batch
        pred=[cls_logits, torch.zeros(1, 774, 4)],
        yb=(torch.tensor([[[-1.0, -1.0, -0.5625, -0.5625]]]), torch.tensor([[1]])),  # (0, 0, 14, 14) px in [-1, 1]
    )
    metric.reset()
    metric.accumulate(learn)
    assert metric.name == "average_precision"
    assert metric.value == 1.0


def test_a_checkpoint_write_that_fails_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    import pytest
    import geolearn.learn.callbacks as callbacks
    from geolearn.learn.callbacks import AtomicCheckpoint

    model = torch.nn.Linear(3, 2)
    checkpoint = AtomicCheckpoint(fname="best")
    checkpoint.learn = SimpleNamespace(path=tmp_path, model_dir="models", model=model, opt=None)
    checkpoint._save("best")
    file = tmp_path / "models" / "best.pth"
    first = file.read_bytes()
    assert torch.equal(torch.load(file)["weight"], model.weight)

    real_save = torch.save

    def killed_half_way(obj, path, **kwargs):
        real_save(obj, path, **kwargs)
        with open(path, "r+b") as half:
            half.truncate(len(first) // 2)
        raise KeyboardInterrupt  # as a kill while writing

    monkeypatch.setattr(torch, "save", killed_half_way)
    torch.nn.init.zeros_(model.weight)
    with pytest.raises(KeyboardInterrupt):
        checkpoint._save("best")
    assert file.read_bytes() == first and sorted(p.name for p in file.parent.iterdir()) == ["best.pth"]
