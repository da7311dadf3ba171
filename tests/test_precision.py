"""Mixed-precision settings and the CPU autocast callback."""

from __future__ import annotations

import pytest
import torch
from fastai.callback.fp16 import MixedPrecision

import geolearn.learn.precision as precision
from geolearn.learn.precision import Autocast, precision_callbacks, resolve_precision

CPU = torch.device("cpu")


def test_auto_picks_bf16_only_where_the_cpu_is_fast_at_it(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_has_bf16_units", lambda: True)
    assert resolve_precision(None, CPU) is torch.bfloat16
    assert resolve_precision("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "_cpu_has_bf16_units", lambda: False)
    assert resolve_precision(None, CPU) is None


@pytest.mark.parametrize(("setting", "expected"), [(True, torch.bfloat16), ("bf16", torch.bfloat16), (False, None), ("fp32", None)])
def test_forced_settings(setting, expected):
    assert resolve_precision(setting, CPU) is expected


def test_fp16_needs_cuda_and_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="'fp16' needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="mixed_precision='half'"):
        resolve_precision("half", CPU)


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
