"""The labels ``export_training_data`` reads: any vector dataset → class-valued polygons in the raster's CRS.

:func:`read_samples` reads the training samples (a file, a GeoDataFrame or anything GeoPandas
reads), finds the class field, skips features without a usable geometry (with a counted
warning), buffers points and lines by ``buffer_radius``, reprojects to the raster's CRS and
refuses labels that miss the raster, naming both extents. :func:`read_vector` and
:func:`to_raster_crs` do the same for the mask polygons.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio.errors
import pyproj
import shapely
from rasterio.crs import CRS
from rasterio.io import DatasetReader

from geolearn.data.esri import ClassInfo, default_color
from geolearn.data.georef import pixel_footprint
from geolearn.errors import CRSMismatchError, GeolearnWarning, LabelFormatError, NoOverlapError

__all__ = ["Samples", "read_samples", "read_vector", "to_raster_crs"]

# The export's one logger, whichever of its modules logs: the name users configure.
logger = logging.getLogger("geolearn.data.export")


def read_vector(data: Any, what: str) -> gpd.GeoDataFrame:
    """A GeoDataFrame from a GeoDataFrame, GeoSeries or a path to a vector file."""
    if isinstance(data, gpd.GeoDataFrame):
        return data
    if isinstance(data, gpd.GeoSeries):
        return data.to_frame("geometry")
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist; pass a vector file or a GeoDataFrame.")
        try:
            return gpd.read_file(path, engine="pyogrio")
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
            raise LabelFormatError(
                f"{what} {path}: not a vector dataset GDAL can read ({str(err).split(';')[0]}). Pass a GeoPackage, "
                "shapefile, GeoJSON or another vector file of polygons or points, or a GeoDataFrame."
            ) from None
    raise TypeError(
        f"{what} must be a path to a vector file (GeoPackage, shapefile, GeoJSON, ...) or a "
        f"GeoDataFrame, not {type(data).__name__}."
    )


def _crs_label(crs: Any) -> str:
    """'EPSG:32633 (WGS 84 / UTM zone 33N)' for messages."""
    crs = pyproj.CRS.from_user_input(crs)
    authority = crs.to_authority()
    code = f"{authority[0]}:{authority[1]}" if authority else "custom CRS"
    return f"{code} ({crs.name})"


def to_raster_crs(frame: gpd.GeoDataFrame, raster_crs: CRS | None, what: str,
                   raster_path: Path) -> gpd.GeoDataFrame:
    """The frame in the raster's CRS: reprojected (logged), assumed (warned) or refused."""
    if frame.crs is None:
        if raster_crs is not None:
            warnings.warn(
                f"{what} has no CRS; assuming it is in the raster's CRS {_crs_label(raster_crs)}. "
                "Set the labels' CRS (GeoDataFrame.set_crs) if that is wrong.",
                GeolearnWarning,
                stacklevel=4,
            )
            return frame.set_crs(raster_crs.to_wkt())
        return frame  # neither has a CRS: the labels are in the raster's own coordinates
    if raster_crs is None:
        raise CRSMismatchError(
            f"{what} is in {_crs_label(frame.crs)} but the raster {raster_path} has no CRS (a plain "
            "PNG/JPEG or a GeoTIFF without georeferencing), so the labels cannot be placed on it. "
            "Export from the georeferenced original raster, georeference this one (e.g. "
            "`gdal_translate -a_srs EPSG:... -a_ullr ...`), or give labels without a CRS in the "
            "raster's own coordinates."
        )
    target = pyproj.CRS.from_user_input(raster_crs.to_wkt())
    if frame.crs.equals(target, ignore_axis_order=True):
        return frame
    logger.info("reprojecting %s from %s to the raster's CRS %s", what, _crs_label(frame.crs),
                _crs_label(target))
    return frame.to_crs(target)


def _find_column(frame: gpd.GeoDataFrame, name: str) -> str | None:
    """The column called ``name``, exactly or else ignoring case (ArcGIS field names ignore case)."""
    if name in frame.columns:
        return name
    matches = [c for c in frame.columns if isinstance(c, str) and c.lower() == name.lower()]
    return matches[0] if matches else None


