"""Georeferencing detections: raster-pixel boxes → map polygons → a GIS layer.

A box in raster pixels is a rectangle whose sides lie on pixel *edges*: ``x1 = 10`` is the left
edge of column 10, ``x2 = 20`` the right edge of column 19. Its four corners go through the
raster's affine transform (``X = a·col + b·row + c``, ``Y = d·col + e·row + f``) as they are —
no half-pixel shift (that would be for pixel *centres*), no rounding — so a box becomes the
exact quadrilateral it covers on the ground, a rotated one under a rotated affine.
:func:`polygons_to_boxes` is the inverse, which the pixel → map → pixel round-trip test pins.

:func:`detections_frame` builds the layer ArcGIS's "Detect Objects Using Deep Learning" writes
(polygons with ``Class`` and ``Confidence`` = score × 100) and :func:`write_features` writes it
as GeoPackage, GeoJSON, Shapefile or GeoParquet, with an explicit driver and without ever
replacing a file that was not given up for it. :func:`esri_spatial_reference` is how every
file geolearn writes for ArcGIS (the export's and the model's EMD) names a CRS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from torch import Tensor

from geolearn.atomic import atomic_write
from geolearn.errors import OutputExistsError

__all__ = [
    "DRIVERS",
    "boxes_to_polygons",
    "polygons_to_boxes",
    "detections_frame",
    "esri_spatial_reference",
    "pixel_footprint",
    "resolve_output",
    "write_features",
]

logger = logging.getLogger(__name__)

# Output suffix → driver. "GeoParquet" is not an OGR driver here: it is written with
# GeoDataFrame.to_parquet (pyarrow), which every GDAL build does not have a driver for.
DRIVERS = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".shp": "ESRI Shapefile",
    ".parquet": "GeoParquet",
}
_PARQUET = "GeoParquet"
# The files an ESRI Shapefile consists of besides the .shp: replaced together with it.
_SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp.xml")


def esri_spatial_reference(crs: CRS | str | None) -> dict[str, Any] | None:
    """Esri JSON's spatial reference of a CRS (a rasterio ``CRS`` or WKT), or None without one.

    ``{"wkid": EPSG, "latestWkid": EPSG}`` when the CRS has an EPSG code, else ``{"wkt": WKT}``
    (a WKT that cannot be parsed is kept as it is: ArcGIS reports what it cannot read).

    Examples:
        >>> esri_spatial_reference(CRS.from_epsg(32633))
        {'wkid': 32633, 'latestWkid': 32633}
        >>> esri_spatial_reference(None) is None
        True
    """
    if not crs:
        return None
    try:
        parsed = crs if isinstance(crs, CRS) else CRS.from_wkt(crs)
        epsg = parsed.to_epsg()
    except CRSError:
        return {"wkt": crs}
    return {"wkid": epsg, "latestWkid": epsg} if epsg is not None else {"wkt": parsed.to_wkt()}


def _affine_coefficients(transform: Affine | Sequence[float]) -> tuple[float, float, float, float, float, float]:
    """``(a, b, c, d, e, f)`` of a rasterio/affine ``Affine`` (or its first six numbers)."""
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    return a, b, c, d, e, f


def boxes_to_polygons(raster_boxes: Tensor | np.ndarray, transform: Affine) -> np.ndarray:
    """Raster-pixel boxes → map polygons, through the affine at the box edges.

    The corners ``(x1, y1), (x2, y1), (x2, y2), (x1, y2)`` (column, row) map to
    ``X = a·col + b·row + c``, ``Y = d·col + e·row + f`` in float64: exact for north-up,
    non-square and rotated pixels alike. Rings run counter-clockwise on the map (the OGC and
    GeoJSON convention) whatever the sign of the affine's determinant.

    Args:
        raster_boxes: ``Tensor[N, 4]`` (or array) xyxy in raster pixels, edges (not centres).
        transform: the raster's affine, raster pixels → map coordinates (``src.transform``).

    Returns:
        ``ndarray[N]`` of ``shapely.Polygon`` in the raster's CRS units.

    Raises:
        ValueError: ``raster_boxes`` is not ``[N, 4]``.

    Examples:
        >>> from affine import Affine
        >>> polygon = boxes_to_polygons(torch.tensor([[10., 20., 30., 40.]]), Affine(2, 0, 500000, 0, -2, 4000000))[0]
        >>> polygon.bounds
        (500020.0, 3999920.0, 500060.0, 3999960.0)
    """
    boxes = raster_boxes.detach().cpu().double().numpy() if isinstance(raster_boxes, Tensor) else np.asarray(
        raster_boxes, dtype=np.float64
    )
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"raster_boxes of shape {boxes.shape}: expected [N, 4] xyxy boxes in raster pixels.")
    a, b, c, d, e, f = _affine_coefficients(transform)
    x1, y1, x2, y2 = boxes.T
    cols = np.stack([x1, x2, x2, x1], axis=1)  # [N, 4] corners: top-left, top-right, bottom-right, bottom-left
    rows = np.stack([y1, y1, y2, y2], axis=1)
    if a * e - b * d < 0:  # the usual north-up affine flips orientation: reverse to stay counter-clockwise
        cols, rows = cols[:, ::-1], rows[:, ::-1]
    map_x = a * cols + b * rows + c
    map_y = d * cols + e * rows + f
    return shapely.polygons(np.stack([map_x, map_y], axis=2))


def pixel_footprint(transform: Affine, width: float, height: float) -> shapely.Polygon:
    """The map polygon a ``width`` × ``height`` pixel grid covers: a raster's or a window's footprint.

    :func:`boxes_to_polygons` of the one box ``(0, 0, width, height)``: exact for rotated pixels.

    Examples:
        >>> from affine import Affine
        >>> pixel_footprint(Affine(0.5, 0, 500000, 0, -0.5, 4650005), 20, 10).bounds
        (500000.0, 4650000.0, 500010.0, 4650005.0)
    """
    return boxes_to_polygons(np.array([[0.0, 0.0, width, height]]), transform)[0]


def polygons_to_boxes(map_geoms: Sequence[Any] | np.ndarray, transform: Affine) -> Tensor:
    """Map geometries → their bounding boxes in raster pixels: the inverse of :func:`boxes_to_polygons`.

    Every vertex goes through the inverse affine; the box is the vertices' extent in pixels (for
    a polygon from :func:`boxes_to_polygons` its four corners, whatever the rotation).

    Args:
        map_geoms: shapely geometries in the raster's CRS.
        transform: the raster's affine, raster pixels → map coordinates.

    Returns:
        ``Tensor[N, 4]`` float64 xyxy in raster pixels (float64 so that a round trip is exact
        to far below a pixel, even at map coordinates in the millions).

    Examples:
        >>> from affine import Affine
        >>> transform = Affine(2, 0, 500000, 0, -2, 4000000)
        >>> polygons_to_boxes(boxes_to_polygons(torch.tensor([[10., 20., 30., 40.]]), transform), transform)
        tensor([[10., 20., 30., 40.]], dtype=torch.float64)
    """
    geoms = np.asarray(map_geoms, dtype=object)
    if len(geoms) == 0:
        return torch.zeros(0, 4, dtype=torch.float64)
    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    inverse = ~Affine(*_affine_coefficients(transform))
    a, b, c, d, e, f = _affine_coefficients(inverse)
    cols = a * coords[:, 0] + b * coords[:, 1] + c
    rows = d * coords[:, 0] + e * coords[:, 1] + f
    n = len(geoms)
    boxes = np.empty((n, 4))
    boxes[:, :2] = np.inf
    boxes[:, 2:] = -np.inf
    np.minimum.at(boxes[:, 0], owner, cols)
    np.minimum.at(boxes[:, 1], owner, rows)
    np.maximum.at(boxes[:, 2], owner, cols)
    np.maximum.at(boxes[:, 3], owner, rows)
    return torch.from_numpy(boxes)


def detections_frame(
    raster_boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: Sequence[str],
    transform: Affine,
    crs: Any,
    *,
    class_field: str = "Class",
    confidence_field: str = "Confidence",
) -> gpd.GeoDataFrame:
    """Detections as a GeoDataFrame: ArcGIS's output layer of "Detect Objects Using Deep Learning".

    Args:
        raster_boxes: ``Tensor[K, 4]`` float32 xyxy in raster pixels (edges).
        labels: ``Tensor[K]`` int64 class indices into ``class_names``.
        scores: ``Tensor[K]`` float32 in [0, 1].
        class_names: the name of each label: ``class_names[label]`` — a model's ``classes``,
            ``['background', *names]``, fits labels 1..C as the detector gives them.
        transform: the raster's affine, raster pixels → map coordinates.
        crs: the raster's CRS (anything GeoPandas takes; None for an image without one).
        class_field: name of the class-name column. Default ``"Class"``.
        confidence_field: name of the score column, score × 100 (ArcGIS's percent). Default
            ``"Confidence"``.

    Returns:
        ``GeoDataFrame`` with columns ``class_field`` (str), ``confidence_field`` (float64, 0–100)
        and ``geometry`` (polygons in ``crs``), one row per detection, best first.

    Raises:
        ValueError: the lengths differ, or a label has no name.

    Examples:
        >>> from affine import Affine
        >>> frame = detections_frame(
        ...     torch.tensor([[10., 20., 30., 40.], [0., 0., 5., 5.]]),
        ...     labels=torch.tensor([2, 1]),
        ...     scores=torch.tensor([0.5, 0.75]),
        ...     class_names=["background", "pool", "tree"],
        ...     transform=Affine(0.3, 0, 500000, 0, -0.3, 4650000),
        ...     crs="EPSG:32633",
        ... )
        >>> frame[["Class", "Confidence"]]
          Class  Confidence
        0  pool        75.0
        1  tree        50.0
        >>> frame.crs.to_epsg(), frame.geometry[0].bounds
        (32633, (500000.0, 4649998.5, 500001.5, 4650000.0))
    """
    n = len(raster_boxes)
    if not len(labels) == len(scores) == n:
        raise ValueError(f"{n} boxes, {len(labels)} labels and {len(scores)} scores: need one label and score per box.")
    label_array = labels.detach().cpu().numpy().astype(np.int64)
    names = np.asarray(list(class_names), dtype=object)
    if n and (label_array.min() < 0 or label_array.max() >= len(names)):
        raise ValueError(
            f"labels {sorted(set(label_array.tolist()))} do not all index class_names {list(class_names)}: "
            "pass the model's classes, ['background', *names], for labels 1..C."
        )
    score_array = scores.detach().cpu().double().numpy()
    order = np.argsort(-score_array, kind="stable")  # best first; ties keep the detector's order
    return gpd.GeoDataFrame(
        {
            class_field: pd.Series(names[label_array[order]], dtype=object),
            confidence_field: pd.Series(score_array[order] * 100.0, dtype=np.float64),
        },
        geometry=boxes_to_polygons(raster_boxes[order] if n else raster_boxes.reshape(0, 4), transform),
        crs=crs,
    )


def resolve_output(path: str | Path, driver: str | None = None, overwrite: bool = False) -> tuple[Path, str]:
    """The output path and driver :func:`write_features` would use, checked before any work is done.

    Args:
        path: the output file.
        driver: an OGR driver name, ``'GeoParquet'``, or None (the default) to choose by
            suffix (:data:`DRIVERS`, any case).
        overwrite: whether an existing file may be replaced. Default False.

    Returns:
        ``(path, driver)``.

    Raises:
        ValueError: no ``driver`` and an unknown suffix.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.

    Examples:
        >>> path, driver = resolve_output("/no/such/folder/pools.GPKG")
        >>> path.name, driver
        ('pools.GPKG', 'GPKG')
        >>> resolve_output("pools.csv")
        Traceback (most recent call last):
        ...
        ValueError: pools.csv: cannot tell the output format from the suffix '.csv'; use one of ...
    """
    path = Path(path)
    if driver is None:
        driver = DRIVERS.get(path.suffix.lower())
        if driver is None:
            choices = ", ".join(f"{suffix} ({name})" for suffix, name in DRIVERS.items())
            raise ValueError(
                f"{path}: cannot tell the output format from the suffix {path.suffix!r}; "
                f"use one of {choices}, or pass driver=."
            )
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; choose another output name, or pass overwrite=True to replace it."
        )
    return path, driver


def write_features(
    frame: gpd.GeoDataFrame, path: str | Path, driver: str | None = None, overwrite: bool = False
) -> Path:
    """Writes a GeoDataFrame as a GIS layer, choosing the format from the suffix.

    ``.gpkg`` GeoPackage, ``.geojson``/``.json`` GeoJSON, ``.shp`` ESRI Shapefile (with its
    .shx/.dbf/.prj), ``.parquet`` GeoParquet (needs pyarrow). The driver is always passed
    explicitly. An existing file is never replaced unless ``overwrite=True``, and then only by a
    complete one: the layer is written under a temporary name and moved into place
    (:func:`geolearn.atomic.atomic_write`).

    Missing parent folders are created; an empty frame is still written as a polygon layer
    (OGR formats).

    Args:
        frame: the features, with a CRS.
        path: the output file.
        driver: an OGR driver name (``'GPKG'``, ``'GeoJSON'``, ``'ESRI Shapefile'``, ...) or
            ``'GeoParquet'``; None (the default) chooses by suffix.
        overwrite: replace an existing file (and a shapefile's companion files). Default False.

    Returns:
        The path written.

    Raises:
        ValueError: no ``driver`` and an unknown suffix.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        ImportError: GeoParquet without pyarrow.

    Examples:
        >>> import tempfile
        >>> from affine import Affine
        >>> frame = detections_frame(torch.tensor([[10., 20., 30., 40.]]), torch.tensor([1]), torch.tensor([0.9]),
        ...                          ["background", "pool"], Affine(0.3, 0, 500000, 0, -0.3, 4650000), "EPSG:32633")
        >>> path = write_features(frame, f"{tempfile.mkdtemp()}/pools.gpkg")
        >>> back = gpd.read_file(path)
        >>> len(back), back.crs.to_epsg(), back["Class"][0]
        (1, 32633, 'pool')
    """
    path, driver = resolve_output(path, driver, overwrite)
    if driver == _PARQUET:
        try:
            import pyarrow  # noqa: F401  (GeoDataFrame.to_parquet's engine)
        except ImportError:
            raise ImportError(
                f"{path}: writing GeoParquet needs pyarrow (pip install pyarrow); "
                "or write .gpkg, .geojson or .shp instead."
            ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    shapefile = driver == "ESRI Shapefile" and path.suffix.lower() == ".shp"
    # Written under a temporary name and moved into place: a run killed while writing leaves the
    # previous file (overwrite=True) whole, and its leftover is removed by the next write.
    with atomic_write(path, companions=_SHAPEFILE_PARTS if shapefile else ()) as partial:
        if driver == _PARQUET:
            frame.to_parquet(partial, index=False)
        else:
            # The layer keeps the file's name; the geometry type is given so that an empty
            # layer is still a polygon layer.
            frame.to_file(partial, driver=driver, engine="pyogrio", index=False, layer=path.stem,
                          geometry_type="Polygon" if len(frame) == 0 else None)
    logger.info("wrote %d features to %s (%s)", len(frame), path, driver)
    return path
