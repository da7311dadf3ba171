"""Mixed precision for training and inference, on CPUs as well as GPUs: which dtype to autocast to.

fastai's ``MixedPrecision`` callback autocasts on CUDA only. Recent CPUs with AMX
or AVX512-BF16 run RetinaNet about 3× faster in bfloat16 than in float32, so
geolearn autocasts there too (for training through the callbacks in
:mod:`geolearn.learn.callbacks`). This module does not import fastai: prediction needs it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["bf16_is_fast", "resolve_precision"]


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
    """Whether bfloat16 autocast speeds up convolutions on ``device``.

    Args:
        device: where the model runs.

    Returns:
        On CUDA, whether the GPU supports bfloat16; on the CPU, whether it has AMX or
        AVX512-BF16 units; False on any other device.

    Examples:
        >>> bf16_is_fast(torch.device("mps"))  # neither CUDA nor CPU
        False
        >>> bf16_is_fast(torch.device("cpu"))  # doctest: +SKIP
        True
    """
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

    Returns:
        ``torch.bfloat16``, ``torch.float16``, or None for float32.

    Raises:
        ValueError: an unknown setting, or float16 off CUDA.

    Examples:
        >>> cpu = torch.device("cpu")
        >>> resolve_precision(True, cpu), resolve_precision("fp32", cpu)
        (torch.bfloat16, None)
        >>> resolve_precision("fp16", cpu)
        Traceback (most recent call last):
        ...
        ValueError: mixed_precision='fp16' needs a CUDA GPU; on a CPU use 'bf16' (or True), or False for float32.
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
