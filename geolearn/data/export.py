"""``export_training_data``: a georeferenced raster and vector labels → training chips (CONTRACT §1).

The local, open equivalent of arcgis.learn's ``export_training_data`` (ArcGIS Pro's
"Export Training Data For Deep Learning") for object detection: it slides a
window over the raster, writes each chip that holds labelled objects (and,
when asked, background chips), one PASCAL VOC or KITTI label file per chip,
and the Esri metadata files ``prepare_data`` reads.

How a label becomes a box: the training polygon is intersected with the chip's
footprint in map coordinates; when enough of it lies in the chip
(``min_polygon_overlap_ratio``), the bounds of that intersection, taken through
the inverse of the chip's affine transform, are the box, in chip pixels
measured at pixel *edges* and never rounded.

The raster is only ever read one window at a time, with GDAL's block cache
capped to a few rows of chips, so memory does not grow with the raster's size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.env
import shapely
import torch
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geolearn._version import __version__
from geolearn.data.bandstats import BandStats
from geolearn.data.esri import (
    EMD_FILE,
    STATS_FILE,
    ClassInfo,
    write_json,
    write_map_txt,
)
from geolearn.data.export_folder import SUMMARY_FILE, check_output, start_export, swap_in_export
from geolearn.data.export_labels import Samples, read_samples, read_vector, to_raster_crs
from geolearn.data.georef import esri_spatial_reference, pixel_footprint, polygons_to_boxes
from geolearn.data.labels import ChipLabels, write_kitti, write_voc
from geolearn.data.raster_windows import bounded_block_cache, user_block_cache
from geolearn.data.tiling import chip_windows, normalize_size
from geolearn.errors import BandMismatchError, ImageReadError, NoChipsError
from geolearn.progress import progress_bar

__all__ = ["export_training_data", "SUMMARY_FILE"]

logger = logging.getLogger(__name__)


# chip_format (upper case) -> (GDAL driver, file suffix)
_CHIP_FORMATS = {
    "TIFF": ("GTiff", ".tif"),
    "TIF": ("GTiff", ".tif"),
    "PNG": ("PNG", ".png"),
    "JPEG": ("JPEG", ".jpg"),
    "JPG": ("JPEG", ".jpg"),
}
# metadata_format (upper case) -> (MetaDataMode as Esri spells it, label suffix)
_METADATA_FORMATS = {
    "PASCAL_VOC_RECTANGLES": ("PASCAL_VOC_rectangles", ".xml"),
    "KITTI_RECTANGLES": ("KITTI_rectangles", ".txt"),
}
# Areas compare as floats: a polygon exactly half inside a chip must pass ratio 0.5.
_RATIO_TOLERANCE = 1e-9
# A box must be wider and taller than this (chip pixels) to be written: label files
# keep two decimals, so anything thinner could read back as an empty box.
_MIN_BOX_PIXELS = 0.01


def export_training_data(
    input_raster: str | os.PathLike,
    input_class_data: str | os.PathLike | gpd.GeoDataFrame | None = None,
    chip_format: str | None = "TIFF",
    tile_size: int | Mapping[str, int] | None = {"x": 256, "y": 256},  # noqa: B006 - arcgis's default, never mutated
    stride_size: int | Mapping[str, int] | None = {"x": 128, "y": 128},  # noqa: B006
    metadata_format: str | None = "PASCAL_VOC_rectangles",
    classvalue_field: str | None = None,
    buffer_radius: float | None = None,
    output_location: str | os.PathLike | None = None,
    context: dict | None = None,
    input_mask_polygons: str | os.PathLike | gpd.GeoDataFrame | None = None,
    rotation_angle: float = 0,
    reference_system: str = "MAP_SPACE",
    process_all_raster_items: bool = False,
    blacken_around_feature: bool = False,
    fix_chip_size: bool = True,
    additional_input_raster: Any = None,
    input_instance_data: Any = None,
    instance_class_value_field: str | None = None,
    min_polygon_overlap_ratio: float = 0,
    *,
    output_nofeature_tiles: bool | str = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Exports object-detection training chips from a raster and vector labels.

    Same signature, spellings and defaults as arcgis.learn's ``export_training_data``
    (ArcGIS Pro's "Export Training Data For Deep Learning"), run locally. The output
    folder is what ``prepare_data`` reads::

        <output_location>/images/000000000.tif ...   chips, numbered in row-major window order
        <output_location>/labels/000000000.xml ...   one label file per chip (.txt for KITTI)
        <output_location>/map.txt, esri_model_definition.emd, esri_accumulated_stats.json, stats.txt

    Chips are the windows of :func:`~geolearn.data.tiling.chip_windows` (the last row and
    column flush with the raster's edge) that hold at least one object, or every window when
    ``output_nofeature_tiles`` is set; windows outside ``input_mask_polygons`` or wholly
    nodata are skipped. Labels are the samples' bounding boxes in chip pixels, clipped to the
    chip. Samples in another CRS than the raster's are reprojected to it.

    Args:
        input_raster: path to anything rasterio opens (GeoTIFF, VRT, ...).
        input_class_data: training samples, a vector file (GeoPackage, shapefile,
            GeoJSON, ...) or a GeoDataFrame, with an integer class field and an
            optional ``Classname`` field (ArcGIS's training-sample schema). Required,
            although the signature (arcgis.learn's) gives it a default of None.
        chip_format: ``'TIFF'`` (the default; GeoTIFF chips carrying their transform and
            CRS), ``'PNG'`` (8- or 16-bit, 1 to 4 bands) or ``'JPEG'`` (8-bit, 1 or 3
            bands); case-insensitive. None means ``'TIFF'``.
        tile_size: chip size in pixels, ``{'x': int, 'y': int}`` or an int. Default
            ``{'x': 256, 'y': 256}``; None means 256.
        stride_size: step between chips in pixels, ``{'x': int, 'y': int}`` or an int.
            Default ``{'x': 128, 'y': 128}``; None means 128.
        metadata_format: ``'PASCAL_VOC_rectangles'`` (the default; None means it too) or
            ``'KITTI_rectangles'``; case-insensitive.
        classvalue_field: the integer class field. Default None: the field named
            ``Classvalue`` (any case).
        buffer_radius: half the side, in map units of the raster's CRS, of the
            square drawn around each point (or line) sample; required for them.
            Default None.
        output_location: the output folder (required; created if missing).
        context: not supported (must be None).
        input_mask_polygons: optional polygons (path or GeoDataFrame); only chips
            intersecting them are exported.
        rotation_angle: only 0 is supported.
        reference_system: only ``'MAP_SPACE'`` is supported.
        process_all_raster_items: only False is supported.
        blacken_around_feature: only False is supported.
        fix_chip_size: only True (fixed-size chips) is supported.
        additional_input_raster: not supported (must be None).
        input_instance_data: not supported (must be None).
        instance_class_value_field: not supported (must be None).
        min_polygon_overlap_ratio: in [0, 1]; a sample is labelled in a chip when
            the area of its part inside the chip, divided by its whole area, is at
            least this (and above 0). Default 0.
        output_nofeature_tiles: also export chips without objects, as background
            chips with empty label files (True or ``'ALL_TILES'``; default False,
            ``'ONLY_TILES_WITH_FEATURES'``). Keyword only.
        overwrite: replace an earlier export in ``output_location``. Only the files
            that export wrote (those its ``map.txt`` lists, and the metadata files)
            are deleted, nothing else, and only once the new export is complete in a
            hidden ``.exporting-*`` folder: an export that fails or is killed leaves the
            earlier one whole. Default False. Keyword only.
        progress: show a progress bar over the chip windows. Default True. Keyword only.

    Returns:
        The output folder, as a ``Path``.

    Raises:
        NotImplementedError: an arcgis option geolearn does not implement (a non-default
            ``context``, ``rotation_angle``, ``reference_system``, ...), ``chip_format='MRF'``,
            or a ``metadata_format`` other than VOC or KITTI rectangles.
        ValueError: a bad tile/stride size, chip format, overlap ratio,
            ``output_nofeature_tiles`` or buffer radius, or no ``input_class_data`` or
            ``output_location``.
        TypeError: ``input_class_data`` or ``input_mask_polygons`` is neither a path nor a
            GeoDataFrame.
        FileNotFoundError: the raster or a vector file does not exist.
        ImageReadError: the raster cannot be opened.
        NotADirectoryError: ``output_location`` is a file.
        LabelFormatError: no class field, non-integer class values, or point/line
            samples without ``buffer_radius``.
        BandMismatchError: a raster JPEG (or PNG) chips cannot hold.
        CRSMismatchError: labels with a CRS against a raster without one.
        NoOverlapError: labels that miss the raster.
        OutputExistsError: ``output_location`` holds an export and ``overwrite`` is False, or
            (with ``overwrite``) chip-named files the earlier export did not record.
        NoChipsError: no window produced a chip.

    Warns:
        GeolearnWarning: labels without a CRS (assumed to be in the raster's), samples
            skipped for a null, empty or area-less geometry, and (with ``overwrite``) files
            left in ``images/`` or ``labels/`` that the earlier export did not write.

    Examples:
        >>> import tempfile
        >>> from geolearn.sample import make_scene
        >>> scene = make_scene(tempfile.mkdtemp(), size=512, seed=0)  # a 512 x 512 px GeoTIFF
        >>> chips = export_training_data(scene.raster, scene.labels, output_location=scene.raster.parent / "chips",
        ...                              tile_size=128, stride_size=128, progress=False)
        >>> sorted(p.name for p in chips.iterdir())
        ['esri_accumulated_stats.json', 'esri_model_definition.emd', 'images', 'labels', 'map.txt', 'stats.txt']
        >>> sorted(p.name for p in (chips / "images").iterdir())[:2]
        ['000000000.tif', '000000001.tif']
    """
    _refuse_unsupported(
        context=context,
        rotation_angle=rotation_angle,
        reference_system=reference_system,
        process_all_raster_items=process_all_raster_items,
        blacken_around_feature=blacken_around_feature,
        fix_chip_size=fix_chip_size,
        additional_input_raster=additional_input_raster,
        input_instance_data=input_instance_data,
        instance_class_value_field=instance_class_value_field,
    )
    options = _Options.parse(
        chip_format=chip_format,
        tile_size=tile_size,
        stride_size=stride_size,
        metadata_format=metadata_format,
        min_polygon_overlap_ratio=min_polygon_overlap_ratio,
        output_nofeature_tiles=output_nofeature_tiles,
    )
    _require_inputs(input_class_data, output_location)
    root = Path(output_location)
    raster_path = Path(input_raster)
    check_output(root, overwrite)

    with _open_raster(raster_path) as src, _bounded_block_cache(src, options.tile):
        _check_chip_format(src, options, raster_path)
        samples = read_samples(input_class_data, classvalue_field, buffer_radius, src, raster_path)
        masks = None
        if input_mask_polygons is not None:
            masks = to_raster_crs(read_vector(input_mask_polygons, "input_mask_polygons"),
                                  src.crs, "input_mask_polygons", raster_path)
        # Inputs are all checked before the output folder is touched: a bad call leaves no trace.
        # The export is staged whole beside the earlier one, which stays intact until the swap.
        staging = start_export(root)
        try:
            tally = _Tally.start(samples.classes, src.count)
            pairs: list[tuple[str, str]] = []
            _export_chips(src, samples, masks, options, staging, tally, pairs, progress)
            if not pairs:
                raise NoChipsError(
                    f"No chip was exported from {raster_path}: {tally.describe_skips()}. Lower "
                    "min_polygon_overlap_ratio, check input_mask_polygons, or pass "
                    "output_nofeature_tiles=True to export background chips too."
                )
            write_map_txt(staging, pairs)
            _write_metadata(staging, src, raster_path, samples.classes, options, tally)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        swap_in_export(staging, root)
    logger.info("exported %d chips (%d objects) to %s", len(pairs), tally.n_features, root)
    return root


