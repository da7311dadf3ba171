"""Sliding-window detection over one image of any size: windows, seams, and one merge.

A detector sees chips of ``chip_size`` pixels; an image is covered by overlapping windows of that
size, and the windows' detections become one set of boxes in image pixels. The steps are small
pure functions, so the raster pipeline (windowed reads, nodata, georeferencing) reuses them
without the in-memory image:

1. :func:`plan_windows` — the windows (:func:`~geolearn.data.tiling.axis_offsets` with stride
   ``chip_size - overlap``) and, for each window side, where the neighbour across it ends.
2. :func:`crop_windows` — a batch of window crops, channels_last, by slicing only.
3. a ``run_batch`` callable — the network plus :func:`~geolearn.models.postprocess.detect`
   (:func:`predict_tiles`), or a stub in tests — gives chip-pixel boxes per window.
4. :func:`to_image_boxes` — chip pixels → image pixels (a shift by the window's offset).
5. :func:`seam_filter` — drops a box cut by an interior window side when the neighbour across
   that side sees the object whole: an object straddling a seam is reported once, whole. The
   boxes it keeps at a seam are pieces of objects larger than the overlap.
6. :func:`merge_detections` — ONE cross-window merge: class-aware NMS by default, class-agnostic
   NMS, or a SAHI-style greedy merge by intersection-over-smaller (:func:`greedy_merge`).

Boxes are clipped to the image (padding never yields a box outside it) and never rounded.
:func:`window_detections` is steps 3–5 for one batch of windows and :func:`merge_windows` step 6,
shared by :func:`detect_windows` (an image in memory, crops by slicing) and
:func:`~geolearn.models.raster_detection.detect_raster` (a raster on disk, windows read
streaming). :func:`network_runner` makes a RetinaNet network into a ``run_batch``;
:func:`predict_tiles` plugs it into :func:`detect_windows`. Nothing here imports fastai.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_area, nms

from geolearn.data.tiling import axis_offsets
from geolearn.models.postprocess import Detections, detect
from geolearn.models.raster_function import clip_boxes, seam_verdict
from geolearn.models.tta import VIEW_THRESH as TTA_VIEW_THRESH, augmented_runner

__all__ = [
    "ImageDetections",
    "WindowPlan",
    "plan_windows",
    "crop_windows",
    "to_image_boxes",
    "SeamVerdict",
    "seam_filter",
    "clip_to_image",
    "greedy_merge",
    "merge_detections",
    "WindowDetections",
    "window_detections",
    "merge_windows",
    "detect_windows",
    "network_runner",
    "zoomed_runner",
    "convolution_weights",
    "predict_tiles",
]

MergeMethod = Literal["nms", "greedy"]
RunBatch = Callable[[Tensor], Sequence[Detections]]

# Candidate box pairs examined at once by greedy_merge (two int64 indices each: ≈ 64 MB).
_PAIR_CHUNK = 1 << 22


class ImageDetections(NamedTuple):
    """Detections in one image, best first.

    Unpacks like :class:`~geolearn.models.postprocess.Detections` (``boxes, labels, scores =``);
    the box field is named for its space, image pixels, not chip pixels.

    Attributes:
        image_boxes: ``Tensor[K, 4]`` float32 xyxy in image pixels, within ``[0, W] × [0, H]``.
        labels: ``Tensor[K]`` int64 class indices 1..C.
        scores: ``Tensor[K]`` float32, descending.

    Examples:
        See :func:`detect_windows`, which returns it.
    """

    image_boxes: Tensor
    labels: Tensor
    scores: Tensor


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
            f"chip_size // 4 = {chip_size // 4} is the default."
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
            the chip size along each axis (as :func:`detect_windows` prepares it).
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


class SeamVerdict(NamedTuple):
    """What :func:`seam_filter` says about each box.

    Attributes:
        keep: ``Tensor[K]`` bool, False for a box cut by a seam whose object a neighbour sees whole.
        at_seam: ``Tensor[K]`` bool, True for a box touching an interior window side — among the
            kept boxes, the pieces of objects larger than the overlap.

    Examples:
        See :func:`seam_filter`, which returns it.
    """

    keep: Tensor
    at_seam: Tensor


def seam_filter(
    image_boxes: Tensor, window_index: Tensor, plan: WindowPlan, tolerance: float = 2.0
) -> SeamVerdict:
    """Which boxes to keep: not a box cut by a seam whose whole object another window sees.

    A box *touches* a window side when its edge lies within ``tolerance`` pixels of it (the
    detector clamps a cut object's box to the chip edge). Touching a side on the image border is
    harmless. Touching an *interior* side — the left side of a window with a left neighbour, say —
    the box is dropped when its far edge lies inside the strip shared with that neighbour, at least
    ``tolerance`` short of the neighbour's far edge (``x2 <= left neighbour's x2 - tolerance``).
    That neighbour then sees this end of the object clear of its own edge, and the object
    continues into it, so it reports the object with this end uncut. Per axis (the windows form a
    grid, so the axes are independent):

    * every object keeps at least one box: in the window holding its left end that box can only
      be dropped in favour of the left neighbour, which then sees it uncut on both sides;
    * an object at most ``overlap - 2 · tolerance`` pixels across lies clear of the edges of some
      window, and then every cut box of it is dropped: it is reported only whole (identical boxes
      from several windows, which the merge joins);
    * a larger object may be cut by every window that sees it: its cut pieces are kept and the
      merge must deal with them (:func:`merge_detections`).

    Args:
        image_boxes: ``Tensor[K, 4]`` xyxy in image pixels (:func:`to_image_boxes`).
        window_index: ``Tensor[K]`` int64, the window of each box (a row of ``plan.windows``).
        plan: the windows and their neighbours (:func:`plan_windows`).
        tolerance: pixels within which a box edge counts as touching a window side. Default 2.

    Returns:
        :class:`SeamVerdict` ``(keep, at_seam)``, two ``Tensor[K]`` bool.

    Examples:
        >>> plan = plan_windows(100, 160, chip_size=100, overlap=40)  # windows x 0..100 and 60..160
        >>> image_boxes = torch.tensor([[90.0, 10.0, 100.0, 30.0], [90.0, 10.0, 110.0, 30.0]])
        >>> seam_filter(image_boxes, torch.tensor([0, 1]), plan)  # window 0 cuts the object, window 1 sees it whole
        SeamVerdict(keep=tensor([False,  True]), at_seam=tensor([ True, False]))
    """
    window = plan.windows.to(image_boxes)[window_index]
    neighbour = plan.neighbour_edges.to(image_boxes)[window_index]
    return SeamVerdict(*seam_verdict(image_boxes, window, neighbour, tolerance))


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


def _intersecting_pairs(boxes: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Every unordered pair (i, j) of boxes in the same group whose interiors intersect.

    A sweep along x instead of the all-pairs matrix: boxes sorted by x1 (groups shifted apart
    along x, batched_nms's trick, so boxes of different groups never meet); the candidates of box
    ``i`` are the boxes after it that start before it ends. Memory grows with the candidate pairs,
    examined ``_PAIR_CHUNK`` at a time, not with ``K²``.

    Args:
        boxes: ``Tensor[K, 4]`` xyxy.
        groups: ``Tensor[K]`` int64; boxes of different groups never pair.

    Returns:
        Two ``Tensor[P]`` int64 index tensors into ``boxes``.
    """
    empty = boxes.new_zeros(0, dtype=torch.int64)
    if len(boxes) < 2:
        return empty, empty
    coords = boxes.double()
    span = coords[:, 2].max() - coords[:, 0].min() + 1
    x1 = coords[:, 0] + groups.double() * span
    x2 = coords[:, 2] + groups.double() * span
    x1, order = x1.sort()
    x2 = x2[order]
    first = torch.arange(1, len(boxes) + 1, device=boxes.device)
    stop = torch.searchsorted(x1, x2, side="left").clamp(min=first)  # candidates: first .. stop-1
    count = stop - first
    starts = torch.cumsum(count, 0) - count
    total = int(count.sum())
    pairs_i, pairs_j = [], []
    for begin in range(0, total, _PAIR_CHUNK):
        flat = torch.arange(begin, min(begin + _PAIR_CHUNK, total), device=boxes.device)
        row = torch.searchsorted(starts + count, flat, side="right")  # the box each flat index belongs to
        col = first[row] + (flat - starts[row])
        i, j = order[row], order[col]
        overlap_y = torch.minimum(boxes[i, 3], boxes[j, 3]) > torch.maximum(boxes[i, 1], boxes[j, 1])
        overlap_x = torch.minimum(boxes[i, 2], boxes[j, 2]) > torch.maximum(boxes[i, 0], boxes[j, 0])
        same = (groups[i] == groups[j]) & overlap_x & overlap_y
        pairs_i.append(i[same])
        pairs_j.append(j[same])
    if not pairs_i:
        return empty, empty
    return torch.cat(pairs_i), torch.cat(pairs_j)


