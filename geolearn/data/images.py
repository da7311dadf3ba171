"""Chip image files: opening, headers and pixels, for any format rasterio reads.

Chips are read with rasterio (GDAL) whatever their format — GeoTIFF, PNG, JPEG —
because PIL cannot read multispectral or 16-bit TIFFs. Plain PNG/JPEG chips have
no georeferencing, which is expected here, so GDAL's warning about it is silenced.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from geolearn.errors import ImageReadError

__all__ = ["IMAGE_SUFFIXES", "ImageInfo", "open_image", "read_image_info", "read_chip"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageInfo:
    """What the header of a chip says: size in pixels, band count, data type.

    Attributes:
        width: chip width, pixels.
        height: chip height, pixels.
        count: number of bands.
        dtype: numpy name of the first band's data type (``"uint8"``, ``"uint16"``, ...).

    Examples:
        See :func:`read_image_info`, which returns it.
    """

    width: int
    height: int
    count: int
    dtype: str


# What to do about a chip that cannot be opened (open_image's default advice).
_CHIP_FIX = "Replace or delete the chip and its label file."


@contextmanager
def open_image(path: Path, fix: str = _CHIP_FIX) -> Iterator[rasterio.DatasetReader]:
    """Opens a chip for reading, as a context manager.

    GDAL's ``NotGeoreferencedWarning`` (plain PNG/JPEG chips) is silenced while opening.

    Args:
        path: the chip file (any format rasterio reads).
        fix: what the error message tells the user to do; default: replace or delete the chip.

    Yields:
        The open rasterio dataset; it is closed when the ``with`` block ends.

    Raises:
        ImageReadError: the file cannot be opened as an image, or is a truncated PNG.

    Examples:
        >>> import numpy as np, tempfile
        >>> path = f"{tempfile.mkdtemp()}/chip.png"
        >>> with rasterio.open(path, "w", driver="PNG", width=4, height=2, count=3, dtype="uint8") as dst:
        ...     dst.write(np.zeros((3, 2, 4), dtype="uint8"))
        >>> with open_image(path) as src:
        ...     print(src.count, src.width, src.height)
        3 4 2
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as err:
        raise ImageReadError(
            f"{path}: cannot be read as an image ({err}). {fix}"
        ) from None
    with src:
        if src.driver == "PNG":
            _check_png_complete(path, fix)
        yield src


# Every PNG ends with this IEND chunk (length 0, type, CRC). GDAL reads a PNG cut short without
# a word, the missing rows as zeros, so a truncated chip is caught here; TIFF and JPEG readers fail.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _check_png_complete(path: Path, fix: str) -> None:
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - 1024))
        if _PNG_END not in file.read():
            raise ImageReadError(
                f"{path}: the PNG is truncated (it stops after {size} bytes, without its end "
                f"chunk), so part of its pixels is missing. {fix}"
            )


def read_image_info(path: Path) -> ImageInfo:
    """Reads a chip's header (no pixels).

    Args:
        path: the chip file.

    Returns:
        Its size in pixels, band count and data type.

    Raises:
        ImageReadError: the file cannot be opened as an image.

    Examples:
        >>> import numpy as np, tempfile
        >>> path = f"{tempfile.mkdtemp()}/chip.png"
        >>> with rasterio.open(path, "w", driver="PNG", width=4, height=2, count=3, dtype="uint8") as dst:
        ...     dst.write(np.zeros((3, 2, 4), dtype="uint8"))
        >>> read_image_info(path)
        ImageInfo(width=4, height=2, count=3, dtype='uint8')
    """
    with open_image(path) as src:
        return ImageInfo(src.width, src.height, src.count, src.dtypes[0])


def read_chip(path: Path, bands: Sequence[int] | None = None) -> torch.Tensor:
    """Reads a chip's pixels as ``Tensor[C, H, W]``.

    Pixels keep their values; the dtype is the file's, except that ``uint16`` becomes
    ``int32`` and ``uint32`` becomes ``int64`` (torch has no arithmetic on them).

    Args:
        path: the chip file.
        bands: 0-based band indices to read, in that order. Default None: every band.

    Returns:
        ``Tensor[C, H, W]`` raw pixel values, C = ``len(bands)`` or the file's band count.

    Raises:
        ImageReadError: the file cannot be opened, is damaged or truncated, or a band index is out of range.

    Examples:
        >>> import numpy as np, tempfile
        >>> path = f"{tempfile.mkdtemp()}/chip.tif"
        >>> pixels = np.arange(3 * 2 * 4, dtype="uint16").reshape(3, 2, 4)
        >>> with rasterio.open(path, "w", driver="GTiff", width=4, height=2, count=3, dtype="uint16") as dst:
        ...     dst.write(pixels)
        >>> chip = read_chip(path, bands=[2, 0])
        >>> chip.shape, chip.dtype, chip[0, 0].tolist()
        (torch.Size([2, 2, 4]), torch.int32, [16, 17, 18, 19])
    """
    with open_image(path) as src:
        try:
            pixels = src.read([b + 1 for b in bands] if bands is not None else None)
        except IndexError as err:
            raise ImageReadError(f"{path}: cannot read bands {bands} ({err}).") from None
        except RasterioIOError as err:
            raise ImageReadError(
                f"{path}: its pixels cannot be read; the file is damaged or truncated ({err}). "
                "Replace or delete the chip and its label file."
            ) from None
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize > 1:
        pixels = pixels.astype("int32" if pixels.dtype.itemsize == 2 else "int64")  # torch lacks uint16/32 ops
    return torch.from_numpy(pixels)
