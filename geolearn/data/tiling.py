"""Chip and stride arithmetic: which windows of a raster become chips.

Pure functions of integer sizes, shared by the training-data export and by
sliding-window inference. Nothing here opens a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral

from rasterio.windows import Window

__all__ = ["normalize_size", "axis_offsets", "chip_windows"]


def normalize_size(value: int | Mapping[str, int] | tuple[int, int], name: str) -> tuple[int, int]:
    """Turns an arcgis-style size into ``(x, y)`` pixels.

    Args:
        value: an int (same size in x and y), a mapping ``{'x': int, 'y': int}``
            as arcgis.learn spells ``tile_size`` and ``stride_size``, or an
            ``(x, y)`` tuple (what this function returns, so calling it twice is harmless).
        name: the argument's name, for the error message.

    Returns:
        ``(x, y)``, both positive ints, in pixels.

    Raises:
        ValueError: anything else, or a size below 1.

    Examples:
        >>> normalize_size({"x": 256, "y": 128}, "tile_size")
        (256, 128)
        >>> normalize_size(64, "stride_size")
        (64, 64)
    """
    if isinstance(value, Mapping) and set(value) == {"x", "y"}:
        x, y = value["x"], value["y"]
    elif isinstance(value, tuple) and len(value) == 2:
        x, y = value
    else:
        x = y = value
    for component in (x, y):
        if isinstance(component, bool) or not isinstance(component, Integral) or component < 1:
            raise ValueError(
                f"{name}={value!r}: expected a positive int or {{'x': int, 'y': int}} "
                f"in pixels, e.g. {name}={{'x': 256, 'y': 256}}."
            )
    return int(x), int(y)


def axis_offsets(size: int, tile: int, stride: int) -> list[int]:
    """Offsets of the chips along one axis.

    Regular offsets are ``0, s, 2s, ...`` while ``offset + tile <= size``. When they
    leave pixels uncovered at the far end (``size - tile`` is not a multiple of
    ``s``), one more offset ``size - tile`` puts a full chip flush with the far
    edge, so every pixel is covered (when ``stride <= tile``) and every chip has
    the full tile size. When
    ``size < tile`` the only offset is 0 and the chip overhangs the raster (it is
    read boundless and padded with nodata).

    Args:
        size: raster size along the axis, in pixels (>= 1).
        tile: chip size along the axis, in pixels (>= 1).
        stride: step between chip offsets, in pixels (>= 1).

    Returns:
        The chip offsets in pixels, increasing.

    Raises:
        ValueError: ``size``, ``tile`` or ``stride`` is below 1.

    Examples:
        >>> axis_offsets(10, 4, 3)
        [0, 3, 6]
        >>> axis_offsets(11, 4, 3)
        [0, 3, 6, 7]
        >>> axis_offsets(3, 4, 2)
        [0]
    """
    if size < 1 or tile < 1 or stride < 1:
        raise ValueError(f"size, tile and stride must be >= 1, got {size}, {tile}, {stride}")
    if size <= tile:
        return [0]
    offsets = list(range(0, size - tile + 1, stride))
    if offsets[-1] + tile < size:
        offsets.append(size - tile)
    return offsets


def chip_windows(
    width: int, height: int, tile: tuple[int, int], stride: tuple[int, int]
) -> list[Window]:
    """The chip windows of a ``width`` x ``height`` raster, row-major.

    Column offsets are ``axis_offsets(width, tile_x, stride_x)`` and row offsets
    ``axis_offsets(height, tile_y, stride_y)``: ``0, s, 2s, ...`` while
    ``offset + tile <= size``, plus ``size - tile`` when a remainder is left, so
    the chips cover every pixel (when ``stride <= tile``) and all have the full
    tile size. A raster
    smaller than a tile along an axis gets one offset 0 there; that window
    reaches past the raster and must be read with ``boundless=True``.

    Args:
        width: raster width in pixels.
        height: raster height in pixels.
        tile: chip size ``(x, y)`` in pixels.
        stride: step ``(x, y)`` between chips in pixels.

    Returns:
        ``Window(col_off, row_off, tile_x, tile_y)`` for every chip, top row first,
        left to right within a row.

    Examples:
        >>> [(w.col_off, w.row_off) for w in chip_windows(6, 4, (4, 4), (2, 2))]
        [(0, 0), (2, 0)]
    """
    tile_x, tile_y = tile
    cols = axis_offsets(width, tile_x, stride[0])
    rows = axis_offsets(height, tile_y, stride[1])
    return [Window(col, row, tile_x, tile_y) for row in rows for col in cols]
