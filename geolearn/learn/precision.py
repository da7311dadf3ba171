"""Mixed precision for training and inference, on CPUs as well as GPUs.

fastai's ``MixedPrecision`` callback autocasts on CUDA only. Recent CPUs with AMX
or AVX512-BF16 run RetinaNet about 3× faster in bfloat16 than in float32, so
geolearn autocasts there too. bfloat16 has float32's range: no loss scaling is
needed, which keeps the callback small. float16 needs a gradient scaler and is
only worth it on CUDA, where fastai's own callback does it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

__all__ = ["bf16_is_fast", "resolve_precision", "Autocast", "precision_callbacks"]


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16_units() -> bool:
    """True when the CPU has AMX or AVX512-BF16 (hardware bfloat16 matrix units)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)  # private in torch 2.x: fall back to /proc/cpuinfo
        if check is not None:
            try:
                if check():
                    return True
            except RuntimeError:
                pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds up convolutions on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_bf16_units()


def resolve_precision(setting: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a ``mixed_precision`` setting, or None for float32.

    Args:
        setting: None or ``'auto'``: bfloat16 where the hardware has fast bfloat16
            units, else float32; True or ``'bf16'``: bfloat16; ``'fp16'``: float16
            (CUDA only); False or ``'fp32'``: float32.
        device: where the model runs.

    Raises:
        ValueError: an unknown setting, or float16 off CUDA.
    """
    if setting is None or setting == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else None
    if setting is False or setting == "fp32":
        return None
    if setting is True or setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        if device.type != "cuda":
            raise ValueError(
                "mixed_precision='fp16' needs a CUDA GPU; on a CPU use 'bf16' (or True), or False for float32."
            )
        return torch.float16
    raise ValueError(
        f"mixed_precision={setting!r}: use None/'auto', True/'bf16', 'fp16' (CUDA) or False/'fp32'."
    )


class Autocast(Callback):
    """Runs forward pass and loss under ``torch.autocast`` in bfloat16, on any device.

    Like fastai's ``MixedPrecision`` (same hooks and order) minus the gradient
    scaler, which bfloat16 does not need; predictions are cast back to float32
    so that loss and metrics are computed in full precision.
    """

    order = 10

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self._context = None

    def before_batch(self) -> None:
        device_type = next(self.learn.model.parameters()).device.type
        self._context = torch.autocast(device_type, dtype=self.dtype)
        self._context.__enter__()

    def after_pred(self) -> None:
        pred = self.learn.pred
        self.learn.pred = [p.float() for p in pred] if isinstance(pred, (list, tuple)) else pred.float()

    def after_loss(self) -> None:
        self._exit()

    # A cancelled or failed batch must not leave autocast switched on.
    def after_cancel_batch(self) -> None:
        self._exit()

    def after_fit(self) -> None:
        self._exit()

    def _exit(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None


def precision_callbacks(dtype: torch.dtype | None) -> list[Callback]:
    """The callbacks that train in ``dtype`` (None: float32, no callback)."""
    if dtype is None:
        return []
    if dtype == torch.float16:
        return [MixedPrecision(amp_mode="fp16")]
    return [Autocast(dtype)]