# ----------------------------------------------------------------------------- options


def _require_inputs(input_class_data: Any, output_location: Any) -> None:
    """The two arguments arcgis.learn's signature makes optional and an export cannot go without."""
    if input_class_data is None:
        raise ValueError(
            "input_class_data is required: pass the training samples (a vector file or a "
            "GeoDataFrame with an integer Classvalue field) that label the objects."
        )
    if output_location is None:
        raise ValueError(
            "output_location is required: pass the folder to write images/, labels/ and the "
            "Esri metadata files to, e.g. output_location='chips'."
        )


def _refuse_unsupported(**given: Any) -> None:
    """Raises NotImplementedError for an arcgis option geolearn does not implement."""
    supported = {
        "context": (None, "None"),
        "rotation_angle": (0, "0"),
        "reference_system": ("MAP_SPACE", "'MAP_SPACE'"),
        "process_all_raster_items": (False, "False"),
        "blacken_around_feature": (False, "False"),
        "fix_chip_size": (True, "True"),
        "additional_input_raster": (None, "None"),
        "input_instance_data": (None, "None"),
        "instance_class_value_field": (None, "None"),
    }
    for name, value in given.items():
        default, spelled = supported[name]
        if name == "reference_system" and isinstance(value, str):
            value = value.upper()
        if name == "context" and not value:  # {} is as good as None
            value = None
        refused = value is not None if default is None else value != default
        if refused:
            raise NotImplementedError(
                f"export_training_data: {name}={given[name]!r} is not supported. geolearn "
                f"exports map-space object-detection chips and supports only {name}={spelled}; "
                "use ArcGIS Pro for this option."
            )