@dataclass(frozen=True)
class Samples:
    """Training samples in the raster's CRS, ready for window queries.

    Attributes:
        frame: the samples (polygons in map coordinates of the raster CRS), with a spatial index.
        map_geoms: ``object[N]`` shapely polygons, the frame's geometries.
        map_areas: ``float64[N]`` their areas in squared map units.
        values: ``int64[N]`` class values.
        classes: the classes, sorted by value.
    """

    frame: gpd.GeoDataFrame
    map_geoms: np.ndarray
    map_areas: np.ndarray
    values: np.ndarray
    classes: list[ClassInfo]


def read_samples(data: Any, classvalue_field: str | None, buffer_radius: float | None,
                  src: DatasetReader, raster_path: Path) -> Samples:
    """Reads, validates and reprojects the training samples."""
    frame = read_vector(data, "input_class_data")
    value_column = _class_column(frame, classvalue_field)

    geoms = frame.geometry.values
    unusable = np.asarray(geoms.isna() | geoms.is_empty)
    if unusable.any():
        warnings.warn(
            f"input_class_data: skipped {int(unusable.sum())} of {len(frame)} features with a "
            "null or empty geometry.",
            GeolearnWarning,
            stacklevel=3,
        )
        frame = frame.loc[~unusable]
    values = _class_values(frame, value_column)
    classes = _class_infos(frame, values)
    _check_buffer_radius(np.asarray(frame.geometry.values, dtype=object), buffer_radius)

    frame = to_raster_crs(frame, src.crs, "input_class_data", raster_path)
    map_geoms = np.asarray(frame.geometry.values, dtype=object)
    # Reprojection can leave infinite coordinates (e.g. lat/lon swapped) and polygons can
    # collapse to no area: neither can be labelled.
    usable = np.isfinite(shapely.bounds(map_geoms)).all(axis=1)
    map_geoms[usable] = _as_polygons(map_geoms[usable], buffer_radius)
    usable[usable] = shapely.area(map_geoms[usable]) > 0
    if not usable.all():
        warnings.warn(
            f"input_class_data: skipped {int((~usable).sum())} features whose geometry has no "
            "area or no finite coordinates in the raster's CRS.",
            GeolearnWarning,
            stacklevel=3,
        )
    map_geoms, values = map_geoms[usable], values[usable]
    frame = gpd.GeoDataFrame({"value": values}, geometry=map_geoms, crs=frame.crs)
    samples = Samples(frame, map_geoms, shapely.area(map_geoms), values, classes)
    _check_overlap(samples, src, raster_path)
    return samples


def _class_column(frame: gpd.GeoDataFrame, classvalue_field: str | None) -> str:
    column = _find_column(frame, classvalue_field or "Classvalue")
    if column is None:
        available = [c for c in frame.columns if c != frame.geometry.name]
        asked = f"classvalue_field={classvalue_field!r}" if classvalue_field else "the default field 'Classvalue'"
        raise LabelFormatError(
            f"input_class_data has no field for {asked}; its fields are {available}. Pass "
            "classvalue_field='<the integer class field>' or add an integer 'Classvalue' field "
            "(ArcGIS's training-sample schema)."
        )
    return column


def _class_values(frame: gpd.GeoDataFrame, column: str) -> np.ndarray:
    """The class field as int64, refusing nulls, text and fractional numbers."""
    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw) or not pd.api.types.is_numeric_dtype(raw):
        bad = raw
    else:  # nulls compare as NA: fillna makes them bad too
        whole = (raw.round() == raw).fillna(False).astype(bool)
        bad = raw[~whole]
    if len(bad):
        examples = [repr(v) for v in pd.unique(bad)[:5]]
        raise LabelFormatError(
            f"input_class_data field {column!r} ({raw.dtype}) must hold integer class values; "
            f"{len(bad)} features have values such as {', '.join(examples)}. Store class values "
            "as integers (names go in a 'Classname' field) or pass another classvalue_field."
        )
    return raw.to_numpy(dtype=np.int64)


