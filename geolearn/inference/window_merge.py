"""The windows' boxes → one set of detections: the seam filter and the one cross-window merge.

After a batch of windows has run (:func:`window_detections`), each box is in image pixels; a box
cut by an interior window side is dropped when the neighbour across that side sees the object
whole (:func:`seam_filter`), so an object straddling a seam is reported once, whole — the boxes
kept at a seam are pieces of objects larger than the overlap. Then ONE merge of all windows'
boxes (:func:`merge_windows`, :func:`merge_boxes`): class-aware NMS by default, class-agnostic
NMS, or a SAHI-style greedy merge by intersection-over-smaller (:func:`greedy_merge`). Boxes are
never rounded. Shared by :func:`~geolearn.inference.runner.detect_windows` (an image in memory)
and :func:`~geolearn.inference.raster.detect_raster` (a raster on disk).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area, nms

from geolearn.inference.defaults import EDGE_TOLERANCE, MERGE, NMS_OVERLAP, MergeMethod
from geolearn.inference.windows import RunBatch, WindowPlan, clip_to_image, to_image_boxes
from geolearn.models.postprocess import Detections
from geolearn.models.raster_function import seam_verdict

__all__ = [
    "ImageDetections",
    "SeamVerdict",
    "seam_filter",
    "greedy_merge",
    "merge_boxes",
    "WindowDetections",
    "window_detections",
    "merge_windows",
]

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
        See :func:`~geolearn.inference.runner.detect_windows`, which returns it.
    """

    image_boxes: Tensor
    labels: Tensor
    scores: Tensor


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
      merge must deal with them (:func:`merge_boxes`).

    Args:
        image_boxes: ``Tensor[K, 4]`` xyxy in image pixels (:func:`~geolearn.inference.windows.to_image_boxes`).
        window_index: ``Tensor[K]`` int64, the window of each box (a row of ``plan.windows``).
        plan: the windows and their neighbours (:func:`~geolearn.inference.windows.plan_windows`).
        tolerance: pixels within which a box edge counts as touching a window side. Default 2.

    Returns:
        :class:`SeamVerdict` ``(keep, at_seam)``, two ``Tensor[K]`` bool.

    Examples:
        >>> from geolearn.inference.windows import plan_windows
        >>> plan = plan_windows(100, 160, chip_size=100, overlap=40)  # windows x 0..100 and 60..160
        >>> image_boxes = torch.tensor([[90.0, 10.0, 100.0, 30.0], [90.0, 10.0, 110.0, 30.0]])
        >>> seam_filter(image_boxes, torch.tensor([0, 1]), plan)  # window 0 cuts the object, window 1 sees it whole
        SeamVerdict(keep=tensor([False,  True]), at_seam=tensor([ True, False]))
    """
    window = plan.windows.to(image_boxes)[window_index]
    neighbour = plan.neighbour_edges.to(image_boxes)[window_index]
    return SeamVerdict(*seam_verdict(image_boxes, window, neighbour, tolerance))


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


def merge_boxes(
    image_boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    *,
    method: MergeMethod = MERGE,
    overlap: float = NMS_OVERLAP,
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
        >>> merge_boxes(boxes, labels, scores).image_boxes  # NMS keeps the better piece
        tensor([[ 0.,  0., 60., 20.]])
        >>> merge_boxes(boxes, labels, scores, method="greedy").image_boxes  # greedy joins them
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
    edge_tolerance: float | None = EDGE_TOLERANCE,
    valid: Tensor | None = None,
) -> WindowDetections:
    """Runs one batch of window crops and keeps the boxes that go on to the merge.

    ``run_batch`` gives each crop's boxes in chip pixels; they are shifted to image pixels
    (:func:`~geolearn.inference.windows.to_image_boxes`), boxes cut by a seam whose object a neighbour sees whole are dropped
    (:func:`seam_filter`, unless ``edge_tolerance`` is None), boxes are clipped to the image and
    those left without area dropped (:func:`~geolearn.inference.windows.clip_to_image`); given ``valid``, so are boxes whose
    centre lies on an invalid (nodata) pixel of their window. All tensor operations, no loop
    over boxes.

    Args:
        run_batch: crops → one :class:`~geolearn.models.postprocess.Detections` per crop.
        crops: ``Tensor[B, C, S, S]`` the windows' network inputs (channels_last).
        window_index: ``Tensor[B]`` int64, the row of ``plan.windows`` of each crop, ascending.
        plan: the windows and their neighbours (:func:`~geolearn.inference.windows.plan_windows`).
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
        >>> from geolearn.inference.windows import plan_windows
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
    method: MergeMethod = MERGE,
    overlap: float = NMS_OVERLAP,
    class_agnostic: bool = False,
    seams: bool = True,
    max_detections: int | None = None,
) -> ImageDetections:
    """The one cross-window merge of every batch's :func:`window_detections`.

    Args:
        parts: one :class:`WindowDetections` per batch (none: no detections).
        method: ``'nms'`` (the default) or ``'greedy'`` (see :func:`merge_boxes`).
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
    merged = merge_boxes(
        boxes, labels, scores, method=method, overlap=overlap, class_agnostic=class_agnostic,
        at_seam=at_seam if seams else None,
    )
    if max_detections is not None:
        merged = ImageDetections(*(field[:max_detections] for field in merged))
    return merged