@dataclass(frozen=True)
class _Options:
    """Parsed and validated export options."""

    driver: str
    chip_suffix: str
    chip_format: str
    metadata_mode: str
    label_suffix: str
    tile: tuple[int, int]
    stride: tuple[int, int]
    min_overlap: float
    keep_background: bool

    @classmethod
    def parse(
        cls,
        *,
        chip_format: str | None,
        tile_size: Any,
        stride_size: Any,
        metadata_format: str | None,
        min_polygon_overlap_ratio: float,
        output_nofeature_tiles: bool | str,
    ) -> "_Options":
        chip_key = str(chip_format or "TIFF").upper()
        if chip_key == "MRF":
            raise NotImplementedError(
                "chip_format='MRF' is not supported; geolearn writes 'TIFF', 'PNG' or 'JPEG' chips."
            )
        if chip_key not in _CHIP_FORMATS:
            raise ValueError(
                f"chip_format={chip_format!r} is not a chip format; use 'TIFF', 'PNG' or 'JPEG'."
            )
        meta_key = str(metadata_format or "PASCAL_VOC_rectangles").upper()
        if meta_key not in _METADATA_FORMATS:
            raise NotImplementedError(
                f"metadata_format={metadata_format!r} is not supported; geolearn exports object "
                "detection labels only: 'PASCAL_VOC_rectangles' or 'KITTI_rectangles'."
            )
        ratio = float(min_polygon_overlap_ratio)
        if not 0 <= ratio <= 1:
            raise ValueError(
                f"min_polygon_overlap_ratio={min_polygon_overlap_ratio!r} must lie in [0, 1] (the "
                "fraction of a sample's area that must fall in a chip)."
            )
        driver, chip_suffix = _CHIP_FORMATS[chip_key]
        metadata_mode, label_suffix = _METADATA_FORMATS[meta_key]
        return cls(
            driver=driver,
            chip_suffix=chip_suffix,
            chip_format={"GTiff": "TIFF", "PNG": "PNG", "JPEG": "JPEG"}[driver],
            metadata_mode=metadata_mode,
            label_suffix=label_suffix,
            tile=normalize_size(256 if tile_size is None else tile_size, "tile_size"),
            stride=normalize_size(128 if stride_size is None else stride_size, "stride_size"),
            min_overlap=ratio,
            keep_background=_parse_keep_background(output_nofeature_tiles),
        )


