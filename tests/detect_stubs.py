"""Test helpers for detection over sets of rasters: generated GeoTIFF tiles and a stub detector.

Importable by Dask worker processes too (tests/ is on their sys.path), so the stub can be
shipped to a LocalCluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from scipy import ndimage

from geolearn.data.georef import detections_frame

CRS = "EPSG:32633"
PIXEL = 0.5  # metres
ORIGIN = (500000.0, 4650000.0)  # top-left of the tile mosaic
TILE = 64  # pixels per tile side

# Objects in mosaic pixels (xyxy edges) over a 2 x 2 grid of 64 px tiles, with class by colour.
# "seam" is cut by the vertical seam x = 64; "corner" by the corner (64, 64) of all four tiles.
OBJECTS = {
    "alone": ((8, 8, 20, 18), "pool"),
    "seam": ((56, 20, 72, 30), "tree"),
    "corner": ((58, 56, 70, 72), "pool"),
    "south": ((100, 100, 110, 120), "tree"),
}
# Pixel value per class: pools bright in all bands, trees bright in band 1 only.
COLOURS = {"pool": (250, 250, 250), "tree": (30, 250, 30)}


def mosaic_pixels(size: int = 2 * TILE, objects=OBJECTS) -> np.ndarray:
    """A dark ``[3, size, size]`` uint8 mosaic with each object painted in its class colour."""
    pixels = np.full((3, size, size), 20, dtype=np.uint8)
    for (x1, y1, x2, y2), name in objects.values():
        pixels[:, y1:y2, x1:x2] = np.asarray(COLOURS[name], dtype=np.uint8)[:, None, None]
    return pixels


def write_tiles(folder: Path, grid: tuple[int, int] = (2, 2), objects=OBJECTS) -> list[Path]:
    """Cuts the mosaic into ``rows x cols`` adjacent GeoTIFF tiles of TILE px; row-major paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = grid
    pixels = mosaic_pixels(max(rows, cols) * TILE, objects)
    paths = []
    for r in range(rows):
        for c in range(cols):
            path = folder / f"tile_{r}_{c}.tif"
            transform = from_origin(ORIGIN[0] + c * TILE * PIXEL, ORIGIN[1] - r * TILE * PIXEL, PIXEL, PIXEL)
            block = pixels[:, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
            with rasterio.open(path, "w", driver="GTiff", width=TILE, height=TILE, count=3, dtype="uint8",
                               crs=CRS, transform=transform) as dst:
                dst.write(block)
            paths.append(path)
    return paths


def map_box(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    """Mosaic pixel edges → (minx, miny, maxx, maxy) map bounds."""
    return (ORIGIN[0] + x1 * PIXEL, ORIGIN[1] - y2 * PIXEL, ORIGIN[0] + x2 * PIXEL, ORIGIN[1] - y1 * PIXEL)


class BrightSquares:
    """A stub detector with ``RetinaNet.detect_objects``'s signature: each bright blob is a box.

    Pixels brighter than 200 in band 1 form objects (8-connected); a blob bright in band 0
    too is a ``pool``, else a ``tree``; confidence 90. It reads whole (tiny) rasters.
    """

    classes = ("background", "pool", "tree")

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def detect_objects(self, raster, out_path=None, *, threshold=0.5, nms_overlap=0.1, padding=None, batch_size=8,
                       exclude_pad_detections=True, merge="nms", class_agnostic=False, bands=None, progress=True,
                       overwrite=False, test_time_augmentation=False):
        self.calls.append(Path(raster))
        with rasterio.open(raster) as src:
            pixels, transform, crs = src.read(), src.transform, src.crs
        blobs, _ = ndimage.label(pixels[1] > 200, structure=np.ones((3, 3)))
        boxes, labels = [], []
        for index, found in enumerate(ndimage.find_objects(blobs), start=1):
            rows, cols = found
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
            labels.append(1 if pixels[0][blobs == index].mean() > 200 else 2)
        raster_boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        scores = torch.full((len(boxes),), 0.9)
        frame = detections_frame(raster_boxes, torch.tensor(labels, dtype=torch.int64), scores, self.classes,
                                 transform, crs)
        if out_path is not None:
            from geolearn.data.georef import write_features

            write_features(frame, out_path, overwrite=overwrite)
        return frame


class FixedDetections:
    """A stub detector returning a prepared GeoDataFrame per raster file name."""

    def __init__(self, frames: dict) -> None:
        self.frames = frames

    def detect_objects(self, raster, out_path=None, **kwargs):
        return self.frames[Path(raster).name].copy()


# An untrained RetinaNet's classification head starts at the focal-loss prior (scores ~0.01):
# at this threshold it "detects" a deterministic set of boxes, enough to compare two runs.
UNTRAINED_THRESHOLD = 0.011


def save_untrained_model(data, folder: Path) -> Path:
    """An untrained resnet18 RetinaNet for ``data`` (64 px chips) saved as a package; its folder."""
    from geolearn import RetinaNet

    model = RetinaNet(data, backbone="resnet18", pretrained=False)
    return model.save(folder, compute_metrics=False)
