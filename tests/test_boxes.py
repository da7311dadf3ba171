"""Box formats and the delta coder of geolearn.models.boxes."""

from __future__ import annotations

import math

import pytest
import torch

from geolearn.data.boxes import pixel_to_unit, unit_to_pixel
from geolearn.models.boxes import (
    cthw_to_chip,
    cthw_to_xyxy,
    decode,
    encode,
    xyxy_to_cthw,
)


def random_cthw(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 2, generator=g) * 2 - 1
    sizes = torch.rand(n, 2, generator=g) * 0.9 + 0.05
    return torch.cat([centres, sizes], dim=1)


def test_cthw_to_xyxy_hand_computed():
    box = torch.tensor([[0.5, -0.5, 0.2, 0.4]])  # cy, cx, h, w
    torch.testing.assert_close(cthw_to_xyxy(box), torch.tensor([[-0.7, 0.4, -0.3, 0.6]]))


def test_xyxy_cthw_round_trip_and_leading_dims():
    boxes = random_cthw(12).reshape(3, 4, 4)
    torch.testing.assert_close(xyxy_to_cthw(cthw_to_xyxy(boxes)), boxes)
    assert cthw_to_xyxy(boxes).shape == (3, 4, 4)


def test_unit_and_chip_pixels_map_edges_to_edges():
    unit = torch.tensor([[-1.0, -1.0, 1.0, 0.0]])
    torch.testing.assert_close(unit_to_pixel(unit, 256, 256), torch.tensor([[0.0, 0.0, 256.0, 128.0]]))
    torch.testing.assert_close(pixel_to_unit(unit_to_pixel(unit, 224, 224), 224, 224), unit)


def test_cthw_to_chip():
    # the centre anchor of a 2 × 2 grid's top-left cell, 1 unit = half the chip
    box = torch.tensor([[-0.5, -0.5, 1.0, 1.0]])
    torch.testing.assert_close(cthw_to_chip(box, 64), torch.tensor([[0.0, 0.0, 32.0, 32.0]]))


def test_encode_hand_computed():
    anchor = torch.tensor([0.0, 0.0, 0.5, 0.5])
    box = torch.tensor([0.1, -0.05, 1.0, 0.25])
    expected = torch.tensor([0.1 / 0.5 / 0.1, -0.05 / 0.5 / 0.1, math.log(2) / 0.2, math.log(0.5) / 0.2])
    torch.testing.assert_close(encode(box, anchor), expected)


def test_box_equal_to_anchor_encodes_to_zero():
    anchors = random_cthw(5)
    assert torch.equal(encode(anchors, anchors), torch.zeros(5, 4))
    torch.testing.assert_close(decode(torch.zeros(5, 4), anchors), anchors)


def test_decode_inverts_encode():
    boxes, anchors = random_cthw(100, seed=1), random_cthw(100, seed=2)
    torch.testing.assert_close(decode(encode(boxes, anchors), anchors), boxes)
    deltas = torch.randn(100, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(encode(decode(deltas, anchors), anchors), deltas)


def test_decode_sizes_come_from_the_size_channels():
    # arcgis.learn's decode takes sizes from dy, dx; ours from dh, dw.
    anchor = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    box = decode(torch.tensor([[3.0, 0.0, 0.0, 5.0]]), anchor)
    torch.testing.assert_close(box, torch.tensor([[0.15, 0.0, 0.5, 0.5 * math.e]]))


def test_decode_clips_wild_size_deltas():
    box = decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[0.0, 0.0, 0.1, 0.1]]))
    assert torch.isfinite(box).all()
    assert box[0, 2] == pytest.approx(0.1 * 1000 / 16, rel=1e-5)