def _parse_keep_background(value: bool | str) -> bool:
    """output_nofeature_tiles as a bool; ArcGIS Pro spells it ALL_TILES / ONLY_TILES_WITH_FEATURES."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    spelled = {"ALL_TILES": True, "ONLY_TILES_WITH_FEATURES": False}
    if isinstance(value, str) and value.upper() in spelled:
        return spelled[value.upper()]
    raise ValueError(
        f"output_nofeature_tiles={value!r}: expected True/False, 'ALL_TILES' or "
        "'ONLY_TILES_WITH_FEATURES'."
    )


# ----------------------------------------------------------------------------- inputs


def _open_raster(path: Path) -> DatasetReader:
    if not path.exists() and "://" not in str(path) and not str(path).startswith("/vsi"):
        raise FileNotFoundError(f"input_raster {path} does not exist; pass the path of a raster file.")
    try:
        return rasterio.open(path)
    except RasterioIOError as err:
        raise ImageReadError(f"input_raster {path} cannot be opened as a raster: {err}") from None


def _bounded_block_cache(src: DatasetReader, tile: tuple[int, int]) -> contextlib.AbstractContextManager:
    """Caps GDAL's block cache for the export's sweep, unless the user set GDAL_CACHEMAX."""
    if user_block_cache():
        return contextlib.nullcontext()
    return bounded_block_cache(src, tile[1], src.count, src.dtypes[0])


def _check_chip_format(src: DatasetReader, options: _Options, raster_path: Path) -> None:
    """Refuses rasters the chip format cannot hold, before anything is written."""
    dtype = src.dtypes[0]
    if options.driver == "JPEG" and (dtype != "uint8" or src.count not in (1, 3)):
        raise BandMismatchError(
            f"chip_format='JPEG' holds 8-bit images with 1 or 3 bands; {raster_path} has "
            f"{src.count} band(s) of {dtype}. Use chip_format='TIFF', which keeps every band "
            "and the data type."
        )
    if options.driver == "PNG" and (dtype not in ("uint8", "uint16") or src.count > 4):
        raise BandMismatchError(
            f"chip_format='PNG' holds 8- or 16-bit images with 1 to 4 bands; {raster_path} has "
            f"{src.count} band(s) of {dtype}. Use chip_format='TIFF', which keeps every band "
            "and the data type."
        )


# ----------------------------------------------------------------------------- chips


@dataclass
class _Tally:
    """What the export wrote, for the metadata files.

    Attributes:
        class_values: ``int64[C]`` sorted class values.
        band_stats: statistics of the valid pixels of the written chips.
        images_per_class: ``int64[C]`` chips holding the class.
        features_per_class: ``int64[C]`` objects of the class.
        area_min: ``float64[C]`` smallest box area, chip pixels².
        area_max: ``float64[C]`` largest box area, chip pixels².
        area_sum: ``float64[C]`` summed box areas, chip pixels².
        n_chips: chips written.
        n_features: objects written.
        n_background: chips written without objects.
        min_per_chip: fewest objects in a chip (None before the first chip).
        max_per_chip: most objects in a chip.
        skipped: windows skipped, by reason.
    """

    class_values: np.ndarray
    band_stats: BandStats
    images_per_class: np.ndarray
    features_per_class: np.ndarray
    area_min: np.ndarray
    area_max: np.ndarray
    area_sum: np.ndarray
    n_chips: int = 0
    n_features: int = 0
    n_background: int = 0
    min_per_chip: int | None = None
    max_per_chip: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {"no feature": 0, "outside mask": 0, "nodata": 0})

    @classmethod
    def start(cls, classes: list[ClassInfo], n_bands: int) -> "_Tally":
        n = len(classes)
        return cls(
            class_values=np.array([c.value for c in classes], dtype=np.int64),
            band_stats=BandStats(n_bands),
            images_per_class=np.zeros(n, dtype=np.int64),
            features_per_class=np.zeros(n, dtype=np.int64),
            area_min=np.full(n, np.inf),
            area_max=np.zeros(n),
            area_sum=np.zeros(n),
        )

    def add(self, values: np.ndarray, chip_boxes: np.ndarray, pixels: np.ndarray, valid: np.ndarray) -> None:
        """Adds a written chip: its objects' class values and boxes, its pixels and valid mask."""
        positions = np.searchsorted(self.class_values, values)
        areas = (chip_boxes[:, 2] - chip_boxes[:, 0]) * (chip_boxes[:, 3] - chip_boxes[:, 1])
        np.add.at(self.features_per_class, positions, 1)
        self.images_per_class[np.unique(positions)] += 1
        np.minimum.at(self.area_min, positions, areas)
        np.maximum.at(self.area_max, positions, areas)
        np.add.at(self.area_sum, positions, areas)
        self.n_chips += 1
        self.n_features += len(values)
        self.n_background += int(len(values) == 0)
        self.min_per_chip = len(values) if self.min_per_chip is None else min(self.min_per_chip, len(values))
        self.max_per_chip = max(self.max_per_chip, len(values))
        self.band_stats.update(pixels, valid)

    def describe_skips(self) -> str:
        parts = [f"{count} windows skipped ({reason})" for reason, count in self.skipped.items() if count]
        return ", ".join(parts) or "no windows"


