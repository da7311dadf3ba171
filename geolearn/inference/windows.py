"""Windows over an image of any size: the grid a chip detector is run on, and its geometry.

A detector sees chips of ``chip_size`` pixels; an image is covered by overlapping windows of that
size (:func:`plan_windows`: :func:`~geolearn.data.tiling.axis_offsets` with stride
``chip_size - overlap``, and for each window side where the neighbour across it ends), cut out
by slicing only (:func:`crop_windows`, channels_last), and each window's boxes come back from
chip pixels to image pixels (:func:`to_image_boxes`), clipped to the image
(:func:`clip_to_image`). The merge of the windows' boxes is :mod:`geolearn.inference.window_merge`;
running a network over them, :mod:`geolearn.inference.runner`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from geolearn.data.tiling import axis_offsets
from geolearn.inference.defaults import default_overlap
from geolearn.models.postprocess import Detections
from geolearn.models.raster_function import clip_boxes

__all__ = ["RunBatch", "WindowPlan", "plan_windows", "crop_windows", "to_image_boxes", "clip_to_image"]

# The network as the window steps see it: crops [B, C, S, S] → one Detections per crop, chip pixels.
RunBatch = Callable[[Tensor], Sequence[Detections]]


class WindowPlan(NamedTuple):
    """The windows covering an image and, for each window side, the neighbour across it.

    Attributes:
        windows: ``Tensor[N, 4]`` float32 xyxy in image pixels, every one ``chip_size`` square,
            row-major (top row first, left to right) as
            :func:`~geolearn.data.tiling.chip_windows` orders them. Along an axis where the image
            is smaller than the chip the window reaches past the image into zero padding.
        neighbour_edges: ``Tensor[N, 4]`` float32 (left, top, right, bottom): per side, the far
            edge of the adjacent window across that side — the left neighbour's x2, the upper
            neighbour's y2, the right neighbour's x1, the lower neighbour's y1 — in image pixels.
            ``-inf`` (left, top) or ``+inf`` (right, bottom) where the side is on the image border.
        image_size: ``(height, width)`` of the image in pixels.
        chip_size: side of the windows in pixels.

    Examples:
        >>> plan_windows(100, 160, chip_size=100, overlap=40)
        WindowPlan(windows=tensor([[  0.,   0., 100., 100.],
                [ 60.,   0., 160., 100.]]), neighbour_edges=tensor([[-inf, -inf,  60.,  inf],
                [100., -inf,  inf,  inf]]), image_size=(100, 160), chip_size=100)
    """

    windows: Tensor
    neighbour_edges: Tensor
    image_size: tuple[int, int]
    chip_size: int


def _axis_plan(size: int, chip_size: int, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """Offsets along one axis, and per window the neighbours' far edges (before, after)."""
    starts = torch.tensor(axis_offsets(size, chip_size, stride), dtype=torch.float32)
    ends = starts + chip_size
    inf = torch.tensor([float("inf")])
    before = torch.cat([-inf, ends[:-1]])  # the previous window's far (right/bottom) edge
    after = torch.cat([starts[1:], inf])  # the next window's near (left/top) edge
    return starts, before, after


def plan_windows(height: int, width: int, chip_size: int, overlap: int) -> WindowPlan:
    """The overlapping windows that cover a ``height`` × ``width`` image.

    Offsets along each axis are :func:`~geolearn.data.tiling.axis_offsets` ``(size, chip_size,
    chip_size - overlap)``: ``0, s, 2s, ...`` with ``s = chip_size - overlap``, plus one window
    flush with the far edge when a remainder is left (so it overlaps its neighbour by *more*
    than ``overlap``), and the single offset 0 along an axis shorter than the chip. Adjacent
    windows therefore always share at least ``overlap`` pixels.

    Args:
        height: image height in pixels (>= 1).
        width: image width in pixels (>= 1).
        chip_size: window side in pixels, the network's chip size.
        overlap: pixels shared by adjacent windows, ``0 <= overlap < chip_size``.

    Returns:
        A :class:`WindowPlan`.

    Raises:
        ValueError: ``overlap`` outside ``[0, chip_size)``, or a size below 1.

    Examples:
        >>> plan = plan_windows(700, 256, 256, 64)
        >>> plan.windows[:, 1].tolist()  # row offsets: 0, 192, 384, then 700 - 256 flush
        [0.0, 192.0, 384.0, 444.0]
    """
    if chip_size < 1 or height < 1 or width < 1:
        raise ValueError(f"height={height}, width={width}, chip_size={chip_size}: all must be >= 1 pixel.")
    if not 0 <= overlap < chip_size:
        raise ValueError(
            f"overlap={overlap}: the windows' overlap must lie in [0, chip_size={chip_size}) pixels; "
            f"chip_size // 4 = {default_overlap(chip_size)} is the default."
        )
    stride = chip_size - overlap
    xs, left, right = _axis_plan(width, chip_size, stride)
    ys, top, bottom = _axis_plan(height, chip_size, stride)
    row, col = torch.meshgrid(torch.arange(len(ys)), torch.arange(len(xs)), indexing="ij")
    row, col = row.reshape(-1), col.reshape(-1)  # row-major
    x0, y0 = xs[col], ys[row]
    windows = torch.stack([x0, y0, x0 + chip_size, y0 + chip_size], dim=1)
    neighbour_edges = torch.stack([left[col], top[row], right[col], bottom[row]], dim=1)
    return WindowPlan(windows, neighbour_edges, (height, width), chip_size)


