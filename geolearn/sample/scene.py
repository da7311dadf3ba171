"""make_scene: plans the sample scene, renders it block by block and writes the GeoTIFF and labels."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from affine import Affine  # rasterio's affine type; rasterio itself loads only when writing
from shapely.geometry import Polygon

from geolearn.atomic import atomic_write
from geolearn.sample import palette, render, shapes
from geolearn.sample.planner import Planner

__all__ = ["SceneFiles", "make_scene", "CLASSES"]

logger = logging.getLogger(__name__)

#: Class value -> class name of the labelled objects.
CLASSES: dict[int, str] = {1: "pool", 2: "tree"}

_POOL = 1
_TREE = 2
_BLOCK = 1024  # render/write window (a multiple of the 256 px TIFF tiles)


@dataclass(frozen=True)
class SceneFiles:
    """Paths of the files written by :func:`make_scene`.

    Attributes:
        raster: the GeoTIFF.
        labels: GeoPackage of object polygons, in the raster's CRS.
        labels_4326: the same polygons in EPSG:4326 (longitude, latitude).

    Examples:
        See :func:`make_scene`, which returns it.
    """

    raster: Path
    labels: Path
    labels_4326: Path


def _to_dtype(block: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.clip(np.rint(block), 1, 255).astype(np.uint8)
    refl = (np.clip(block, 0, None) / 255.0) ** 2 * 0.85
    return np.clip(np.rint(refl * 10000), 1, 10000).astype(np.uint16)


def make_scene(
    out_dir: str | Path,
    size: int = 2560,
    *,
    seed: int = 0,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.3,
    origin: tuple[float, float] = (500000.0, 4650000.0),
    bands: int = 3,
    dtype: str = "uint8",
    nodata_margin: bool = True,
    name: str = "scene",
) -> SceneFiles:
    """Writes a synthetic suburban aerial scene and its pool and tree labels.

    The raster is a north-up GeoTIFF of ``size`` x ``size`` pixels, tiled
    256 x 256, DEFLATE-compressed with horizontal differencing, nodata 0. The
    content is laid out in pixels for a ~0.3 m ground resolution (pools 12-60
    px long, tree crowns 8-45 px across) whatever ``pixel_size`` says;
    ``pixel_size``, ``origin`` and ``crs`` only georeference it.

    Existing files of the same names are replaced.

    Args:
        out_dir: folder to write into (created if missing).
        size: width and height in pixels, at least 64. Default 2560 (768 m at 0.3 m).
        seed: random seed; the same arguments give identical files' contents. Default 0.
        crs: a projected CRS (metres) for the raster and the labels. Default ``"EPSG:32633"``
            (UTM zone 33N).
        pixel_size: ground size of a pixel in CRS units (metres), > 0. Default 0.3.
        origin: map coordinates (x, y) of the raster's top-left corner, CRS units.
            Default ``(500000.0, 4650000.0)``.
        bands: 3 (red, green, blue; the default) or 4 (red, green, blue, near-infrared).
        dtype: ``"uint8"`` (natural colour 1..255; the default) or ``"uint16"``
            (reflectance x 10000, like a satellite product).
        nodata_margin: surround the valid area with an irregular nodata (0)
            margin, like the edge of an orthophoto mosaic. Valid pixels are
            never 0 in any band. Default True.
        name: stem of the file names. Default ``"scene"``.

    Returns:
        The paths of ``<name>.tif``, ``<name>_labels.gpkg`` and
        ``<name>_labels_4326.gpkg``. The labels have columns ``Classvalue``
        (1 pool, 2 tree), ``Classname`` and the polygon ``geometry``.

    Raises:
        ValueError: a size that is not an integer >= 64, a band count other than 3 or 4, a
            dtype other than ``"uint8"``/``"uint16"``, or a ``pixel_size`` <= 0.

    Examples:
        >>> import tempfile
        >>> import geopandas as gpd, rasterio
        >>> files = make_scene(tempfile.mkdtemp(), size=256, seed=1, bands=4, dtype="uint16")
        >>> with rasterio.open(files.raster) as src:
        ...     print(src.width, src.height, src.count, src.dtypes[0], src.crs, src.res)
        256 256 4 uint16 EPSG:32633 (0.3, 0.3)
        >>> sorted(gpd.read_file(files.labels)["Classname"].unique())
        ['pool', 'tree']
    """
    _check_arguments(size, bands, dtype, pixel_size)
    size = int(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = SceneFiles(out / f"{name}.tif", out / f"{name}_labels.gpkg", out / f"{name}_labels_4326.gpkg")

    t0 = time.perf_counter()
    planner = Planner(size, seed, nodata_margin)
    planner.plan()
    logger.info("planned %d drawing operations, %d pools, %d trees in %.1f s",
                len(planner.ops), len(planner.pools), len(planner.trees), time.perf_counter() - t0)
    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])  # north-up
    t1 = time.perf_counter()
    with atomic_write(files.raster) as partial:
        _render(planner, partial, _profile(size, bands, dtype, crs, transform), seed)
    logger.info("wrote %s (%d x %d, %d bands %s) in %.1f s", files.raster, size, size, bands, dtype,
                time.perf_counter() - t1)
    labels = _labels(planner, transform, crs)
    for path, frame in ((files.labels, labels), (files.labels_4326, labels.to_crs("EPSG:4326"))):
        with atomic_write(path) as partial:
            frame.to_file(partial, driver="GPKG", engine="pyogrio", layer=path.stem, geometry_type="Polygon")
    logger.info("wrote %d labels (%d pools, %d trees) in %.1f s total", len(labels), len(planner.pools),
                len(planner.trees), time.perf_counter() - t0)
    return files


def _check_arguments(size: int, bands: int, dtype: str, pixel_size: float) -> None:
    if int(size) != size or size < 64:
        raise ValueError(f"size must be an integer >= 64, got {size!r}")
    if bands not in (3, 4):
        raise ValueError(f"bands must be 3 or 4, got {bands!r}")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")
    if pixel_size <= 0:
        raise ValueError(f"pixel_size must be positive, got {pixel_size!r}")


def _profile(size: int, bands: int, dtype: str, crs: str, transform: Affine) -> dict:
    """The GeoTIFF's creation options: tiled 256 x 256, DEFLATE with horizontal differencing, nodata 0."""
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 9,
        "interleave": "pixel",
        "bigtiff": "if_safer",
    }
    if bands == 3 and dtype == "uint8":
        profile["photometric"] = "RGB"
    return profile