def _export_chips(src: DatasetReader, samples: Samples, masks: gpd.GeoDataFrame | None,
                  options: _Options, root: Path, tally: _Tally, pairs: list[tuple[str, str]],
                  progress: bool) -> None:
    """Writes the chips and label files, appending their (image, label) file names to ``pairs``."""
    windows = chip_windows(src.width, src.height, options.tile, options.stride)
    raster_window = Window(0, 0, src.width, src.height)
    for window in progress_bar(windows) if progress else windows:
        chip_transform = src.window_transform(window)
        # A chip larger than the raster overhangs it: only its part on the raster holds
        # data, so only that part may carry labels.
        on_raster = window.intersection(raster_window)
        footprint = pixel_footprint(src.window_transform(on_raster), on_raster.width, on_raster.height)
        chip_boxes, values = _window_objects(samples, footprint, chip_transform, options)
        if len(values) == 0 and not options.keep_background:
            tally.skipped["no feature"] += 1
            continue
        if masks is not None and not len(masks.sindex.query(footprint, predicate="intersects")):
            tally.skipped["outside mask"] += 1
            continue
        overhangs = on_raster.width < window.width or on_raster.height < window.height
        valid = src.dataset_mask(window=window, boundless=overhangs) > 0
        if not valid.any():
            tally.skipped["nodata"] += 1
            continue
        pixels = src.read(window=window, boundless=overhangs, fill_value=src.nodata or 0)

        stem = f"{len(pairs):09d}"
        image_name, label_name = stem + options.chip_suffix, stem + options.label_suffix
        pairs.append((image_name, label_name))
        _write_chip(root / "images" / image_name, pixels, options.driver, src, chip_transform)
        labels = ChipLabels(torch.from_numpy(chip_boxes.astype(np.float32)),
                            tuple(str(v) for v in values.tolist()))
        _write_labels(root / "labels" / label_name, labels, image_name, pixels.shape, options)
        tally.add(values, chip_boxes, pixels, valid)


