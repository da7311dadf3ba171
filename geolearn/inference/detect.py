"""``detect_objects``: arcgis.learn's top-level detection over one raster, many, or a mosaic.

The model does the work raster by raster (:func:`~geolearn.inference.predict.detect_with_model`:
for a ``RetinaNet`` its network over windows, the cross-window merge, georeferencing; for any
other detector its own ``detect_objects``). What this module adds is what a *set* of rasters
needs, in this order:

1. every raster's detections reprojected to one CRS, the first raster's (logged);
2. objects cut by the edge between two adjacent input tiles joined once
   (:func:`geolearn.inference.merge.merge_tile_seams`);
3. arcgis's final non-maximum suppression when ``run_nms`` ("Max Overlap Ratio",
   :func:`geolearn.inference.merge.suppress_overlaps`);
4. the output fields named as asked, and the layer written when ``output_name`` is given.

With ``client=`` (a ``dask.distributed.Client``) step 0, detecting each raster, runs on the
cluster (:mod:`geolearn.inference.distributed`); the steps above run here exactly as for a
local run, so both give the same features.
"""

from __future__ import annotations

import difflib
import glob
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import pandas as pd
import shapely
from shapely.geometry import Polygon

from geolearn.errors import (
    CRSMismatchError,
    InputNotFoundError,
    InvalidArgumentError,
    OutputExistsError,
)
from geolearn.data.raster_windows import RasterInfo, read_raster_info
from geolearn.inference import defaults
from geolearn.inference.merge import merge_tile_seams, suppress_overlaps
from geolearn.inference.predict import detect_with_model

if TYPE_CHECKING:
    from geolearn.learn.retinanet import RetinaNet

__all__ = [
    "MODEL_ARGUMENTS",
    "RASTER_SUFFIXES",
    "detect_objects",
    "merge_detections",
    "parse_model_arguments",
    "resolve_rasters",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

# The keys ``model_arguments`` takes, each with the parser of its value. ArcGIS's tool passes
# every value as a string ("0.5", "True"), Python callers pass numbers: both are accepted.
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError("expected True or False")


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")  # noqa: TRY004 - reported as a bad value of its key
    number = float(value)
    if not number.is_integer():
        raise ValueError("expected a whole number")
    return int(number)


def _parse_optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return _parse_int(value)


def _parse_str(value: Any) -> str:
    return str(value).strip()


MODEL_ARGUMENTS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "padding": (_parse_optional_int, ("pixels of context on each side of a window (adjacent windows overlap by "
                                      "twice it); default chip_size // 8")),
    "threshold": (float, ("minimum confidence in [0, 1] of a kept detection; default the "
                          f"threshold the model's fit calibrated, else {defaults.THRESHOLD}")),
    "nms_overlap": (float, ("IoU above which the weaker of two detections of a class is dropped; "
                            f"default {defaults.NMS_OVERLAP}")),
    "batch_size": (_parse_int, (f"windows per forward pass; default {defaults.default_batch_size('cpu')} on a CPU, "
                                f"{defaults.default_batch_size('cuda')} on a GPU")),
    "exclude_pad_detections": (_parse_bool, "drop detections cut by a window edge; default True"),
    "merge": (_parse_str, (f"cross-window merge: 'nms' or 'greedy' (joins pieces of large objects); "
                           f"default {defaults.MERGE!r}")),
    "class_agnostic": (_parse_bool, "suppress and join overlapping detections whatever their class; default False"),
    "test_time_augmentation": (_parse_bool, "run each window in its 8 orientations and fuse the boxes (8 times the "
                                            "time); default False"),
    "compiled": (_parse_bool, "run the network compiled by torch.compile: faster after a compilation of 10-60 s "
                              "(cached on disk); default False"),
}

# Files a folder given as ``input_raster`` contributes (GDAL reads more; these are the usual ones).
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".png", ".jpg", ".jpeg")

