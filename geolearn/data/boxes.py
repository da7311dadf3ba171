"""Chip pixels and fastai's unit square: the conversion every layer shares.

Kept free of fastai (pure torch) so the models and inference layers can use it
without importing fastai. Boxes are ``Tensor[..., 4]`` in ``(x1, y1, x2, y2)``;
pixel *edges* map to the unit square's edges: 0 → -1 and ``width`` → +1.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["pixel_to_unit", "unit_to_pixel"]


def pixel_to_unit(chip_boxes: Tensor, height: int, width: int) -> Tensor:
    """xyxy chip pixels → xyxy in [-1, 1] (fastai's ``TensorBBox`` convention)."""
    scale = chip_boxes.new_tensor([width, height, width, height])
    return chip_boxes * 2 / scale - 1


def unit_to_pixel(unit_boxes: Tensor, height: int, width: int) -> Tensor:
    """xyxy in [-1, 1] → xyxy chip pixels; the inverse of :func:`pixel_to_unit`."""
    scale = unit_boxes.new_tensor([width, height, width, height])
    return (unit_boxes + 1) * scale / 2