def _window_objects(samples: Samples, footprint: shapely.Polygon, chip_transform: Affine,
                    options: _Options) -> tuple[np.ndarray, np.ndarray]:
    """The objects of one chip.

    Args:
        samples: the training samples in map coordinates.
        footprint: the chip's part on the raster, a polygon in map coordinates.
        chip_transform: the chip's affine (chip pixels → map coordinates).
        options: tile size and minimum overlap ratio.

    Returns:
        ``(chip_boxes, values)``: ``float64[K, 4]`` xyxy boxes in chip pixels (edges,
        clamped to the tile) and ``int64[K]`` class values, in the samples' order.
    """
    hits = np.sort(samples.frame.sindex.query(footprint, predicate="intersects"))
    if len(hits) == 0:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    inside = shapely.intersection(samples.map_geoms[hits], footprint)
    ratio = shapely.area(inside) / samples.map_areas[hits]
    keep = (ratio > 0) & (ratio >= options.min_overlap - _RATIO_TOLERANCE)
    chip_boxes = polygons_to_boxes(inside[keep], chip_transform).numpy()
    tile_x, tile_y = options.tile
    chip_boxes[:, 0::2] = chip_boxes[:, 0::2].clip(0, tile_x)
    chip_boxes[:, 1::2] = chip_boxes[:, 1::2].clip(0, tile_y)
    values = samples.values[hits][keep]
    # Polygons that merely graze the chip (an edge a rounding error or a sliver of a
    # pixel inside) leave boxes with no visible pixels, which the label files' two
    # decimals would even turn into empty boxes: they are not objects of this chip.
    sized = ((chip_boxes[:, 2] - chip_boxes[:, 0]) > _MIN_BOX_PIXELS) & (
        (chip_boxes[:, 3] - chip_boxes[:, 1]) > _MIN_BOX_PIXELS
    )
    return chip_boxes[sized], values[sized]


