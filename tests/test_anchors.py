"""Anchors of geolearn.models.anchors: arcgis.learn's exactly, their coverage, and fitting them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from geolearn.errors import GeolearnWarning
from geolearn.models.anchors import (
    DEFAULT_RATIOS,
    DEFAULT_SCALES,
    _best_iou_by_shape,
    anchor_coverage,
    level_sizes,
    make_anchors,
    suggest_anchors,
)
from geolearn.models.boxes import cthw_to_chip

REF = Path(__file__).parent / "data" / "arcgis_ref"


def random_boxes(
    n: int, low: float, high: float, *, spread: float = 1.4, chip: int = 256, seed: int = 0
) -> torch.Tensor:
    """``n`` xyxy pixel boxes: sides (geometric mean) uniform in [low, high], log aspect uniform
    in ±spread/2, placed uniformly inside the chip."""
    g = torch.Generator().manual_seed(seed)
    size = low + (high - low) * torch.rand(n, generator=g)
    ratio = torch.exp((torch.rand(n, generator=g) - 0.5) * spread)
    w, h = size / ratio.sqrt(), size * ratio.sqrt()
    cx = w / 2 + (chip - w) * torch.rand(n, generator=g)
    cy = h / 2 + (chip - h) * torch.rand(n, generator=g)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


@pytest.mark.parametrize(
    ("chip_size", "sizes"),
    [(256, [32, 16, 8, 4, 2]), (224, [28, 14, 7, 4, 2]), (100, [13, 7, 4, 2, 1]), (64, [8, 4, 2, 1, 1])],
)
def test_level_sizes_halve_with_ceiling(chip_size, sizes):
    assert level_sizes(chip_size) == sizes


@pytest.mark.parametrize("chip_size", [256, 224])
def test_anchors_equal_arcgis(chip_size):
    expected = torch.load(REF / f"anchors_{chip_size}.pt")
    anchors = make_anchors(chip_size)
    assert anchors.dtype == torch.float32
    assert anchors.shape == expected.shape
    torch.testing.assert_close(anchors, expected, atol=1e-6, rtol=0)


def test_first_cell_anchors_hand_computed():
    anchors = make_anchors(256)
    centre = -1 + 1 / 32
    base = 4 * 2 / 32  # four P3 cells, 32 px
    expected = [
        [centre, centre, base * s * math.sqrt(r), base * s / math.sqrt(r)]
        for r in DEFAULT_RATIOS
        for s in DEFAULT_SCALES
    ]
    torch.testing.assert_close(anchors[:9], torch.tensor(expected))
    # the next cell is one column to the right (row-major)
    torch.testing.assert_close(anchors[9, :2], torch.tensor([centre, centre + 2 / 32]))
    # the last level is 2 × 2 with centres at ±0.5
    torch.testing.assert_close(anchors[-1, :2], torch.tensor([0.5, 0.5]))


def test_anchor_count_and_order_follow_scales_and_ratios():
    anchors = make_anchors(64, scales=(1.0, 0.5), ratios=(1.0, 4.0, 0.25))
    assert len(anchors) == 6 * sum(n * n for n in level_sizes(64))
    # ratio-major, then scale: (r=1, s=1), (r=1, s=0.5), (r=4, s=1), ...
    hw = anchors[:6, 2:] / (4 * 2 / 8)
    torch.testing.assert_close(hw, torch.tensor([[1, 1], [0.5, 0.5], [2, 0.5], [1, 0.25], [0.5, 2], [0.25, 1]]))


def test_box_equal_to_an_anchor_is_covered():
    anchor = cthw_to_chip(make_anchors(256)[100], 256)
    assert anchor_coverage([anchor[None]], 256) == 1.0


def test_small_box_is_not_covered_by_default_anchors():
    # an 8 px box centred on a P3 anchor: the smallest default anchor (20 px) reaches 64/400 IoU
    small = torch.tensor([[96.0, 96.0, 104.0, 104.0]])
    assert anchor_coverage([small], 256) == 0.0
    assert anchor_coverage([small], 256, scales=(0.25,), ratios=(1.0,)) == 1.0  # an 8 px anchor on it


def test_coverage_pools_chips_and_skips_empty_ones():
    anchor = cthw_to_chip(make_anchors(256)[0], 256)
    small = torch.tensor([[100.0, 100.0, 108.0, 108.0]])
    assert anchor_coverage([anchor[None], torch.zeros(0, 4), small], 256) == 0.5


def test_coverage_of_no_boxes_is_an_error():
    with pytest.raises(ValueError, match="no boxes"):
        anchor_coverage([torch.zeros(0, 4)], 256)


@pytest.mark.parametrize("chip_size", [256, 224])
def test_per_shape_shortcut_equals_box_iou_against_all_anchors(chip_size):
    from torchvision.ops import box_iou

    boxes = random_boxes(300, 4, 120, spread=2.0, chip=chip_size)
    fast = _best_iou_by_shape(boxes, chip_size, DEFAULT_SCALES, DEFAULT_RATIOS).amax(dim=(0, 1))
    slow = box_iou(boxes, cthw_to_chip(make_anchors(chip_size), chip_size)).amax(dim=1)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_suggested_anchors_cover_small_objects():
    boxes = random_boxes(1500, 12, 32)
    default = anchor_coverage([boxes], 256)
    fit = suggest_anchors([boxes], 256)
    assert default < 0.9
    assert fit.coverage >= 0.95
    assert fit.coverage == pytest.approx(anchor_coverage([boxes], 256, fit.scales, fit.ratios))
    assert len(fit.scales) == 3 and len(fit.ratios) == 3
    assert list(fit.scales) == sorted(fit.scales, reverse=True)
    assert list(fit.ratios) == sorted(fit.ratios)
    assert min(fit.scales) < 2 ** (-2 / 3)  # smaller than any default anchor


def test_suggest_anchors_warns_when_tiny_boxes_keep_it_short_of_target():
    # Boxes of 8-12 px between anchor centres cannot reach IoU 0.5 with any anchor shape.
    boxes = random_boxes(1500, 8, 45, seed=1)
    default = anchor_coverage([boxes], 256)
    with pytest.warns(GeolearnWarning, match="short of target"):
        fit = suggest_anchors([boxes], 256)
    assert fit.coverage > default + 0.07


def test_suggest_anchors_follows_elongated_objects():
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(400, generator=g) * 150, torch.rand(400, generator=g) * 200
    boxes = torch.stack([x, y, x + 90, y + 30], dim=1)  # wide boxes, h / w = 1/3
    fit = suggest_anchors([boxes], 256, n_scales=2, n_ratios=2)
    assert min(fit.ratios) <= 0.42
    assert fit.coverage >= 0.95
    assert len(fit.scales) == 2 and len(fit.ratios) == 2


def test_suggest_anchors_rejects_empty_sets():
    with pytest.raises(ValueError, match="n_scales=0 and n_ratios=3 must lie in"):
        suggest_anchors([torch.tensor([[0.0, 0.0, 10.0, 10.0]])], 256, n_scales=0)
    with pytest.raises(ValueError, match="no boxes"):
        suggest_anchors([], 256)


def test_boxes_without_area_count_as_uncovered():
    boxes = torch.tensor([[10.0, 10.0, 42.0, 42.0], [50.0, 50.0, 50.0, 60.0]])
    fit = suggest_anchors([boxes], 256, target=0.0)
    assert fit.coverage == 0.5
    assert len(fit.ratios) == 3
