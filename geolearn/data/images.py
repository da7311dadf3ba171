"""Chip image files: opening, headers and pixels, for any format rasterio reads.

Chips are read with rasterio (GDAL) whatever their format — GeoTIFF, PNG, JPEG —
because PIL cannot read multispectral or 16-bit TIFFs. Plain PNG/JPEG chips have
no georeferencing, which is expected here, so GDAL's warning about it is silenced.
"""

from __future__ import annotations

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
    """What the header of a chip says: size in pixels, band count, data type."""

    width: int
    height: int
    count: int
    dtype: str


@contextmanager
def open_image(path: Path) -> Iterator[rasterio.DatasetReader]:
    """Opens a chip for reading.

    Raises:
        ImageReadError: the file cannot be opened as an image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as err:
        raise ImageReadError(
            f"{path}: cannot be read as an image ({err}). Replace or delete the chip and its label file."
        ) from None
    with src:
        yield src


def read_image_info(path: Path) -> ImageInfo:
    """Reads a chip's header (no pixels)."""
    with open_image(path) as src:
        return ImageInfo(src.width, src.height, src.count, src.dtypes[0])


def read_chip(path: Path, bands: Sequence[int] | None = None) -> torch.Tensor:
    """Reads a chip's pixels as ``Tensor[C, H, W]`` in their own dtype (0-based ``bands``)."""
    with open_image(path) as src:
        try:
            pixels = src.read([b + 1 for b in bands] if bands is not None else None)
        except (RasterioIOError, IndexError) as err:
            raise ImageReadError(f"{path}: cannot read bands {bands} ({err}).") from None
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize > 1:
        pixels = pixels.astype("int32" if pixels.dtype.itemsize == 2 else "int64")  # torch lacks uint16/32 ops
    return torch.from_numpy(pixels)