def _write_chip(path: Path, pixels: np.ndarray, driver: str, src: DatasetReader, chip_transform: Affine) -> None:
    """Writes one chip; GeoTIFF chips carry the chip's transform, the CRS and nodata."""
    bands, height, width = pixels.shape
    profile: dict[str, Any] = {"driver": driver, "width": width, "height": height, "count": bands,
                               "dtype": pixels.dtype}
    if driver == "GTiff":
        profile.update(crs=src.crs, transform=chip_transform, nodata=src.nodata)
    with warnings.catch_warnings():
        # PNG/JPEG chips are deliberately not georeferenced (no .aux.xml side files).
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)


def _write_labels(path: Path, labels: ChipLabels, image_name: str, shape: tuple[int, ...],
                  options: _Options) -> None:
    if options.metadata_mode == "KITTI_rectangles":
        write_kitti(path, labels)
    else:
        bands, height, width = shape
        write_voc(path, labels, image_name=image_name, width=width, height=height, depth=bands)


# ----------------------------------------------------------------------------- metadata


def _write_metadata(root: Path, src: DatasetReader, raster_path: Path, classes: list[ClassInfo],
                    options: _Options, tally: _Tally) -> None:
    """Writes the accumulated stats, the human-readable summary and, last, the EMD."""
    stats = tally.band_stats
    cell_size = {"x": src.res[0], "y": src.res[1]}
    spatial_reference = esri_spatial_reference(src.crs)
    if spatial_reference:
        cell_size["spatialReference"] = spatial_reference
    tile_x, tile_y = options.tile
    band_names = [desc or f"Band_{b + 1}" for b, desc in enumerate(src.descriptions)]

    counts = np.maximum(tally.features_per_class, 1)
    write_json(root / STATS_FILE, {
        "Version": "1.0",
        "NumBands": src.count,
        "TileSizeX": tile_x,
        "TileSizeY": tile_y,
        "NumClasses": len(classes),
        "NumTiles": tally.n_chips,
        "OutputFeatures": tally.n_features,
        "MetaDataMode": options.metadata_mode,
        "MinCellSize": cell_size,
        "MaxCellSize": cell_size,
        "FeatureStats": {
            "NumImagesTotal": tally.n_chips,
            "NumFeaturesTotal": tally.n_features,
            "NumImagesPerClass": tally.images_per_class.tolist(),
            "NumFeaturesPerClass": tally.features_per_class.tolist(),
            "NumFeaturesPerImage": {
                "Min": tally.min_per_chip or 0,
                "Max": tally.max_per_chip,
                "Mean": tally.n_features / tally.n_chips,
            },
            # Box areas in chip pixels²; 0 for a class without any written object.
            "FeatureAreaPerClass": [
                {"Min": float(lo) if n else 0.0, "Max": float(hi), "Mean": float(total / count)}
                for lo, hi, total, count, n in zip(tally.area_min, tally.area_max, tally.area_sum,
                                                   counts, tally.features_per_class)
            ],
        },
        "BandStatsState": stats.to_esri(),
    })
    (root / SUMMARY_FILE).write_text(_summary(raster_path, classes, options, tally, band_names))
    # The EMD comes last: its presence in the staging folder says that the export finished
    # (export_folder.finish_interrupted_exports), and read_folder refuses a folder with
    # map.txt but no EMD (what other tools' exports killed half-way leave).
    write_json(root / EMD_FILE, {
        "MetaDataMode": options.metadata_mode,
        "ImageHeight": tile_y,
        "ImageWidth": tile_x,
        "ImageSpaceUsed": "MAP_SPACE",
        "Classes": [c.to_esri() for c in classes],
        "ExtractBands": list(range(src.count)),
        "CellSize": cell_size,
        "MinCellSize": cell_size,
        "MaxCellSize": cell_size,
        "AllTilesStats": [
            {"Min": float(stats.minimum[b]), "Max": float(stats.maximum[b]),
             "Mean": float(stats.mean[b]), "StdDev": float(stats.std[b])}
            for b in range(stats.n_bands)
        ],
        "InputRastersProps": {"RasterCount": 1, "BandNames": band_names},
        "geolearn": {
            "version": __version__,
            "source_raster": str(raster_path.resolve()),
            "crs_wkt": src.crs.to_wkt() if src.crs is not None else None,
            "dtype": src.dtypes[0],
            "tile_size": {"x": tile_x, "y": tile_y},
            "stride_size": {"x": options.stride[0], "y": options.stride[1]},
            "chip_format": options.chip_format,
            "min_polygon_overlap_ratio": options.min_overlap,
        },
    })