def _intersection_over_smaller(boxes: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """``Tensor[P]``: area(box_i ∩ box_j) / min(area_i, area_j) for boxes xyxy with positive area."""
    top_left = torch.maximum(boxes[i, :2], boxes[j, :2])
    bottom_right = torch.minimum(boxes[i, 2:], boxes[j, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area = box_area(boxes)
    return inter / torch.minimum(area[i], area[j])


def _greedy_leaders(n_boxes: int, i: Tensor, j: Tensor, scores: Tensor) -> Tensor:
    """One greedy pass: ``Tensor[n]`` int64, the index of the box that absorbs each box (itself
    for a leader). Boxes are visited by descending score; an unabsorbed box leads and absorbs its
    unabsorbed matches ``(i, j)``. Sequential by nature, so it loops, in numpy, over the boxes
    with a match only (seam duplicates) — never over the isolated ones.
    """
    leader = np.arange(n_boxes)
    if len(i) == 0:
        return torch.from_numpy(leader)
    rank = torch.empty(n_boxes, dtype=torch.int64)
    rank[torch.sort(scores, descending=True, stable=True).indices] = torch.arange(n_boxes)
    # Directed edges from each box to its matches, in the order of the source's rank.
    src = torch.cat([i, j]).cpu()
    dst = torch.cat([j, i]).cpu()
    order = torch.sort(rank[src], stable=True).indices
    src, dst = src[order].numpy(), dst[order].numpy()
    bounds = np.flatnonzero(np.diff(src)) + 1
    absorbed = np.zeros(n_boxes, dtype=bool)
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(src)]):
        box = src[start]
        if absorbed[box]:
            continue
        absorbed[box] = True  # leads; visited, so no later box takes it
        matches = dst[start:stop]
        matches = matches[~absorbed[matches]]
        leader[matches] = box
        absorbed[matches] = True
    return torch.from_numpy(leader)


def _merge_groups(boxes: Tensor, flags: Tensor, leader: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Joins each box into its leader's: ``(heads [M] int64 (the leaders, ascending), union boxes
    [M, 4], flags [M] bool (any member's))``."""
    heads, slot = torch.unique(leader, return_inverse=True)
    slot2 = slot[:, None].expand(-1, 2)
    top_left = boxes.new_full((len(heads), 2), float("inf")).scatter_reduce(0, slot2, boxes[:, :2], "amin")
    bottom_right = boxes.new_full((len(heads), 2), float("-inf")).scatter_reduce(0, slot2, boxes[:, 2:], "amax")
    merged_flags = torch.zeros(len(heads), dtype=torch.bool, device=boxes.device)
    merged_flags[slot[flags]] = True
    return heads, torch.cat([top_left, bottom_right], dim=1), merged_flags


def greedy_merge(
    image_boxes: Tensor, scores: Tensor, groups: Tensor, overlap: float, rejoin: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """SAHI-style greedy merge: boxes overlapping a better box are joined into it.

    Visiting boxes by descending score, a box not yet absorbed absorbs every unabsorbed box of its
    group whose intersection over the smaller box's area (IoS) exceeds ``overlap``; the merged
    box is the union of their boxes and takes the leader's score (the highest). IoS, not IoU, so
    that a small cut piece matches the larger piece it overlaps. That one pass is SAHI's.

    An object cut by three or more windows leaves a chain of pieces in which only neighbours
    overlap, and one pass joins the leader's neighbours only. So the pass repeats on the merged
    boxes, but only among those holding a ``rejoin`` box (the pieces at a seam,
    :attr:`SeamVerdict.at_seam`), until none of them match. Repeating over *all* boxes would let
    the unions snowball through a field of touching objects (tree crowns, parked cars) into one box.

    Args:
        image_boxes: ``Tensor[K, 4]`` xyxy with positive areas.
        scores: ``Tensor[K]``.
        groups: ``Tensor[K]`` int64; boxes of different groups never merge (labels for a
            class-aware merge, zeros for a class-agnostic one).
        overlap: IoS above which two boxes are one object.
        rejoin: ``Tensor[K]`` bool, the boxes whose merged boxes may join again after the first
            pass; None: a single pass, exactly SAHI's.

    Returns:
        ``(Tensor[M, 4] boxes, Tensor[M] scores, Tensor[M] int64 index of each merged box's
        leader in the input)``, best first.

    Examples:
        >>> boxes = torch.tensor([[0.0, 0.0, 60.0, 20.0], [40.0, 0.0, 100.0, 20.0], [0.0, 50.0, 10.0, 60.0]])
        >>> greedy_merge(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 2]), overlap=0.1)
        (tensor([[  0.,   0., 100.,  20.],
                [  0.,  50.,  10.,  60.]]), tensor([0.9000, 0.7000]), tensor([0, 2]))
    """
    index = torch.arange(len(image_boxes), device=image_boxes.device)
    boxes = image_boxes
    flags = torch.zeros_like(index, dtype=torch.bool) if rejoin is None else rejoin.to(torch.bool)
    candidates = index  # the first pass examines every box
    while len(candidates) > 1:
        i, j = _intersecting_pairs(boxes[candidates], groups[index[candidates]])
        i, j = candidates[i], candidates[j]
        match = _intersection_over_smaller(boxes, i, j) > overlap
        if not match.any():
            break
        leader = _greedy_leaders(len(boxes), i[match], j[match], scores[index].cpu()).to(boxes.device)
        heads, boxes, flags = _merge_groups(boxes, flags, leader)
        index = index[heads]
        candidates = torch.nonzero(flags).squeeze(1)
    order = torch.sort(scores[index], descending=True, stable=True).indices
    return boxes[order], scores[index][order], index[order]


def merge_detections(
    image_boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    *,
    method: MergeMethod = "nms",
    overlap: float = 0.1,
    class_agnostic: bool = False,
    at_seam: Tensor | None = None,
) -> ImageDetections:
    """The one cross-window merge of detections already in image pixels.

    * ``'nms'`` — non-maximum suppression: of two boxes with IoU above ``overlap`` the lower-scored
      goes. Per class (``batched_nms``) unless ``class_agnostic``. It cannot join: pieces of an
      object cut by every window come out as the best-scored *piece*, plus any piece that does
      not overlap it (the far end of an object longer than two windows).
    * ``'greedy'`` — :func:`greedy_merge` with intersection-over-smaller above ``overlap``: pieces
      are joined into the union box, so a large object cut by every window comes out whole
      (given ``at_seam``, the chain of pieces of an object cut by three or more windows too).

    Args:
        image_boxes: ``Tensor[K, 4]`` float32 xyxy in image pixels, positive areas.
        labels: ``Tensor[K]`` int64 class indices 1..C.
        scores: ``Tensor[K]`` float32.
        method: ``'nms'`` (the default) or ``'greedy'``. Keyword only, like the rest.
        overlap: the IoU (nms) or IoS (greedy) above which two boxes are one object, 0–1.
            Default 0.1.
        class_agnostic: merge across classes too (the best box's label wins). Default False.
        at_seam: ``Tensor[K]`` bool, the pieces cut at a seam (:attr:`SeamVerdict.at_seam`), which
            the greedy merge keeps joining until done; None (the default): one greedy pass.
            Unused by NMS.

    Returns:
        :class:`ImageDetections`, best first.

    Raises:
        ValueError: an unknown ``method``.

    Examples:
        >>> boxes = torch.tensor([[0.0, 0.0, 60.0, 20.0], [40.0, 0.0, 100.0, 20.0]])  # two pieces, IoU 0.2
        >>> labels, scores = torch.tensor([1, 1]), torch.tensor([0.9, 0.8])
        >>> merge_detections(boxes, labels, scores).image_boxes  # NMS keeps the better piece
        tensor([[ 0.,  0., 60., 20.]])
        >>> merge_detections(boxes, labels, scores, method="greedy").image_boxes  # greedy joins them
        tensor([[  0.,   0., 100.,  20.]])
    """
    groups = torch.zeros_like(labels) if class_agnostic else labels
    if method == "nms":
        keep = nms(image_boxes, scores, overlap) if class_agnostic else batched_nms(image_boxes, scores, groups, overlap)
        return ImageDetections(image_boxes[keep], labels[keep], scores[keep])  # keep is by descending score
    if method == "greedy":
        boxes, merged_scores, leaders = greedy_merge(image_boxes, scores, groups, overlap, rejoin=at_seam)
        return ImageDetections(boxes, labels[leaders], merged_scores)
    raise ValueError(f"merge={method!r}: choose 'nms' (suppress duplicates) or 'greedy' (join pieces by IoS).")


def _gather(found: Sequence[Detections], window_index: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-window detections → ``(chip_boxes [K, 4], labels [K], scores [K], window_index [K])``."""
    counts = torch.tensor([len(d.scores) for d in found], dtype=torch.int64)
    boxes = torch.cat([d.chip_boxes.to(device, torch.float32).reshape(-1, 4) for d in found])
    labels = torch.cat([d.labels.to(device, torch.int64) for d in found])
    scores = torch.cat([d.scores.to(device, torch.float32) for d in found])
    return boxes, labels, scores, window_index.repeat_interleave(counts).to(device)


class WindowDetections(NamedTuple):
    """The boxes one batch of windows contributes to the cross-window merge.

    Attributes:
        image_boxes: ``Tensor[K, 4]`` float32 xyxy in image pixels, clipped to the image.
        labels: ``Tensor[K]`` int64 class indices 1..C.
        scores: ``Tensor[K]`` float32.
        at_seam: ``Tensor[K]`` bool, pieces cut at a seam (:attr:`SeamVerdict.at_seam`).

    Examples:
        See :func:`window_detections`, which returns it.
    """

    image_boxes: Tensor
    labels: Tensor
    scores: Tensor
    at_seam: Tensor


def window_detections(
    run_batch: RunBatch,
    crops: Tensor,
    window_index: Tensor,
    plan: WindowPlan,
    *,
    edge_tolerance: float | None = 2.0,
    valid: Tensor | None = None,
) -> WindowDetections:
    """Runs one batch of window crops and keeps the boxes that go on to the merge.

    ``run_batch`` gives each crop's boxes in chip pixels; they are shifted to image pixels
    (:func:`to_image_boxes`), boxes cut by a seam whose object a neighbour sees whole are dropped
    (:func:`seam_filter`, unless ``edge_tolerance`` is None), boxes are clipped to the image and
    those left without area dropped (:func:`clip_to_image`); given ``valid``, so are boxes whose
    centre lies on an invalid (nodata) pixel of their window. All tensor operations, no loop
    over boxes.

    Args:
        run_batch: crops → one :class:`~geolearn.models.postprocess.Detections` per crop.
        crops: ``Tensor[B, C, S, S]`` the windows' network inputs (channels_last).
        window_index: ``Tensor[B]`` int64, the row of ``plan.windows`` of each crop, ascending.
        plan: the windows and their neighbours (:func:`plan_windows`).
        edge_tolerance: pixels, see :func:`seam_filter`; None keeps boxes cut by seams.
            Default 2. Keyword only.
        valid: ``Tensor[B, S, S]`` bool, the crops' valid pixels; None (the default): all valid.

    Returns:
        :class:`WindowDetections` of the batch, in image pixels.

    Raises:
        ValueError: ``run_batch`` returned a different number of results than crops.

    Examples:
        >>> from geolearn.models.postprocess import Detections
        >>> def run_batch(crops):  # a stub detector: a box across the right edge of every crop
        ...     return [Detections(torch.tensor([[90.0, 10.0, 100.0, 30.0]]), torch.tensor([1]), torch.tensor([0.9]))
        ...             for _ in crops]
        >>> plan = plan_windows(100, 160, chip_size=100, overlap=40)
        >>> part = window_detections(run_batch, torch.zeros(2, 3, 100, 100), torch.tensor([0, 1]), plan)
        >>> part.image_boxes  # window 0's box (x 90..100) is cut by the seam that window 1 sees past
        tensor([[150.,  10., 160.,  30.]])
    """
    found = run_batch(crops)
    if len(found) != len(window_index):
        raise ValueError(f"run_batch returned {len(found)} results for {len(window_index)} crops; need one per crop.")
    device = crops.device
    chip_boxes, labels, scores, box_window = _gather(found, window_index, device)
    windows = plan.windows.to(device)
    image_boxes = to_image_boxes(chip_boxes, box_window, windows)
    if edge_tolerance is None:
        keep, at_seam = torch.ones_like(scores, dtype=torch.bool), torch.zeros_like(scores, dtype=torch.bool)
    else:
        keep, at_seam = seam_filter(image_boxes, box_window, plan, edge_tolerance)
    image_boxes, has_area = clip_to_image(image_boxes, plan.image_size)
    keep &= has_area
    if valid is not None:
        keep &= _centre_is_valid(image_boxes, box_window, window_index, windows, valid.to(device))
    return WindowDetections(image_boxes[keep], labels[keep], scores[keep], at_seam[keep])


def _centre_is_valid(
    image_boxes: Tensor, box_window: Tensor, window_index: Tensor, windows: Tensor, valid: Tensor
) -> Tensor:
    """``Tensor[K]`` bool: the pixel under each box's centre is valid in the box's window's mask."""
    size = valid.shape[-1]
    position = torch.searchsorted(window_index.to(box_window), box_window)  # the crop of each box (window_index ascends)
    centre = (image_boxes[:, :2] + image_boxes[:, 2:]) / 2 - windows[box_window, :2]  # chip pixels
    column, row = centre.floor().long().clamp(0, size - 1).unbind(dim=1)
    return valid[position, row, column]


def merge_windows(
    parts: Sequence[WindowDetections],
    *,
    method: MergeMethod = "nms",
    overlap: float = 0.1,
    class_agnostic: bool = False,
    seams: bool = True,
    max_detections: int | None = None,
) -> ImageDetections:
    """The one cross-window merge of every batch's :func:`window_detections`.

    Args:
        parts: one :class:`WindowDetections` per batch (none: no detections).
        method: ``'nms'`` (the default) or ``'greedy'`` (see :func:`merge_detections`).
            Keyword only, like the rest.
        overlap: IoU (nms) or intersection-over-smaller (greedy) above which two boxes are one
            object, 0–1. Default 0.1.
        class_agnostic: merge across classes. Default False.
        seams: whether the seam filter ran, so that the greedy merge keeps joining the pieces at
            seams. Default True.
        max_detections: most detections returned; all when None (the default).

    Returns:
        :class:`ImageDetections` in image pixels, best first.

    Raises:
        ValueError: an unknown ``method``.

    Examples:
        >>> part = WindowDetections(torch.tensor([[0.0, 0.0, 60.0, 20.0], [40.0, 0.0, 100.0, 20.0]]),
        ...                         torch.tensor([1, 1]), torch.tensor([0.9, 0.8]), torch.tensor([True, True]))
        >>> merge_windows([part], method="greedy")
        ImageDetections(image_boxes=tensor([[  0.,   0., 100.,  20.]]), labels=tensor([1]), scores=tensor([0.9000]))
        >>> len(merge_windows([]).scores)
        0
    """
    if not parts:
        return ImageDetections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    boxes, labels, scores, at_seam = (torch.cat(column) for column in zip(*parts))
    merged = merge_detections(
        boxes, labels, scores, method=method, overlap=overlap, class_agnostic=class_agnostic,
        at_seam=at_seam if seams else None,
    )
    if max_detections is not None:
        merged = ImageDetections(*(field[:max_detections] for field in merged))
    return merged


def detect_windows(
    run_batch: RunBatch,
    image: Tensor,
    chip_size: int,
    *,
    overlap: int | None = None,
    batch_size: int = 8,
    merge: MergeMethod = "nms",
    nms_overlap: float = 0.1,
    class_agnostic: bool = False,
    edge_tolerance: float | None = 2.0,
    max_detections: int | None = None,
) -> ImageDetections:
    """Runs a chip detector over overlapping windows of an image and merges the results.

    The windows (:func:`plan_windows`) go to ``run_batch`` ``batch_size`` at a time, in plan
    order; each window's boxes are shifted to image pixels, boxes cut by a seam whose object a
    neighbour sees whole are dropped (:func:`seam_filter`), boxes are clipped to the image (the
    zero padding of an image smaller than a chip never yields a box outside it) and all windows'
    boxes are merged once (:func:`merge_detections`). Coordinates stay float; nothing is rounded.

    Objects larger than ``overlap`` may be cut by every window that sees them. Their cut pieces
    are kept (dropping them would lose the object) and the merge decides: ``merge='nms'``
    reports the best-scored piece, a box smaller than the object (and, for an object spanning
    more than two windows, also the pieces that do not overlap that one); ``merge='greedy'``
    joins the pieces into one box around the whole object. Choose ``overlap`` larger than the objects
    (at most ``chip_size`` - 1) to have them seen whole.

    Args:
        run_batch: ``Tensor[B, C, S, S]`` crops (channels_last, ``S = chip_size``) → one
            :class:`~geolearn.models.postprocess.Detections` per crop, boxes in chip pixels.
        image: ``Tensor[C, H, W]`` the whole image, as ``run_batch`` expects its pixels.
        chip_size: window side in pixels.
        overlap: pixels shared by adjacent windows; ``chip_size // 4`` when None (the default).
            Keyword only, like the rest.
        batch_size: windows per ``run_batch`` call. Default 8.
        merge: ``'nms'`` (the default) or ``'greedy'`` (see :func:`merge_detections`).
        nms_overlap: IoU (nms) or intersection-over-smaller (greedy) above which two boxes are
            one object, 0–1. Default 0.1.
        class_agnostic: merge across classes. Default False.
        edge_tolerance: pixels within which a box edge touches a window side (see
            :func:`seam_filter`); None keeps cut boxes and leaves seams to the merge alone.
            Default 2.
        max_detections: most detections returned; all when None (the default).

    Returns:
        :class:`ImageDetections` in image pixels, best first.

    Raises:
        ValueError: ``image`` is not ``[C, H, W]``, ``batch_size`` < 1, ``run_batch`` returned a
            different number of results than crops, or an invalid ``overlap`` / ``merge``.

    Examples:
        >>> from geolearn.models.postprocess import Detections
        >>> def run_batch(crops):  # a stub detector: a 20 px box at the centre of every crop
        ...     box = torch.tensor([[118.0, 118.0, 138.0, 138.0]])
        ...     return [Detections(box, torch.tensor([1]), torch.tensor([0.9 - 0.1 * i])) for i in range(len(crops))]
        >>> detect_windows(run_batch, torch.zeros(3, 256, 448), chip_size=256, overlap=64)  # windows at x 0 and 192
        ImageDetections(image_boxes=tensor([[118., 118., 138., 138.],
                [310., 118., 330., 138.]]), labels=tensor([1, 1]), scores=tensor([0.9000, 0.8000]))
    """
    if image.ndim != 3:
        raise ValueError(f"image of shape {tuple(image.shape)}: expected one image as [bands, height, width].")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: need at least 1 window per batch.")
    if merge not in ("nms", "greedy"):
        raise ValueError(f"merge={merge!r}: choose 'nms' (suppress duplicates) or 'greedy' (join pieces by IoS).")
    _, height, width = image.shape
    plan = plan_windows(height, width, chip_size, chip_size // 4 if overlap is None else overlap)
    image_hwc = _padded_hwc(image, chip_size)

    parts = []
    for start in range(0, len(plan.windows), batch_size):
        window_index = torch.arange(start, min(start + batch_size, len(plan.windows)))
        crops = crop_windows(image_hwc, plan.windows[window_index])
        parts.append(window_detections(run_batch, crops, window_index, plan, edge_tolerance=edge_tolerance))
    return merge_windows(parts, method=merge, overlap=nms_overlap, class_agnostic=class_agnostic,
                         seams=edge_tolerance is not None, max_detections=max_detections)


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first parameter, or ``default`` for a parameterless module."""
    parameter = next(model.parameters(), None)
    return default if parameter is None else parameter.device


def network_runner(
    model: nn.Module,
    anchors: Tensor,
    chip_size: int,
    *,
    score_thresh: float = 0.5,
    nms_overlap: float = 0.1,
    class_agnostic: bool = False,
    autocast_dtype: torch.dtype | None = None,
    test_time_augmentation: bool = False,
) -> RunBatch:
    """A RetinaNet network as a ``run_batch``: crops → per-crop detections in chip pixels.

    The returned function moves the crops to the model's device, runs the network (under
    ``torch.autocast`` in ``autocast_dtype`` when given) and decodes its outputs with
    :func:`~geolearn.models.postprocess.detect`: each crop thresholded at ``score_thresh`` and
    suppressed within itself at ``nms_overlap``. It does not touch the model's mode or autograd:
    the caller puts the model in eval mode and runs under ``torch.inference_mode()``
    (:func:`predict_tiles` does both).

    Args:
        model: ``images [B, C, S, S]`` → ``[cls_logits [B, A, n_classes], box_deltas [B, A, 4]]``
            (:class:`~geolearn.models.retinanet.RetinaNetModel`).
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1] for ``chip_size``
            (:func:`~geolearn.models.anchors.make_anchors`).
        chip_size: the network's chip side in pixels.
        score_thresh: scores must exceed this, 0–1. Default 0.5. Keyword only, like the rest.
        nms_overlap: IoU above which the lower-scored of two boxes in a crop is suppressed, 0–1.
            Default 0.1.
        class_agnostic: suppress across classes within a crop. Default False.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the network under autocast; None (the
            default): as is.
        test_time_augmentation: run each crop in its 8 orientations and fuse the views' boxes
            (:func:`~geolearn.models.tta.augmented_runner`); 8 times the work. Default False.

    Returns:
        ``run_batch(crops: Tensor[B, C, S, S]) -> list[Detections]``; it raises ValueError when
        the network's anchor count does not match ``anchors``.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> model = build_retinanet("resnet18", n_classes=2, pretrained=False).eval()
        >>> run_batch = network_runner(model, make_anchors(64), 64)
        >>> with torch.inference_mode():
        ...     found = run_batch(torch.zeros(2, 3, 64, 64))
        >>> len(found), found[0].chip_boxes.shape  # an untrained network scores every anchor 0.018
        (2, torch.Size([0, 4]))
    """
    device = _device_of(model, torch.device("cpu"))
    anchors = anchors.to(device=device, dtype=torch.float32)
    # Under CPU autocast every convolution casts its float32 weights to bfloat16 at every call:
    # ~10 % of a ResNet-50 window's time. Casting them once, here, gives the very same numbers.
    # (Taken at the first batch, once the caller has set the model's memory format.)
    cast_weights: dict[str, Tensor] | None = None
    cast_once = autocast_dtype is torch.bfloat16 and device.type == "cpu"
    # A fused score is a mean over the views, so each view keeps its weaker boxes too.
    view_thresh = min(score_thresh, TTA_VIEW_THRESH) if test_time_augmentation else score_thresh

    def run_batch(crops: Tensor) -> list[Detections]:
        nonlocal cast_weights
        crops = crops.to(device, non_blocking=True)
        if cast_once and cast_weights is None:
            cast_weights = convolution_weights(model, autocast_dtype)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            if cast_once:
                output = torch.func.functional_call(model, cast_weights, (crops,), strict=False)
            else:
                output = model(crops)
        if output[0].shape[1] != len(anchors):
            raise ValueError(
                f"the network gives {output[0].shape[1]} anchors per {chip_size} px chip but anchors has "
                f"{len(anchors)}: pass make_anchors({chip_size}, scales, ratios) with the model's scales and ratios."
            )
        return detect(
            output, anchors, chip_size, score_thresh=view_thresh, nms_overlap=nms_overlap, class_agnostic=class_agnostic
        )

    if test_time_augmentation:
        return augmented_runner(run_batch, score_thresh)
    return run_batch


def zoomed_runner(run_batch: RunBatch, window_size: int, chip_size: int) -> RunBatch:
    """``run_batch`` for a network trained on enlarged chips: crops are enlarged to ``chip_size`` first.

    A model trained with ``prepare_data(..., resize_to=R)`` on chips of ``s`` pixels saw objects
    ``R / s`` times larger than the imagery shows them. Windows of ``window_size`` imagery pixels
    are enlarged to ``chip_size`` as the chips were (bilinear, as
    :func:`geolearn.data.transforms.resize` does in training), and the boxes found are shrunk
    back to window pixels.

    Args:
        run_batch: the network's ``run_batch`` for ``chip_size`` crops (:func:`network_runner`).
        window_size: side of the crops it is given, in imagery pixels.
        chip_size: side of the crops the network takes.

    Returns:
        ``run_batch(crops: Tensor[B, C, window_size, window_size]) -> list[Detections]``, boxes in
        window pixels.

    Examples:
        >>> def run_batch(crops):  # a stub network: one box at chip pixels 32..48
        ...     assert crops.shape[-1] == 96
        ...     box = torch.tensor([[32.0, 32.0, 48.0, 48.0]])
        ...     return [Detections(box, torch.tensor([1]), torch.tensor([0.9]))] * len(crops)
        >>> found = zoomed_runner(run_batch, 64, 96)(torch.zeros(2, 3, 64, 64))
        >>> found[0].chip_boxes  # in the 64 px window
        tensor([[21.3333, 21.3333, 32.0000, 32.0000]])
    """
    scale = window_size / chip_size

    def run_zoomed(crops: Tensor) -> list[Detections]:
        enlarged = torch.nn.functional.interpolate(crops.float(), size=(chip_size, chip_size), mode="bilinear",
                                                   align_corners=False)
        found = run_batch(enlarged.contiguous(memory_format=torch.channels_last))
        return [Detections(d.chip_boxes * scale, d.labels, d.scores) for d in found]

    return run_zoomed


def convolution_weights(model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """The weights and biases of the model's convolutions, cast to ``dtype`` (detached copies).

    Passed to ``torch.func.functional_call`` under autocast, they spare autocast casting the
    same weights again at every call; every other parameter and buffer stays the model's own.

    Args:
        model: any module.
        dtype: e.g. ``torch.bfloat16``.

    Returns:
        ``{state_dict key: tensor}`` for the parameters of every ``nn.Conv2d``, memory format kept.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> {name: w.dtype for name, w in convolution_weights(net, torch.bfloat16).items()}
        {'0.weight': torch.bfloat16, '0.bias': torch.bfloat16}
    """
    return {
        f"{prefix}.{name}" if prefix else name: weight.detach().to(dtype)
        for prefix, module in model.named_modules() if isinstance(module, nn.Conv2d)
        for name, weight in module.named_parameters(recurse=False)
    }


def predict_tiles(
    model: nn.Module,
    image: Tensor,
    anchors: Tensor,
    chip_size: int,
    *,
    score_thresh: float = 0.5,
    nms_overlap: float = 0.1,
    overlap: int | None = None,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    class_agnostic: bool = False,
    merge: MergeMethod = "nms",
    max_detections: int | None = None,
    edge_tolerance: float | None = 2.0,
    test_time_augmentation: bool = False,
) -> ImageDetections:
    """Detects objects in an image of any size with a RetinaNet network, window by window.

    :func:`detect_windows` with ``run_batch`` = the network (in eval mode, under
    ``torch.inference_mode()``, in ``autocast_dtype`` when given) followed by
    :func:`~geolearn.models.postprocess.detect`. Each window is thresholded at ``score_thresh``
    and suppressed within itself at ``nms_overlap`` before the cross-window merge: suppression
    only ever removes a lower-scored box, so boxes below the final threshold could not change
    which boxes above it survive, and thresholding early only saves work. An image smaller than
    the chip is zero-padded (zero = the band mean after normalisation); no box leaves the image.
    Objects larger than ``overlap`` may be cut by every window: see :func:`detect_windows`.

    For the best CPU speed convert the model once, ``model.to(memory_format=torch.channels_last)``
    (the crops are channels_last already), and pass ``autocast_dtype=torch.bfloat16`` on CPUs with
    AVX-512 BF16 or AMX.

    Args:
        model: ``images [B, C, S, S]`` → ``[cls_logits [B, A, n_classes], box_deltas [B, A, 4]]``
            (:class:`~geolearn.models.retinanet.RetinaNetModel`). Its train/eval mode is restored.
        image: ``Tensor[C, H, W]`` float32, already scaled and normalised as in training.
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1] for ``chip_size``
            (:func:`~geolearn.models.anchors.make_anchors`).
        chip_size: the network's chip side in pixels.
        score_thresh: scores must exceed this, 0–1. Default 0.5. Keyword only, like the rest.
        nms_overlap: IoU (or IoS for ``merge='greedy'``) above which two boxes are one object,
            0–1. Default 0.1.
        overlap: pixels shared by adjacent windows; ``chip_size // 4`` when None (the default).
        batch_size: windows per forward pass. Default 8.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the network under autocast; None (the
            default): as is.
        class_agnostic: suppress/merge across classes, one box per object. Default False.
        merge: ``'nms'`` (the default) or ``'greedy'`` (see :func:`merge_detections`).
        max_detections: most detections returned for the image; all when None (the default).
        edge_tolerance: pixels, see :func:`seam_filter`; None keeps boxes cut by seams. Default 2.
        test_time_augmentation: see :func:`network_runner`. Default False.

    Returns:
        :class:`ImageDetections` — boxes float32 xyxy in image pixels, labels 1..C, scores — best first.

    Raises:
        ValueError: ``image`` is not a floating-point ``[C, H, W]`` tensor, ``anchors`` do not
            match the network's outputs for ``chip_size``, ``batch_size`` < 1, or an invalid
            ``overlap`` / ``merge``.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> model = build_retinanet("resnet18", n_classes=2, pretrained=False)
        >>> found = predict_tiles(model, torch.zeros(3, 100, 150), make_anchors(64), chip_size=64)
        >>> found.image_boxes.shape, model.training  # untrained: nothing found; the mode is restored
        (torch.Size([0, 4]), True)
    """
    if not image.is_floating_point():
        raise ValueError(
            f"image dtype {image.dtype}: predict_tiles expects the scaled and normalised float image "
            "(divide by the data's maximum and apply the training statistics first)."
        )
    run_batch = network_runner(
        model, anchors, chip_size, score_thresh=score_thresh, nms_overlap=nms_overlap,
        class_agnostic=class_agnostic, autocast_dtype=autocast_dtype, test_time_augmentation=test_time_augmentation,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return detect_windows(
                run_batch,
                image,
                chip_size,
                overlap=overlap,
                batch_size=batch_size,
                merge=merge,
                nms_overlap=nms_overlap,
                class_agnostic=class_agnostic,
                edge_tolerance=edge_tolerance,
                max_detections=max_detections,
            )
    finally:
        model.train(was_training)