def _padded_hwc(image: Tensor, chip_size: int) -> Tensor:
    """``Tensor[C, H, W]`` → ``Tensor[max(H, S), max(W, S), C]``, zero-padded right and bottom.

    Height-width-channel so that a stack of crops is already channels_last (one copy of the image
    here instead of one per batch later).
    """
    _, height, width = image.shape
    pad_h, pad_w = max(chip_size - height, 0), max(chip_size - width, 0)
    if pad_h or pad_w:
        image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h))
    return image.permute(1, 2, 0).contiguous()


def crop_windows(image_hwc: Tensor, windows: Tensor) -> Tensor:
    """The crops of a batch of windows, by slicing.

    Args:
        image_hwc: ``Tensor[H', W', C]`` the image, height-width-channel, zero-padded to at least
            the chip size along each axis (as :func:`~geolearn.inference.runner.detect_windows` prepares it).
        windows: ``Tensor[B, 4]`` xyxy in image pixels (integral values), all the same size ``S``.

    Returns:
        ``Tensor[B, C, S, S]`` in channels_last memory format (views of ``image_hwc``, stacked).

    Examples:
        >>> image_hwc = torch.arange(2 * 4 * 6.0).reshape(2, 4, 6).permute(1, 2, 0)  # 2 bands, 4 × 6 px
        >>> crops = crop_windows(image_hwc, torch.tensor([[0.0, 0.0, 3.0, 3.0], [3.0, 1.0, 6.0, 4.0]]))
        >>> crops.shape, crops[1, 0]
        (torch.Size([2, 2, 3, 3]), tensor([[ 9., 10., 11.],
                [15., 16., 17.],
                [21., 22., 23.]]))
    """
    boxes = windows.to(torch.int64).tolist()
    crops = torch.stack([image_hwc[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes])  # [B, S, S, C]
    return crops.permute(0, 3, 1, 2)


def to_image_boxes(chip_boxes: Tensor, window_index: Tensor, windows: Tensor) -> Tensor:
    """Chip pixels → image pixels.

    Args:
        chip_boxes: ``Tensor[K, 4]`` xyxy in the pixels of the chip each box was found in.
        window_index: ``Tensor[K]`` int64, the row of ``windows`` each box comes from.
        windows: ``Tensor[N, 4]`` xyxy in image pixels (:attr:`WindowPlan.windows`).

    Returns:
        ``Tensor[K, 4]`` xyxy in image pixels: each box shifted by its window's (x0, y0).

    Examples:
        >>> windows = torch.tensor([[0.0, 0.0, 100.0, 100.0], [60.0, 0.0, 160.0, 100.0]])
        >>> to_image_boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([1]), windows)
        tensor([[61.,  2., 63.,  4.]])
    """
    return chip_boxes + windows[window_index, :2].repeat(1, 2).to(chip_boxes)


def clip_to_image(image_boxes: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Clips boxes to the image and says which still have an area.

    Args:
        image_boxes: ``Tensor[K, 4]`` xyxy in image pixels.
        image_size: ``(height, width)`` in pixels.

    Returns:
        ``(Tensor[K, 4] clipped to [0, W] × [0, H], Tensor[K] bool)``; False marks boxes under
        0.01 px wide or high after clipping — those that lay in the padding past the image edge.

    Examples:
        >>> clip_to_image(torch.tensor([[-5.0, 0.0, 10.0, 10.0], [120.0, 0.0, 130.0, 10.0]]), (100, 100))
        (tensor([[  0.,   0.,  10.,  10.],
                [100.,   0., 100.,  10.]]), tensor([ True, False]))
    """
    return clip_boxes(image_boxes, *image_size)