def _summary(raster_path: Path, classes: list[ClassInfo], options: _Options, tally: _Tally,
             band_names: list[str]) -> str:
    """stats.txt: what was exported, for people (never parsed)."""
    stats = tally.band_stats
    lines = [
        f"geolearn {__version__} export of {raster_path}",
        f"chips: {tally.n_chips} ({tally.n_chips - tally.n_background} with objects, "
        f"{tally.n_background} background); objects: {tally.n_features}",
        f"windows skipped: {tally.describe_skips()}",
        f"tile {options.tile[0]} x {options.tile[1]} px, stride {options.stride[0]} x "
        f"{options.stride[1]} px, {options.chip_format} chips, {options.metadata_mode} labels, "
        f"min_polygon_overlap_ratio {options.min_overlap:g}",
        "",
        f"{'value':>6} {'name':<20} {'chips':>7} {'objects':>8} {'box area px² min/mean/max':>28}",
    ]
    for i, info in enumerate(classes):
        n = int(tally.features_per_class[i])
        area = (f"{tally.area_min[i]:.1f}/{tally.area_sum[i] / n:.1f}/{tally.area_max[i]:.1f}"
                if n else "-")
        lines.append(f"{info.value:>6} {info.name:<20} {int(tally.images_per_class[i]):>7} {n:>8} {area:>28}")
    lines += ["", f"{'band':<12} {'min':>12} {'max':>12} {'mean':>12} {'std':>12} {'pixels':>12}"]
    for b, name in enumerate(band_names):
        lines.append(f"{name:<12} {stats.minimum[b]:>12.6g} {stats.maximum[b]:>12.6g} "
                     f"{stats.mean[b]:>12.6g} {stats.std[b]:>12.6g} {int(stats.count[b]):>12}")
    return "\n".join(lines) + "\n"
