"""RetinaNet anchors the arcgis.learn way, and fitting anchors to the objects of a data set.

Anchors are ``Tensor[A, 4]`` in arcgis.learn's format: ``(cy, cx, h, w)``, y first, full sizes,
in [-1, 1] chip coordinates (see :mod:`geolearn.models.boxes`). They follow the network's five
levels P3..P7; at each level every cell of the level's ``n × n`` grid carries
``len(ratios) * len(scales)`` anchors centred on the cell centre, 4 cells wide × scale.

Aerial objects are often far smaller than the default anchors (32 px at P3 for a 256 px chip,
the smallest default is 20 px): :func:`anchor_coverage` measures how many labelled boxes some
anchor can match at all, and :func:`suggest_anchors` picks scales and ratios that match more.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from geolearn.errors import GeolearnWarning
from geolearn.models.boxes import cthw_to_chip

__all__ = [
    "DEFAULT_SCALES",
    "DEFAULT_RATIOS",
    "N_LEVELS",
    "level_sizes",
    "make_anchors",
    "anchor_coverage",
    "suggest_anchors",
    "AnchorFit",
]

# arcgis.learn's (and the RetinaNet paper's) defaults: three sizes per octave, three shapes.
DEFAULT_SCALES: tuple[float, ...] = (1.0, 2 ** (-1 / 3), 2 ** (-2 / 3))
DEFAULT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)

# P3..P7.
N_LEVELS = 5
# An anchor's base size in cells of its level (32 px at P3, whose cells are 8 px).
_CELLS_PER_ANCHOR = 4
# Boxes per box_iou call: bounds the [boxes, anchors] IoU matrix (1024 × 12276 floats ≈ 50 MB).
_IOU_CHUNK = 1024


def _ceil_half(n: int) -> int:
    return -(-n // 2)


def level_sizes(chip_size: int) -> list[int]:
    """Grid side of each level P3..P7 for a square chip.

    Each stride-2 layer (ResNet's 7×7 stem conv, its max-pool, the first convs of layer2..layer4,
    then the 3×3 convs making P6 and P7; all padded by kernel // 2) maps ``n`` cells to
    ``ceil(n / 2)``. P3 is three halvings from the input, so level ``k`` (3..7) has
    ``ceil(chip_size / 2**k)`` cells per side: 32, 16, 8, 4, 2 at 256 and 28, 14, 7, 4, 2 at 224
    (7 → 4, not 3). These are exactly the feature-map sizes the network produces.

    Args:
        chip_size: side of the chip in pixels.

    Returns:
        Five grid sides, P3 first.

    Examples:
        >>> level_sizes(256), level_sizes(224)
        ([32, 16, 8, 4, 2], [28, 14, 7, 4, 2])
    """
    n = chip_size
    for _ in range(3):
        n = _ceil_half(n)
    sizes = []
    for _ in range(N_LEVELS):
        sizes.append(n)
        n = _ceil_half(n)
    return sizes


def _cell_shapes(scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """``Tensor[K, 2]`` (h, w) of one cell's anchors in cells, ratio-major then scale (K = R·S).

    ``ratio = h / w``: ``h = 4 · scale · sqrt(ratio)``, ``w = 4 · scale / sqrt(ratio)``.
    """
    shapes = [
        (_CELLS_PER_ANCHOR * s * math.sqrt(r), _CELLS_PER_ANCHOR * s / math.sqrt(r)) for r in ratios for s in scales
    ]
    return torch.tensor(shapes, dtype=torch.float64)


def make_anchors(
    chip_size: int,
    scales: Sequence[float] = DEFAULT_SCALES,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> Tensor:
    """All anchors of a square chip, in the order of the network's outputs.

    At a level with ``n × n`` cells (:func:`level_sizes`), cell centres lie at
    ``linspace(-1 + 1/n, 1 - 1/n, n)`` and a cell is ``2 / n`` wide. Order: level P3 → P7, then
    cells row-major (y, then x), then within a cell ratios (outer) and scales (inner) — the order
    of :class:`~geolearn.models.retinanet.RetinaNetModel`'s flattened outputs and of
    arcgis.learn's anchors.

    Args:
        chip_size: side of the chip in pixels.
        scales: anchor sizes relative to 4 cells (1 → 32 px at P3 on any chip). Default
            :data:`DEFAULT_SCALES`, ``(1, 2^(-1/3), 2^(-2/3))``.
        ratios: anchor aspect ratios ``h / w``. Default :data:`DEFAULT_RATIOS`, ``(0.5, 1, 2)``.

    Returns:
        ``Tensor[A, 4]`` float32 (cy, cx, h, w) in [-1, 1], with
        ``A = len(scales) · len(ratios) · Σ n²``.

    Examples:
        >>> make_anchors(256).shape  # 9 anchors × (32² + 16² + 8² + 4² + 2²) cells
        torch.Size([12276, 4])
        >>> make_anchors(64, scales=(1.0,), ratios=(1.0,))[:2]  # P3 is 8 × 8 cells of 8 px
        tensor([[-0.8750, -0.8750,  1.0000,  1.0000],
                [-0.8750, -0.6250,  1.0000,  1.0000]])
    """
    shapes = _cell_shapes(scales, ratios)  # [K, 2], in cells
    levels = []
    for n in level_sizes(chip_size):
        centres = torch.linspace(-1 + 1 / n, 1 - 1 / n, n, dtype=torch.float64)
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        grid = torch.stack([cy.reshape(-1), cx.reshape(-1)], dim=1)  # [n², 2] row-major
        sizes = shapes * (2 / n)  # [K, 2] in [-1, 1] units
        cells = torch.cat(
            [grid[:, None, :].expand(-1, len(sizes), -1), sizes[None].expand(len(grid), -1, -1)], dim=2
        )
        levels.append(cells.reshape(-1, 4))
    return torch.cat(levels).float()


def _all_boxes(chip_boxes: Sequence[Tensor]) -> Tensor:
    """Every box of every chip as one ``Tensor[M, 4]`` float32 xyxy (pixels)."""
    boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in chip_boxes]
    boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    if len(boxes) == 0:
        raise ValueError("chip_boxes holds no boxes, so anchor coverage is undefined; pass the chips' labelled boxes.")
    return boxes


def _best_iou(boxes: Tensor, anchors_xyxy: Tensor) -> Tensor:
    """``Tensor[M]``: each box's highest IoU with any anchor (boxes and anchors xyxy, same space)."""
    return torch.cat([box_iou(chunk, anchors_xyxy).amax(dim=1) for chunk in boxes.split(_IOU_CHUNK)])


def _covered(boxes: Tensor, chip_size: int, scales: Sequence[float], ratios: Sequence[float], iou: float) -> Tensor:
    """``Tensor[M]`` bool: the boxes that some anchor of these scales/ratios matches with IoU ≥ ``iou``."""
    anchors = cthw_to_chip(make_anchors(chip_size, scales, ratios), chip_size)
    return _best_iou(boxes, anchors) >= iou


def anchor_coverage(
    chip_boxes: Sequence[Tensor],
    chip_size: int,
    scales: Sequence[float] = DEFAULT_SCALES,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    iou: float = 0.5,
) -> float:
    """Fraction of the boxes that at least one anchor matches with IoU ≥ ``iou``.

    A box no anchor reaches can only become a positive through the loss's low-quality matching
    (its best anchor, however poor): such objects are learnt badly. The IoU is the one the loss
    uses (``torchvision.ops.box_iou``; IoU does not change between pixels and [-1, 1] units).
    All chips share one set of anchors, so the chips' boxes are simply pooled.

    Args:
        chip_boxes: per chip, ``Tensor[N, 4]`` xyxy in chip pixels (chips of ``chip_size``).
        chip_size: side of the chips in pixels, as the network sees them.
        scales: the anchors' scales (see :func:`make_anchors`). Default :data:`DEFAULT_SCALES`.
        ratios: the anchors' ratios ``h / w``. Default :data:`DEFAULT_RATIOS`.
        iou: the loss's positive threshold, 0–1. Default 0.5.

    Returns:
        Covered boxes / all boxes, in [0, 1].

    Raises:
        ValueError: ``chip_boxes`` holds no boxes at all.

    Examples:
        >>> chip_boxes = [torch.tensor([[100.0, 100.0, 132.0, 132.0]]), torch.tensor([[10.0, 10.0, 18.0, 18.0]])]
        >>> anchor_coverage(chip_boxes, 256)  # the 8 px box has no anchor of IoU >= 0.5
        0.5
    """
    boxes = _all_boxes(chip_boxes)
    return _covered(boxes, chip_size, scales, ratios, iou).float().mean().item()


class AnchorFit(NamedTuple):
    """Scales and ratios chosen by :func:`suggest_anchors`, and the coverage they reach.

    Attributes:
        scales: anchor scales, descending (pass as ``RetinaNet(scales=...)``).
        ratios: anchor ratios ``h / w``, ascending.
        coverage: fraction of the boxes these anchors cover, in [0, 1].

    Examples:
        See :func:`suggest_anchors`, which returns it.
    """

    scales: tuple[float, ...]
    ratios: tuple[float, ...]
    coverage: float


def _best_iou_by_shape(boxes: Tensor, chip_size: int, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """Each box's highest IoU with the anchors of each single shape, without the all-pairs matrix.

    All anchors of one shape at one level are translates of each other on the level's grid, and
    the overlap of two intervals only shrinks as their centres move apart, so the best of them
    for a box is the one at the cell centre nearest the box's centre (per axis). That leaves one
    candidate per (level, shape) and box: an elementwise IoU, exact, and ~1000× cheaper than
    ``box_iou`` against every anchor (which :func:`anchor_coverage` still uses for the verdict).

    Args:
        boxes: ``Tensor[M, 4]`` xyxy in chip pixels.
        chip_size: side of the chip in pixels.
        scales: the scales to evaluate (see :func:`make_anchors`).
        ratios: the ratios to evaluate.

    Returns:
        ``Tensor[R, S, M]`` best IoU per ratio, scale and box.
    """
    boxes = boxes.double()
    shapes = _cell_shapes(scales, ratios)[:, :, None]  # [K, 2, 1] (h, w) in cells
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    best = boxes.new_zeros(len(shapes), len(boxes))
    for n in level_sizes(chip_size):
        cell = chip_size / n  # cell centres at (i + 0.5) * cell pixels, i = 0 .. n-1
        anchor_x = ((centre_x / cell - 0.5).round().clamp(0, n - 1) + 0.5) * cell
        anchor_y = ((centre_y / cell - 0.5).round().clamp(0, n - 1) + 0.5) * cell
        half_h, half_w = shapes[:, 0] * cell / 2, shapes[:, 1] * cell / 2  # [K, 1]
        overlap_x = torch.minimum(boxes[:, 2], anchor_x + half_w) - torch.maximum(boxes[:, 0], anchor_x - half_w)
        overlap_y = torch.minimum(boxes[:, 3], anchor_y + half_h) - torch.maximum(boxes[:, 1], anchor_y - half_h)
        inter = overlap_x.clamp(min=0) * overlap_y.clamp(min=0)  # [K, M]
        best = torch.maximum(best, inter / (box_area + 4 * half_h * half_w - inter))
    return best.reshape(len(ratios), len(scales), len(boxes)).float()


def _greedy_cover(covered: Tensor, k: int) -> list[int]:
    """Greedy set cover: ``k`` row indices of ``covered`` (``Tensor[candidates, boxes]`` bool).

    Each step takes the candidate covering most still-uncovered boxes; ties go to the one
    covering most boxes overall (more positive anchors per object), then to the earlier row.
    """
    chosen: list[int] = []
    uncovered = torch.ones(covered.shape[1], dtype=torch.bool)
    total = covered.sum(dim=1)
    for _ in range(k):
        score = (covered & uncovered).sum(dim=1) * (covered.shape[1] + 1) + total
        score[chosen] = -1
        best = int(score.argmax())  # argmax returns the first maximum: the preferred candidate
        chosen.append(best)
        uncovered &= ~covered[best]
    return chosen


def _best_rows(covered: Tensor, k: int) -> list[int]:
    """The ``k`` rows of ``covered`` (``Tensor[candidates, boxes]`` bool) whose union covers most boxes.

    Every combination is tried when there are at most :data:`_EXHAUSTIVE_LIMIT` of them (up to
    4 of the 25 grid scales, up to 7 of the 17 grid ratios); beyond, greedy set cover. Ties go to the set
    with most (box, candidate) hits — more positive anchors per object — then to the earliest.
    """
    n_candidates, n_boxes = covered.shape
    if math.comb(n_candidates, k) > _EXHAUSTIVE_LIMIT:
        return _greedy_cover(covered, k)
    combos = torch.combinations(torch.arange(n_candidates), k)  # [C(n, k), k], lexicographic
    hits = covered.sum(dim=1)
    best_score, best = -1, combos[0]
    for chunk in combos.split(max(1, _COMBO_CHUNK_ELEMENTS // (k * n_boxes))):
        n_covered = covered[chunk].any(dim=1).sum(dim=1)
        score = n_covered * (k * n_boxes + 1) + hits[chunk].sum(dim=1)
        i = int(score.argmax())  # the first maximum
        if score[i] > best_score:
            best_score, best = int(score[i]), chunk[i]
    return best.tolist()


# Candidates of suggest_anchors(), in order of preference among ties. Scales: eight per octave
# from 1 down to 1/8 (32 px down to 4 px at P3). Ratios: four per octave from 1/4 to 4, nearest
# to square first.
_SCALE_GRID = tuple(2 ** (-k / 8) for k in range(25))
_RATIO_GRID = tuple(2 ** (k / 4) for k in sorted(range(-8, 9), key=lambda k: (abs(k), k)))
# Most candidate sets tried one by one; beyond, greedy set cover (C(25, 3) = 2300 scale triples).
_EXHAUSTIVE_LIMIT = 20_000
# Booleans held at once while trying sets (≈ 64 MB).
_COMBO_CHUNK_ELEMENTS = 1 << 26
# Rounds of alternating scale/ratio picks; the search settles in two or three on real data.
_MAX_ROUNDS = 4


def _initial_ratios(boxes: Tensor, n_ratios: int) -> list[int]:
    """``n_ratios`` grid ratios nearest to the boxes' aspect ratios (h / w) at quantiles (i + 0.5) / n.

    When several quantiles snap to one grid ratio (boxes of one shape), the set is filled up
    with the grid ratios nearest to any quantile. Boxes without area have no shape and are left out.
    """
    height, width = (boxes[:, 3] - boxes[:, 1]).double(), (boxes[:, 2] - boxes[:, 0]).double()
    has_area = (height > 0) & (width > 0)
    log_ratio = torch.log(height[has_area] / width[has_area]) if has_area.any() else height.new_zeros(1)
    wanted = torch.quantile(log_ratio, (torch.arange(n_ratios, dtype=torch.float64) + 0.5) / n_ratios)
    distance = (torch.log(torch.tensor(_RATIO_GRID, dtype=torch.float64))[None] - wanted[:, None]).abs()
    chosen = list(dict.fromkeys(distance.argmin(dim=1).tolist()))
    for index in distance.amin(dim=0).argsort(stable=True).tolist():
        if len(chosen) == n_ratios:
            break
        if index not in chosen:
            chosen.append(index)
    return chosen


def suggest_anchors(
    chip_boxes: Sequence[Tensor],
    chip_size: int,
    *,
    target: float = 0.95,
    n_scales: int = 3,
    n_ratios: int = 3,
    iou: float = 0.5,
) -> AnchorFit:
    """Chooses anchor scales and ratios under which (nearly) every labelled box has an anchor.

    A box is *covered* when some anchor matches it with IoU ≥ ``iou``, the loss's positive
    threshold (:func:`anchor_coverage`). The search is small and explainable:

    1. Candidates: scales on a grid of eight per octave from 1 down to 1/8 (anchors of 32 px down
       to 4 px at P3 — aerial objects are often far smaller than the default 20–32 px), ratios
       ``h / w`` on a grid of four per octave from 1/4 to 4. For every (ratio, scale) pair we
       find which boxes an anchor of that one shape covers (any level, any cell).
    2. Start from the grid ratios nearest to the boxes' aspect ratios at quantiles
       1/6, 1/2, 5/6 (for three ratios): the shapes the objects have.
    3. Alternate: given the ratios, take the ``n_scales`` scales that together cover most boxes
       (every combination is tried — 2300 for three scales; greedy set cover beyond 20 000
       combinations), then the ``n_ratios`` ratios likewise given the scales; stop when the
       ratios no longer change, and keep the best pair of sets seen. Ties favour sets giving
       objects more positive anchors, then larger scales and squarer ratios.
    4. Measure the rounded result with :func:`anchor_coverage` (``box_iou``, as the loss matches).

    Coverage has a ceiling no anchor shape lifts: P3 anchors sit 8 px apart (on a 256 px chip), so
    a box of about 12 px or less whose centre falls between anchor centres overlaps every anchor by
    less than 0.5 IoU; slivers of objects cut by the chip edge are the usual victims. When
    ``target`` is not reached a :class:`~geolearn.errors.GeolearnWarning` says so; enlarging the
    chips (``resize_to``) is then the cure.

    Args:
        chip_boxes: per chip, ``Tensor[N, 4]`` xyxy in chip pixels (chips of ``chip_size``).
        chip_size: side of the chips in pixels, as the network sees them.
        target: the coverage wanted, in [0, 1]; falling short warns. Default 0.95.
        n_scales: how many scales to return. Default 3.
        n_ratios: how many ratios to return. Default 3.
        iou: the loss's positive threshold, 0–1. Default 0.5.

    Returns:
        ``AnchorFit(scales, ratios, coverage)``: scales descending (like arcgis.learn's defaults),
        rounded to 3 decimals; ratios ascending, rounded to 2; ``coverage`` in [0, 1].

    Raises:
        ValueError: ``chip_boxes`` holds no boxes, or ``n_scales`` / ``n_ratios`` is outside
            1..25 / 1..17 (the grids' sizes).

    Warns:
        GeolearnWarning: the coverage reached is below ``target``.

    Examples:
        >>> chip_boxes = [torch.tensor([[100.0, 100.0, 112.0, 112.0], [40.0, 40.0, 56.0, 64.0], [0.0, 0.0, 16.0, 16.0]])]
        >>> anchor_coverage(chip_boxes, 256)  # the defaults: 20 px and larger
        0.3333333432674408
        >>> suggest_anchors(chip_boxes, 256)
        AnchorFit(scales=(0.21, 0.193, 0.177), ratios=(1.0, 1.19, 1.41), coverage=1.0)
    """
    if not (1 <= n_scales <= len(_SCALE_GRID) and 1 <= n_ratios <= len(_RATIO_GRID)):
        raise ValueError(
            f"n_scales={n_scales} and n_ratios={n_ratios} must lie in 1..{len(_SCALE_GRID)} and "
            f"1..{len(_RATIO_GRID)}; 3 and 3 (9 anchors per cell) is the usual choice."
        )
    boxes = _all_boxes(chip_boxes)
    covered = _best_iou_by_shape(boxes, chip_size, _SCALE_GRID, _RATIO_GRID) >= iou  # [R, S, M]

    ratio_idx = _initial_ratios(boxes, n_ratios)
    best: tuple[int, list[int], list[int]] = (-1, [], [])
    for _ in range(_MAX_ROUNDS):
        scale_idx = _best_rows(covered[ratio_idx].any(dim=0), n_scales)
        n_covered = int(covered[ratio_idx][:, scale_idx].any(dim=(0, 1)).sum())
        if n_covered > best[0]:
            best = (n_covered, scale_idx, ratio_idx)
        new_ratio_idx = _best_rows(covered[:, scale_idx].any(dim=1), n_ratios)
        if sorted(new_ratio_idx) == sorted(ratio_idx):
            break
        ratio_idx = new_ratio_idx

    _, scale_idx, ratio_idx = best
    scales = tuple(sorted((round(_SCALE_GRID[i], 3) for i in scale_idx), reverse=True))
    ratios = tuple(sorted(round(_RATIO_GRID[i], 2) for i in ratio_idx))
    coverage = _covered(boxes, chip_size, scales, ratios, iou).float().mean().item()
    if coverage < target:
        spacing = chip_size / level_sizes(chip_size)[0]
        warnings.warn(
            f"suggest_anchors: the best anchors found (scales={scales}, ratios={ratios}) match only "
            f"{coverage:.1%} of the {len(boxes)} boxes with IoU >= {iou}, short of target={target:.0%}. "
            f"Boxes under about {1.5 * spacing:.0f} px (slivers cut by the chip edge, tiny objects) cannot "
            f"reach that IoU with anchors {spacing:.0f} px apart; enlarge the chips (resize_to=) or accept "
            "the lower coverage.",
            GeolearnWarning,
            stacklevel=2,
        )
    return AnchorFit(scales, ratios, coverage)
