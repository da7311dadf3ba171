"""Box formats of the detector, and the one place where they convert.

Three formats meet in a RetinaNet for aerial chips:

* **unit xyxy** — ``(x1, y1, x2, y2)`` scaled to [-1, 1] over the chip, x first: fastai's
  ``TensorBBox`` convention, what the data layer's batches carry. Pixel edge 0 → -1,
  pixel edge ``chip_size`` → +1.
* **cthw** — ``(cy, cx, h, w)`` in the same [-1, 1] space, y first, full sizes: arcgis.learn's
  anchor format, the space in which box deltas are defined.
* **chip xyxy** — ``(x1, y1, x2, y2)`` in chip pixels: what readers, the metric and
  predictions use. Unit ↔ chip pixels is :mod:`geolearn.data.boxes` (fastai-free, shared
  with the data layer).

Box deltas (the regression head's output) are ``(dy, dx, dh, dw)``: the centre offset over the
anchor size and the log size ratio, divided by :data:`DELTA_STD` = (0.1, 0.1, 0.2, 0.2).
Every function here is pure and works on any leading shape ``[..., 4]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_convert

from geolearn.data.boxes import unit_to_pixel

__all__ = [
    "DELTA_STD",
    "cthw_to_xyxy",
    "xyxy_to_cthw",
    "cthw_to_chip",
    "encode",
    "decode",
]

# The regression targets are divided by these (arcgis.learn's and Faster R-CNN's 10, 10, 5, 5
# weights): it brings centre offsets and log size ratios to unit-ish variance.
DELTA_STD = (0.1, 0.1, 0.2, 0.2)

# Largest log size ratio decode() lets through: a box 1000/16 ≈ 62× its anchor (torchvision's
# bbox_xform_clip). Beyond it exp() soon overflows to inf and NMS gets NaN IoUs.
_MAX_LOG_RATIO = math.log(1000.0 / 16)


def _swap_xy(boxes: Tensor) -> Tensor:
    """``(a, b, c, d)`` → ``(b, a, d, c)``: turns cthw into cxcywh and back."""
    return boxes[..., [1, 0, 3, 2]]


def cthw_to_xyxy(boxes: Tensor) -> Tensor:
    """Converts (cy, cx, h, w) boxes to (x1, y1, x2, y2), in the same space.

    Args:
        boxes: ``Tensor[..., 4]`` (cy, cx, h, w), full sizes.

    Returns:
        ``Tensor[..., 4]`` (x1, y1, x2, y2).

    Examples:
        >>> cthw_to_xyxy(torch.tensor([[0.0, 0.5, 1.0, 0.5]]))
        tensor([[ 0.2500, -0.5000,  0.7500,  0.5000]])
    """
    return box_convert(_swap_xy(boxes), "cxcywh", "xyxy")


def xyxy_to_cthw(boxes: Tensor) -> Tensor:
    """Converts (x1, y1, x2, y2) boxes to (cy, cx, h, w), in the same space.

    Args:
        boxes: ``Tensor[..., 4]`` (x1, y1, x2, y2).

    Returns:
        ``Tensor[..., 4]`` (cy, cx, h, w), full sizes.

    Examples:
        >>> xyxy_to_cthw(torch.tensor([[0.25, -0.5, 0.75, 0.5]]))
        tensor([[0.0000, 0.5000, 1.0000, 0.5000]])
    """
    return _swap_xy(box_convert(boxes, "xyxy", "cxcywh"))


def cthw_to_chip(boxes: Tensor, chip_size: int) -> Tensor:
    """Converts (cy, cx, h, w) boxes in [-1, 1] to xyxy in chip pixels.

    Args:
        boxes: ``Tensor[..., 4]`` (cy, cx, h, w) in [-1, 1] (anchors, decoded boxes).
        chip_size: side of the square chip, pixels.

    Returns:
        ``Tensor[..., 4]`` (x1, y1, x2, y2) in chip pixels.

    Examples:
        >>> cthw_to_chip(torch.tensor([[0.0, 0.0, 0.5, 1.0]]), 256)
        tensor([[ 64.,  96., 192., 160.]])
    """
    return unit_to_pixel(cthw_to_xyxy(boxes), chip_size, chip_size)


def encode(target_cthw: Tensor, anchors: Tensor) -> Tensor:
    """Regression targets of boxes relative to anchors.

    Args:
        target_cthw: ``Tensor[..., 4]`` (cy, cx, h, w) in [-1, 1], sizes > 0.
        anchors: ``Tensor[..., 4]`` (cy, cx, h, w) in [-1, 1], broadcastable to ``target_cthw``.

    Returns:
        ``Tensor[..., 4]`` deltas (dy, dx, dh, dw) =
        ``[(c - anchor_c) / anchor_size, log(size / anchor_size)] / (0.1, 0.1, 0.2, 0.2)``.

    Examples:
        >>> anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
        >>> encode(torch.tensor([[0.05, 0.0, 0.5, 1.0]]), anchors)
        tensor([[1.0000, 0.0000, 0.0000, 3.4657]])
    """
    std = target_cthw.new_tensor(DELTA_STD)
    centre = (target_cthw[..., :2] - anchors[..., :2]) / anchors[..., 2:]
    size = torch.log(target_cthw[..., 2:] / anchors[..., 2:])
    return torch.cat([centre, size], dim=-1) / std


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Boxes from deltas and anchors: the exact inverse of :func:`encode`.

    arcgis.learn's decoding computes the sizes from the *centre* channels
    (``anchor_size * exp(0.1 * [dy, dx])``) and ignores dh, dw, so its decode(encode(box)) is not
    the box. We decode correctly: ``size = anchor_size * exp(0.2 * [dh, dw])``.

    Args:
        deltas: ``Tensor[..., 4]`` (dy, dx, dh, dw), as the regression head predicts them.
        anchors: ``Tensor[..., 4]`` (cy, cx, h, w) in [-1, 1], broadcastable to ``deltas``.

    Returns:
        ``Tensor[..., 4]`` boxes (cy, cx, h, w) in [-1, 1]. Log size ratios above log(62.5) are
        clipped (torchvision does the same) so that wild predictions cannot overflow to inf.

    Examples:
        >>> anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
        >>> decode(torch.tensor([[1.0, 0.0, 0.0, 3.4657]]), anchors)
        tensor([[0.0500, 0.0000, 0.5000, 1.0000]])
        >>> decode(torch.tensor([[0.0, 0.0, 0.0, 100.0]]), anchors)  # clipped at 62.5 × the anchor
        tensor([[ 0.0000,  0.0000,  0.5000, 31.2500]])
    """
    std = deltas.new_tensor(DELTA_STD)
    scaled = deltas * std
    centre = anchors[..., :2] + scaled[..., :2] * anchors[..., 2:]
    size = anchors[..., 2:] * torch.exp(scaled[..., 2:].clamp(max=_MAX_LOG_RATIO))
    return torch.cat([centre, size], dim=-1)