# Pieces of an object cut by a tile seam touch within this many pixels: box edges computed
# through two rasters' affines agree to float error, and a detector's box of a cut object
# stops at (or within a fraction of a pixel of) the raster edge.
SEAM_TOLERANCE_PX = 1.0

# A name without a suffix is written as a GeoPackage.
_DEFAULT_SUFFIX = ".gpkg"
# The column that carries each detection's raster index through the merge (dropped after).
_TILE = "__geolearn_tile"


def parse_model_arguments(model_arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checks and converts ``model_arguments`` into keyword arguments of ``RetinaNet.detect_objects``.

    Args:
        model_arguments: keys of :data:`MODEL_ARGUMENTS` (``padding``, ``threshold``,
            ``nms_overlap``, ``batch_size``, ``exclude_pad_detections``, ``merge``,
            ``class_agnostic``, ``test_time_augmentation``, ``compiled``); values as Python values
            or as ArcGIS's strings (``"0.5"``, ``"True"``). None: the model's defaults.

    Returns:
        The arguments with values converted; keys not given are left out (the model's defaults apply).

    Raises:
        InvalidArgumentError: an unknown key (the message names it, the close match and the
            keys geolearn takes) or a value that does not convert.

    Examples:
        >>> parse_model_arguments({"threshold": "0.4", "padding": "64", "exclude_pad_detections": "False"})
        {'threshold': 0.4, 'padding': 64, 'exclude_pad_detections': False}
        >>> parse_model_arguments(None)
        {}
        >>> parse_model_arguments({"treshold": 0.4})
        Traceback (most recent call last):
        ...
        geolearn.errors.InvalidArgumentError: ... unknown keys 'treshold' (did you mean 'threshold'?); ...
    """
    if model_arguments is None:
        return {}
    if not isinstance(model_arguments, Mapping):
        raise TypeError(f"model_arguments must be a dict such as {{'threshold': 0.5}}, "
                        f"got {type(model_arguments).__name__}")
    unknown = [key for key in model_arguments if key not in MODEL_ARGUMENTS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(MODEL_ARGUMENTS), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InvalidArgumentError(
            f"model_arguments has unknown keys {', '.join(hints)}; geolearn's RetinaNet takes "
            + ", ".join(MODEL_ARGUMENTS) + "."
        )
    parsed = {}
    for key, value in model_arguments.items():
        parse, meaning = MODEL_ARGUMENTS[key]
        try:
            parsed[key] = parse(value)
        except (TypeError, ValueError) as err:
            raise InvalidArgumentError(f"model_arguments[{key!r}] = {value!r} is not valid ({err}); "
                                       f"{key} is the {meaning}.") from None
    return parsed


def _has_magic(text: str) -> bool:
    return glob.has_magic(text)


def resolve_rasters(input_raster: PathLike | Sequence[PathLike]) -> list[Path]:
    """The raster files ``input_raster`` names, in a deterministic order.

    Args:
        input_raster: a raster file (GeoTIFF, VRT mosaic, ... anything rasterio opens), a
            folder (its files with a :data:`RASTER_SUFFIXES` suffix, sorted), a glob pattern
            (``"tiles/*.tif"``, ``"**"`` recursive; matches sorted), or a list of any of these
            (kept in the given order, duplicates dropped).

    Returns:
        The raster paths.

    Raises:
        InputNotFoundError: a file or folder that does not exist, a pattern or folder without rasters.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.tif", "a.tif", "c.vrt", "notes.txt"):
        ...     (folder / name).touch()
        >>> [p.name for p in resolve_rasters(folder)]  # the folder's rasters, sorted
        ['a.tif', 'b.tif', 'c.vrt']
        >>> [p.name for p in resolve_rasters([folder / "b.tif", f"{folder}/*.tif"])]  # given order, no duplicates
        ['b.tif', 'a.tif']
    """
    items = [input_raster] if isinstance(input_raster, (str, os.PathLike)) else list(input_raster)
    if not items:
        raise InputNotFoundError("input_raster is an empty list; give a raster file, a folder, a glob pattern "
                                 "such as 'tiles/*.tif', or a list of them.")
    found: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if _has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputNotFoundError(f"input_raster pattern {text!r} matches no file; check the folder and the "
                                         "pattern (for example 'tiles/*.tif').")
            found += matches
        elif Path(text).is_dir():
            matches = sorted(p for p in Path(text).iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
            if not matches:
                raise InputNotFoundError(f"input_raster folder {text} holds no raster ({', '.join(RASTER_SUFFIXES)}); "
                                         "give the folder of the image tiles or a glob pattern.")
            found += matches
        elif Path(text).is_file():
            found.append(Path(text))
        else:
            raise InputNotFoundError(f"input_raster {text}: no such file or folder; give an existing raster, "
                                     "folder or glob pattern.")
    return list(dict.fromkeys(p.resolve() for p in found))


def _check_output(output_name: PathLike, overwrite: bool) -> Path:
    """The output file (``.gpkg`` added to a name without suffix), checked before any detection runs."""
    from geolearn.data.georef import resolve_output

    path = Path(output_name)
    path = path if path.suffix else path.with_suffix(_DEFAULT_SUFFIX)
    try:
        resolve_output(path, None, overwrite)
    except OutputExistsError:
        raise
    except ValueError as err:  # an unknown suffix
        raise InvalidArgumentError(f"output_name: {err}") from None
    return path


def _check_fields(confidence_score_field: str | None, class_value_field: str | None) -> tuple[str, str]:
    confidence = confidence_score_field or "Confidence"
    klass = class_value_field or "Class"
    for name, value in (("confidence_score_field", confidence), ("class_value_field", klass)):
        if not isinstance(value, str) or not value.strip() or value.lower() == "geometry":
            raise InvalidArgumentError(f"{name}={value!r} is not a usable field name; give a name such as "
                                       f"'Confidence' or 'Class' (not 'geometry').")
    if confidence.lower() == klass.lower():
        raise InvalidArgumentError(f"confidence_score_field and class_value_field are both {confidence!r}; "
                                   "give the two output fields different names.")
    return confidence, klass


def _load_model(model: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        from geolearn.learn.retinanet import RetinaNet

        path = Path(model)
        if not path.exists():
            raise InputNotFoundError(f"model {path}: no such file or folder; give the model's .dlpk, .emd or "
                                     "its folder (what RetinaNet.save wrote).")
        return RetinaNet.from_model(path)
    if not callable(getattr(model, "detect_objects", None)):
        raise TypeError(f"model must be a RetinaNet or the path of a saved model (.dlpk, .emd or folder), "
                        f"got {type(model).__name__}")
    return model


def _tile_crs(headers: Sequence[RasterInfo]) -> Any:
    """The output CRS: the first raster's. Rasters with and without a CRS cannot be mixed."""
    with_crs = [h for h in headers if h.crs is not None]
    if with_crs and len(with_crs) < len(headers):
        missing = next(h for h in headers if h.crs is None)
        raise CRSMismatchError(
            f"{missing.path} has no CRS while {with_crs[0].path} is in {with_crs[0].crs}; detections of both "
            "cannot share one layer. Assign the CRS to the raster (gdal_edit.py -a_srs) or detect it separately."
        )
    return headers[0].crs


def _footprint_in(header: RasterInfo, crs: Any) -> Polygon:
    if header.crs is None or crs is None or header.crs == crs:
        return header.footprint
    # Densified first: a straight tile edge is curved in another projection.
    edge = max(header.footprint.length / 4 / 64, 1e-12)
    series = gpd.GeoSeries([shapely.segmentize(header.footprint, edge)], crs=header.crs)
    return series.to_crs(crs).iloc[0]


def merge_detections(
    frames: Sequence[gpd.GeoDataFrame],
    headers: Sequence[RasterInfo],
    *,
    run_nms: bool = True,
    max_overlap_ratio: float = 0.0,
    class_agnostic: bool = False,
) -> gpd.GeoDataFrame:
    """One layer from the per-raster detections (``Class``/``Confidence`` columns).

    Reprojects every frame to the first raster's CRS, joins pieces of objects cut by the
    seams between input tiles (only when there are several rasters) and, with ``run_nms``,
    applies arcgis's final NMS with ``max_overlap_ratio``.

    Args:
        frames: ``RetinaNet.detect_objects`` output per raster, in the rasters' order.
        headers: :func:`~geolearn.data.raster_windows.read_raster_info` per raster, same order.
        run_nms: apply :func:`suppress_overlaps`.
        max_overlap_ratio: its IoU in [0, 1].
        class_agnostic: seams and NMS ignore the class.

    Returns:
        The merged GeoDataFrame, in the first raster's CRS.

    Examples:
        >>> import tempfile
        >>> import rasterio
        >>> from rasterio.transform import from_origin
        >>> from shapely.geometry import box
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name, left in (("west.tif", 500000), ("east.tif", 500010)):  # two 10 x 10 px tiles at 1 m
        ...     with rasterio.open(folder / name, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8",
        ...                        crs="EPSG:32633", transform=from_origin(left, 4650010, 1, 1)):
        ...         pass
        >>> headers = [read_raster_info(folder / "west.tif"), read_raster_info(folder / "east.tif")]
        >>> west = gpd.GeoDataFrame({"Class": ["pool", "tree"], "Confidence": [70.0, 80.0]}, crs="EPSG:32633",
        ...                         geometry=[box(500007, 4650004, 500010, 4650006),  # cut by the seam x = 500010
        ...                                   box(500002, 4650002, 500004, 4650004)])
        >>> east = gpd.GeoDataFrame({"Class": ["pool"], "Confidence": [90.0]}, crs="EPSG:32633",
        ...                         geometry=[box(500010, 4650004, 500012, 4650006)])  # the pool's other piece
        >>> merged = merge_detections([west, east], headers)
        >>> merged[["Class", "Confidence"]].values.tolist(), merged.geometry.bounds.values[0].tolist()
        ([['pool', 90.0], ['tree', 80.0]], [500007.0, 4650004.0, 500012.0, 4650006.0])
    """
    crs = _tile_crs(headers)
    parts = []
    for index, (frame, header) in enumerate(zip(frames, headers)):
        if crs is not None and frame.crs is not None and frame.crs != crs:
            logger.info("reprojecting %d detections of %s from %s to %s (the first raster's CRS)",
                        len(frame), header.path.name, frame.crs, crs)
            frame = frame.to_crs(crs)
        parts.append(frame.assign(**{_TILE: index}))
    columns = list(frames[0].columns) if frames else ["Class", "Confidence", "geometry"]
    merged = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry=frames[0].geometry.name, crs=crs)
    if len(headers) > 1 and len(merged) > 1:
        footprints = [_footprint_in(h, crs) for h in headers]
        # Tolerance in output CRS units: a pixel of the coarsest raster.
        pixel = max((fp.area / (h.width * h.height)) ** 0.5 for fp, h in zip(footprints, headers))
        merged = merge_tile_seams(merged, footprints, tile_column=_TILE, tolerance=SEAM_TOLERANCE_PX * pixel,
                                  class_agnostic=class_agnostic)
    if run_nms:
        merged = suppress_overlaps(merged, max_overlap_ratio, class_agnostic=class_agnostic)
    return merged[columns]


def detect_objects(
    input_raster: PathLike | Sequence[PathLike],
    model: RetinaNet | PathLike,
    model_arguments: Mapping[str, Any] | None = None,
    output_name: PathLike | None = None,
    run_nms: bool = True,
    confidence_score_field: str | None = "Confidence",
    class_value_field: str | None = "Class",
    max_overlap_ratio: float = 0,
    *,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> gpd.GeoDataFrame:
    """Detects objects over one or many rasters into one georeferenced layer (arcgis.learn's ``detect_objects``).

    Each raster is covered by the model's windows (see ``RetinaNet.detect_objects``); the
    detections of all rasters are reprojected to the first raster's CRS (logged), objects
    cut by the edge between two adjacent input tiles are joined into one feature, and with
    ``run_nms`` arcgis's final non-maximum suppression runs over the whole layer.

    Args:
        input_raster: a raster (GeoTIFF, VRT mosaic, anything rasterio opens), a folder of
            rasters, a glob pattern (``"tiles/*.tif"``) or a list of these.
        model: a ``RetinaNet`` (or any object with its ``detect_objects`` method) or the path
            of a saved model: ``.dlpk``, ``.emd`` or the model folder.
        model_arguments: ``padding`` (pixels), ``threshold`` (0..1), ``nms_overlap`` (IoU),
            ``batch_size`` (windows), ``exclude_pad_detections`` (bool), ``merge``,
            ``class_agnostic``; values may be ArcGIS-style strings. Unknown keys are an error.
        output_name: None to only return the features; else the file to write: GeoPackage
            (``.gpkg``, also for a name without suffix), GeoJSON, Shapefile or GeoParquet by suffix.
        run_nms: apply arcgis's final NMS over the whole layer: of two features of a class
            overlapping more than ``max_overlap_ratio``, the less confident is dropped. The
            model's own cross-window merge (``nms_overlap``) always runs.
        confidence_score_field: name of the output confidence field (score × 100).
        class_value_field: name of the output class-name field.
        max_overlap_ratio: the final NMS's intersection over union in [0, 1]; ArcGIS's
            default 0 keeps no two overlapping features of a class (features that only touch
            are kept). Raise it (say 0.5) for objects that overlap in reality, like tree crowns.
        client: a ``dask.distributed.Client``: rasters are detected on its workers, each
            worker loading the model once (see :mod:`geolearn.inference.distributed`). None
            runs here, without importing Dask.
        overwrite: replace an existing ``output_name``.
        progress: show progress bars.

    Returns:
        A GeoDataFrame of polygons in the first raster's CRS with the class and confidence fields.

    Raises:
        InputNotFoundError: a raster, folder, pattern or model path that does not exist.
        InvalidArgumentError: unknown ``model_arguments`` keys, bad values or field names.
        OutputExistsError: ``output_name`` exists and ``overwrite`` is False (checked before detecting).
        CRSMismatchError: rasters with and without a CRS together.

    Examples:
        >>> detect_objects("tiles/*.tif", "model/trees.dlpk", {"threshold": 0.4, "padding": 64},
        ...                output_name="trees.gpkg", max_overlap_ratio=0.5)  # doctest: +SKIP
    """
    arguments = parse_model_arguments(model_arguments)
    confidence, klass = _check_fields(confidence_score_field, class_value_field)
    if not 0 <= float(max_overlap_ratio) <= 1:
        raise InvalidArgumentError(f"max_overlap_ratio={max_overlap_ratio!r} must be an intersection over union "
                                   "in [0, 1]; ArcGIS's default is 0.")
    out_path = _check_output(output_name, overwrite) if output_name is not None else None
    rasters = resolve_rasters(input_raster)
    headers = [read_raster_info(path) for path in rasters]
    class_agnostic = bool(arguments.get("class_agnostic", False))
    if client is None:
        detector = _load_model(model)
        frames = []
        for index, path in enumerate(rasters, start=1):
            if len(rasters) > 1:
                logger.info("raster %d/%d: %s", index, len(rasters), path)
            frames.append(detect_with_model(detector, path, **arguments, progress=progress))
    else:
        from geolearn.inference.distributed import detect_on_cluster

        frames = detect_on_cluster(client, rasters, model, arguments, progress=progress)
    merged = merge_detections(frames, headers, run_nms=run_nms, max_overlap_ratio=float(max_overlap_ratio),
                              class_agnostic=class_agnostic)
    merged = merged.rename(columns={"Confidence": confidence, "Class": klass})
    if out_path is not None:
        from geolearn.data.georef import write_features

        write_features(merged, out_path, overwrite=overwrite)
        logger.info("wrote %d features to %s", len(merged), out_path)
    return merged
