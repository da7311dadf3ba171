"""Chip/stride arithmetic: hand-computed offsets, the flush last window, rasters smaller than a tile."""

from __future__ import annotations

import pytest
from rasterio.windows import Window

from geolearn.data.tiling import axis_offsets, chip_windows, normalize_size


@pytest.mark.parametrize(
    ("size", "tile", "stride", "expected"),
    [
        (64, 32, 32, [0, 32]),  # exact fit, no overlap
        (64, 32, 16, [0, 16, 32]),  # exact fit, 50 % overlap
        (60, 32, 16, [0, 16, 28]),  # remainder: last chip flush with the far edge
        (40, 16, 16, [0, 16, 24]),
        (32, 32, 16, [0]),  # raster == tile
        (20, 32, 16, [0]),  # raster < tile: one overhanging chip
        (10, 4, 5, [0, 5, 6]),  # stride > tile leaves gaps, the flush chip still reaches the edge
    ],
)
def test_axis_offsets_hand_computed(size, tile, stride, expected):
    assert axis_offsets(size, tile, stride) == expected


@pytest.mark.parametrize("size", range(1, 80))
def test_axis_offsets_cover_every_pixel_with_full_chips(size):
    tile, stride = 16, 6
    offsets = axis_offsets(size, tile, stride)
    covered = set()
    for off in offsets:
        covered.update(range(off, off + tile))
        assert off >= 0
        assert off + tile <= max(size, tile)  # full chip, inside the raster unless it is smaller
    assert set(range(size)) <= covered
    assert offsets == sorted(set(offsets))


def test_chip_windows_row_major_with_non_square_tiles():
    windows = chip_windows(60, 40, (32, 16), (16, 16))
    cols, rows = [0, 16, 28], [0, 16, 24]
    assert windows == [Window(c, r, 32, 16) for r in rows for c in cols]
    assert windows[1] == Window(16, 0, 32, 16)  # the second window is to the right, not below


def test_chip_windows_smaller_raster_gives_one_full_size_window():
    assert chip_windows(20, 10, (32, 32), (16, 16)) == [Window(0, 0, 32, 32)]
    # only the short axis overhangs
    assert chip_windows(70, 10, (32, 32), (32, 32)) == [
        Window(0, 0, 32, 32), Window(32, 0, 32, 32), Window(38, 0, 32, 32)
    ]


def test_axis_offsets_refuses_zero():
    with pytest.raises(ValueError, match="must be >= 1"):
        axis_offsets(10, 0, 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(256, (256, 256)), ({"x": 256, "y": 128}, (256, 128)), ((64, 32), (64, 32))],
)
def test_normalize_size(value, expected):
    assert normalize_size(value, "tile_size") == expected


@pytest.mark.parametrize("value", [0, -3, 2.5, "256", True, {"x": 256}, {"x": 1, "y": 0}, [1, 2], None])
def test_normalize_size_names_the_argument(value):
    with pytest.raises(ValueError, match=r"stride_size=.*positive int or \{'x': int, 'y': int\}"):
        normalize_size(value, "stride_size")
