"""Chip pixels and fastai's unit square: the conversion every layer shares.

Kept free of fastai (pure torch) so the models and inference layers can use it
without importing fastai. Boxes are ``Tensor[..., 4]`` in ``(x1, y1, x2, y2)``;
pixel *edges* map to the unit square's edges: 0 → -1 and ``width`` → +1.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["pixel_to_unit", "unit_to_pixel"]


def pixel_to_unit(chip_boxes: Tensor, height: int, width: int) -> Tensor:
    """Converts boxes from chip pixels to fastai's unit square.

    Pixel edges map to the square's edges: ``0 → -1`` and ``width`` (or ``height``) ``→ +1``.

    Args:
        chip_boxes: ``Tensor[..., 4]`` float, xyxy in chip pixels.
        height: chip height, pixels.
        width: chip width, pixels.

    Returns:
        ``Tensor[..., 4]`` xyxy in [-1, 1] (fastai's ``TensorBBox`` convention), same dtype.

    Examples:
        >>> import torch
        >>> pixel_to_unit(torch.tensor([[0.0, 50.0, 100.0, 200.0]]), height=200, width=100)
        tensor([[-1.0000, -0.5000,  1.0000,  1.0000]])
    """
    scale = chip_boxes.new_tensor([width, height, width, height])
    return chip_boxes * 2 / scale - 1


def unit_to_pixel(unit_boxes: Tensor, height: int, width: int) -> Tensor:
    """Converts boxes from fastai's unit square to chip pixels; the inverse of :func:`pixel_to_unit`.

    Args:
        unit_boxes: ``Tensor[..., 4]`` float, xyxy in [-1, 1].
        height: chip height, pixels.
        width: chip width, pixels.

    Returns:
        ``Tensor[..., 4]`` xyxy in chip pixels, same dtype.

    Examples:
        >>> import torch
        >>> unit_to_pixel(torch.tensor([[-1.0, -0.5, 1.0, 1.0]]), height=200, width=100)
        tensor([[  0.,  50., 100., 200.]])
    """
    scale = unit_boxes.new_tensor([width, height, width, height])
    return (unit_boxes + 1) * scale / 2