def _render(planner: Planner, path: Path, profile: dict, seed: int) -> None:
    """Draws the planned scene block by block into a new GeoTIFF at ``path``."""
    import rasterio
    from rasterio.windows import Window

    size, bands, dtype = profile["width"], profile["count"], profile["dtype"]
    ops = sorted(planner.ops, key=lambda o: o.layer)  # stable: keeps the planning order within a layer
    bboxes = np.array([o.bbox for o in ops], dtype=np.int64).reshape(-1, 4)
    layers = np.array([o.layer for o in ops], dtype=np.int64)
    n_before_shadow = int(np.searchsorted(layers, palette.L_SHADOW, side="right"))
    ground = render.Ground(seed)
    fp_xy = np.asarray(planner.footprint.exterior.coords)[:-1]
    shapely.prepare(planner.footprint)
    # a small block cache: dirty tiles are compressed and flushed as we go
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path, "w", **profile) as dst:
        for i, desc in enumerate(("red", "green", "blue", "nir")[:bands], start=1):
            dst.set_band_description(i, desc)
        for r0 in range(0, size, _BLOCK):
            for c0 in range(0, size, _BLOCK):
                r1, c1 = min(r0 + _BLOCK, size), min(c0 + _BLOCK, size)
                blk = render.Block(r0, r1, c0, c1)
                ground.draw(blk)
                hit = (bboxes[:, 0] < r1) & (bboxes[:, 1] > r0) & (bboxes[:, 2] < c1) & (bboxes[:, 3] > c0)
                sel = np.nonzero(hit)[0]
                shadow_done = False
                for i in sel:
                    if not shadow_done and i >= n_before_shadow:
                        blk.canvas[:, blk.shadow] *= palette.SHADOW_FACTOR[:, None]
                        shadow_done = True
                    ops[i].render(blk)
                if not shadow_done:
                    blk.canvas[:, blk.shadow] *= palette.SHADOW_FACTOR[:, None]
                data = _to_dtype(blk.canvas[:bands], dtype)
                cell = shapely.box(c0, r0, c1, r1)
                if not planner.footprint.contains(cell):
                    valid = shapes.poly_mask(fp_xy, r0, r1, c0, c1)
                    data[:, ~valid] = 0
                dst.write(data, window=Window(c0, r0, c1 - c0, r1 - r0))


def _labels(planner: Planner, transform: Affine, crs: str):
    """The planned pools and tree crowns as a GeoDataFrame in ``crs``: pixel (col, row) -> map through the affine."""
    import geopandas as gpd
    import pandas as pd

    coef = [transform.a, transform.b, transform.d, transform.e, transform.xoff, transform.yoff]
    rings = [ring for ring, _ in planner.pools] + [c.xy for c in planner.trees]
    values = [_POOL] * len(planner.pools) + [_TREE] * len(planner.trees)
    geoms = [shapely.affinity.affine_transform(Polygon(r), coef) for r in rings]
    return gpd.GeoDataFrame(
        {
            "Classvalue": np.array(values, dtype=np.int32),
            "Classname": pd.Series([CLASSES[v] for v in values], dtype=str),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
        crs=crs,
    )