def _class_infos(frame: gpd.GeoDataFrame, values: np.ndarray) -> list[ClassInfo]:
    """Classes sorted by value; names from ``Classname`` when present, else the value."""
    name_column = _find_column(frame, "Classname")
    names: dict[int, str] = {}
    if name_column is not None:
        for value, name in zip(values.tolist(), frame[name_column].tolist()):
            if value not in names and not pd.isna(name) and str(name).strip():
                names[value] = str(name).strip()
    return [ClassInfo(v, names.get(v, str(v)), default_color(v)) for v in sorted(set(values.tolist()))]


# shapely type ids of geometries without area: points, lines, rings, multipoints, multilines
_NO_AREA_TYPES = {0: "points", 1: "lines", 2: "rings", 4: "multipoints", 5: "multilines"}


def _check_buffer_radius(geoms: np.ndarray, buffer_radius: float | None) -> None:
    """Points and lines have no extent: they need a buffer_radius to become boxes."""
    type_ids = shapely.get_type_id(geoms)
    no_area = np.isin(type_ids, list(_NO_AREA_TYPES))
    if no_area.any() and buffer_radius is None:
        names = ", ".join(_NO_AREA_TYPES[k] for k in sorted(set(type_ids[no_area].tolist())))
        raise LabelFormatError(
            f"input_class_data has {int(no_area.sum())} features without area ({names}); a box "
            "needs an extent. Pass buffer_radius=<half the object's width, in map units of the "
            "raster's CRS> to draw a square around each."
        )
    if no_area.any() and not buffer_radius > 0:
        raise ValueError(f"buffer_radius={buffer_radius!r} must be a positive distance in map units.")


def _as_polygons(map_geoms: np.ndarray, buffer_radius: float | None) -> np.ndarray:
    """Points and lines buffered to squares (map units of the raster CRS), invalid polygons repaired."""
    map_geoms = map_geoms.copy()
    no_area = np.isin(shapely.get_type_id(map_geoms), list(_NO_AREA_TYPES))
    if no_area.any():
        # Square caps and mitred joins: a point becomes an axis-aligned square of side 2 r.
        map_geoms[no_area] = shapely.buffer(
            map_geoms[no_area], buffer_radius, cap_style="square", join_style="mitre"
        )
    invalid = ~shapely.is_valid(map_geoms)
    if invalid.any():
        # Self-intersecting rings would make the chip intersections raise.
        logger.info("repaired %d invalid polygons in input_class_data", int(invalid.sum()))
        map_geoms[invalid] = shapely.make_valid(map_geoms[invalid])
    return map_geoms


_LIKELY_CAUSES = (
    "Likely causes: the labels' CRS is declared wrong (coordinates in metres tagged EPSG:4326, "
    "or latitude/longitude swapped) or they belong to another raster."
)


def _check_overlap(samples: Samples, src: DatasetReader, raster_path: Path) -> None:
    """Refuses labels of which no feature touches the raster, giving both extents."""
    crs = _crs_label(src.crs) if src.crs is not None else "pixel coordinates (no CRS)"
    if not len(samples.frame):
        raise NoOverlapError(
            f"input_class_data has no feature with an area and finite coordinates in the raster's "
            f"CRS {crs}, so nothing can label {raster_path}. {_LIKELY_CAUSES}"
        )
    raster_footprint = pixel_footprint(src.transform, src.width, src.height)
    if len(samples.frame.sindex.query(raster_footprint, predicate="intersects")):
        return
    left, bottom, right, top = (f"{v:.6g}" for v in samples.frame.total_bounds)
    raise NoOverlapError(
        f"input_class_data does not overlap the raster {raster_path}. In the raster's CRS "
        f"{crs}, the raster covers x {src.bounds.left:.6g}..{src.bounds.right:.6g}, "
        f"y {src.bounds.bottom:.6g}..{src.bounds.top:.6g}, but the labels cover x {left}..{right}, "
        f"y {bottom}..{top}. {_LIKELY_CAUSES}"
    )
