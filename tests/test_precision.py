"""Mixed-precision settings: which dtype to autocast to."""

from __future__ import annotations

import pytest
import torch

import geolearn.models.precision as precision
from geolearn.models.precision import resolve_precision

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
