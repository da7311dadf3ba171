"""Model packages: the ``.pth`` weights, the ``.emd`` model definition and the ``.dlpk`` (CONTRACT §4).

A saved model is a folder that ArcGIS Pro, arcgis.learn and geolearn all read::

    <folder>/<name>.pth                         weights: a plain state_dict, or exactly {'model', 'opt'}
    <folder>/<name>.emd                         JSON model definition (arcgis.learn's keys + one "geolearn" object)
    <folder>/GeolearnObjectDetector.py          the raster function ArcGIS Pro runs (geolearn/models/raster_function.py)
    <folder>/<name>_detector.pt                 its network: TorchScript, normalisation and box decoding inside
    <folder>/model_metrics.html                 backbone, learning rate, AP per class, figures (self-contained)
    <folder>/ModelCharacteristics/loss_graph.png
    <folder>/ModelCharacteristics/show_results.png
    <folder>/<name>.dlpk                        zip of all of the above, relative paths

The functions here take plain values (state_dicts, dicts, matplotlib Figures, :class:`ClassInfo`
lists) so that the ``RetinaNet`` class stays an adapter and the file formats are testable
without training.

Decisions, each one deliberate:

- **Required EMD keys** (:func:`read_emd`): ``ModelFile`` (non-empty file name), ``Classes``
  (non-empty list; ``Value/Name`` or ``ClassValue/ClassName``) and the chip size in
  ``ImageHeight`` and/or ``ImageWidth`` (integers; both present must agree, geolearn trains square
  chips). Everything else has arcgis.learn's default: ``ModelParameters.backbone`` →
  ``'resnet50'``, ``scales``/``ratios`` → the paper's, ``ExtractBands`` → ``[0, 1, 2]``,
  ``IsMultispectral`` → False (ImageNet normalisation of 8-bit RGB). A key that is present with
  the wrong type is an error even where a missing one would be defaulted: a wrong value is a
  broken file, not an old one.
- **.dlpk extraction** (:func:`resolve_model`): into a cache folder named after the archive's
  SHA-256 (under ``$GEOLEARN_CACHE_DIR/dlpk``, else ``$XDG_CACHE_HOME/geolearn/dlpk``, else
  ``~/.cache/geolearn/dlpk``), never next to the user's files. Extraction goes to a temporary
  sibling that is renamed into place, so a cache folder that exists is complete and is reused.
  Every entry is checked *before* anything is written: absolute paths, ``..`` components,
  symbolic links and special files are refused.
- **Saving replaces the whole folder** (:func:`save_package`): a model folder is geolearn's own
  output, so a new save never mixes with files of the previous one. The new package is written
  into a hidden sibling folder and swapped in with two renames (previous → hidden backup, new →
  target; the backup is deleted last), so an interrupted save leaves the previous package, not a
  half-written one. An existing folder is only replaced when everything in it is something a
  model save writes (``<name>.pth/.emd/.dlpk``, ``<name>*.pt/.onnx``, ``model_metrics.html``,
  ``GeolearnObjectDetector.py``, ``ArcGISObjectDetector.py``, ``ModelCharacteristics/``, ``torch_scripts/``); anything else
  (notes, checkpoints, a user's documents) makes the save refuse rather than delete it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import os
import pickle
import re
import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from geolearn._version import __version__
from geolearn.data.esri import ClassInfo, parse_classes, read_json
from geolearn.data.normalization import Normalization
from geolearn.errors import LabelFormatError, ModelDefinitionError, OutputExistsError
from geolearn.models import raster_function
from geolearn.models.anchors import DEFAULT_RATIOS, DEFAULT_SCALES

__all__ = [
    "ModelDefinition",
    "build_emd",
    "read_emd",
    "resolve_model",
    "load_state_dict",
    "save_package",
    "ARCGIS_LEARN_VERSION",
    "INFERENCE_FUNCTION",
    "ARCGIS_INFERENCE_FUNCTION",
    "PRO_INFERENCE_FUNCTION",
    "CHARACTERISTICS_DIR",
    "METRICS_FILE",
]

logger = logging.getLogger(__name__)

# What arcgis.learn 2.4 writes for a RetinaNet (arcgis/learn/models/_retinanet.py, _arcgis_model.py).
FRAMEWORK = "arcgis.learn.models._inferencing"
# geolearn's own raster function, copied into every package (geolearn/models/raster_function.py).
# Pro finds it by this name next to the EMD; the class inside bears the same name.
INFERENCE_FUNCTION = "GeolearnObjectDetector.py"
# What arcgis.learn (and geolearn 0.1) named: Esri's script, which decodes box sizes from the
# centre channels (see geolearn.models.boxes.decode) and so draws geolearn's boxes near anchor size.
ARCGIS_INFERENCE_FUNCTION = "ArcGISObjectDetector.py"
# arcgis.learn's save(save_inference_file=False) points Pro at its own copy of Esri's script.
PRO_INFERENCE_FUNCTION = "[Functions]System\\DeepLearning\\ArcGISLearn\\ArcGISObjectDetector.py"
MODEL_CONFIGURATION = "_RetinaNet_Inference"
MODEL_TYPE = "ObjectDetection"
MODEL_NAME = "RetinaNet"
BACKEND = "pytorch"
ARCGIS_LEARN_VERSION = "2.4.0"
DEFAULT_BACKBONE = "resnet50"
CHARACTERISTICS_DIR = "ModelCharacteristics"
METRICS_FILE = "model_metrics.html"

# Keys of the "geolearn" object that build_emd fills itself; extras may not override them.
_GEOLEARN_RESERVED = ("version", "normalization", "scales", "ratios", "chip_size", "zoom", "cell_size",
                      "crs_wkt", "n_bands", "band_names", "threshold", "network_script")
# Top-level entries of a model folder that a save may replace besides <name>.* (see the module doc).
_PACKAGE_DIRS = (CHARACTERISTICS_DIR, "torch_scripts")
_PACKAGE_FILES = (METRICS_FILE, INFERENCE_FUNCTION, ARCGIS_INFERENCE_FUNCTION)
# Entries stored uncompressed in the .dlpk: deflating float weights or PNGs costs seconds, saves ~5 %.
_STORED_SUFFIXES = {".pth", ".pt", ".png", ".onnx"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------- the model definition


@dataclass(frozen=True)
class ModelDefinition:
    """A validated, normalised model definition: what geolearn needs to rebuild and run a model.

    Read from an EMD written by geolearn or by arcgis.learn (see :func:`read_emd`).

    Attributes:
        path: the ``.emd`` file.
        model_file: the weights file (``ModelFile`` resolved against the EMD's folder).
        backbone: e.g. ``'resnet50'``.
        scales: anchor scales.
        ratios: anchor height/width ratios.
        classes: object classes (no background), in file order.
        chip_size: side of the square training chips, pixels.
        extract_bands: 0-based bands of the imagery the model reads.
        is_multispectral: False for 8-bit RGB with ImageNet statistics.
        normalization: how raw pixels become network inputs.
        n_bands: input bands of the network.
        band_names: names of the bands when known.
        resize_to: side chips were resized to before cropping, or None.
        zoom: network pixels per imagery pixel (``resize_to`` over the exported chips' side;
            1.0 without ``resize_to``): prediction enlarges imagery by it.
        learning_rate: the (last) learning rate, or None when unknown.
        average_precision: ``{class name: AP}`` when computed at save time.
        cell_size: ground sample distance of the training data (CRS units), when known.
        crs_wkt: CRS of the training data (WKT), when known.
        threshold: the detection score threshold ``fit`` calibrated, or None (then 0.5).
        geolearn: the EMD's ``"geolearn"`` object (``{}`` in arcgis.learn's EMDs).
        emd: the EMD as read.

    Examples:
        See :func:`read_emd`, which returns it.
    """

    path: Path
    model_file: Path
    backbone: str
    scales: list[float]
    ratios: list[float]
    classes: list[ClassInfo]
    chip_size: int
    extract_bands: list[int]
    is_multispectral: bool
    normalization: Normalization
    n_bands: int
    band_names: list[str] | None = None
    resize_to: int | None = None
    zoom: float = 1.0
    learning_rate: float | None = None
    average_precision: dict[str, float] | None = None
    cell_size: float | None = None
    crs_wkt: str | None = None
    threshold: float | None = None
    geolearn: dict[str, Any] = field(default_factory=dict, repr=False)
    emd: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def class_mapping(self) -> dict[int, str]:
        """``{value: name}`` of the classes (arcgis.learn's ``data.class_mapping``)."""
        return {c.value: c.name for c in self.classes}

    @property
    def written_by_geolearn(self) -> bool:
        """Whether the EMD has a non-empty ``"geolearn"`` object (geolearn wrote it)."""
        return bool(self.geolearn)


def _format_learning_rate(learning_rate: float | slice | None) -> str:
    """arcgis.learn's spelling: ``'{:1.4e}'`` of the rate, ``'None'`` when unknown."""
    if isinstance(learning_rate, slice):  # the rate of the heads, as a float lr means in fit()
        learning_rate = learning_rate.stop
    if learning_rate is None:
        return "None"
    return f"{float(learning_rate):1.4e}"


def _spatial_reference(crs_wkt: str | None) -> dict[str, Any] | None:
    """Esri JSON spatial reference: ``{'wkid': EPSG}`` when the CRS has one, else ``{'wkt': ...}``."""
    if not crs_wkt:
        return None
    try:
        from rasterio.crs import CRS

        epsg = CRS.from_wkt(crs_wkt).to_epsg()
    except Exception:  # an unparsable WKT is kept as it is; Pro reports what it cannot read
        epsg = None
    return {"wkid": epsg, "latestWkid": epsg} if epsg is not None else {"wkt": crs_wkt}


def _cell_size_entry(cell_size: float | Mapping[str, Any] | None, crs_wkt: str | None) -> tuple[Any, float | None]:
    """``(MinCellSize/MaxCellSize value, GSD)``. Esri writes ``{"x", "y", "spatialReference"}``."""
    if cell_size is None:
        return None, None
    if isinstance(cell_size, Mapping):  # the export EMD's own MinCellSize, passed through
        x = cell_size.get("x")
        return dict(cell_size), float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
    value = float(cell_size)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"cell_size={cell_size!r}: give the training data's pixel size (> 0, CRS units) or None.")
    entry: dict[str, Any] = {"x": value, "y": value}
    reference = _spatial_reference(crs_wkt)
    if reference:
        entry["spatialReference"] = reference
    return entry, value


def _as_normalization(normalization: Normalization | Mapping[str, Any] | None) -> Normalization | None:
    if normalization is None or isinstance(normalization, Normalization):
        return normalization
    try:
        return Normalization.from_json(dict(normalization))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"normalization={normalization!r}: give a geolearn Normalization or its to_json() dict "
            f"(band_min, band_max, scaled_mean, scaled_std, imagenet); {err!r}."
        ) from None


def _normalization_stats(norm: Normalization) -> dict[str, list[float]]:
    """arcgis.learn's ``NormalizationStats``: raw band statistics and those of the min-max scaled bands.

    geolearn keeps ``band_min``, ``band_max`` and the scaled mean/std; the raw mean/std follow
    from ``raw = band_min + scaled * (band_max - band_min)``; scaled min and max are 0 and 1.
    """
    span = [hi - lo for lo, hi in zip(norm.band_min, norm.band_max)]
    return {
        "band_min_values": [float(v) for v in norm.band_min],
        "band_max_values": [float(v) for v in norm.band_max],
        "band_mean_values": [lo + m * s for lo, m, s in zip(norm.band_min, norm.mean, span)],
        "band_std_values": [sd * s for sd, s in zip(norm.std, span)],
        "scaled_min_values": [0.0] * norm.n_bands,
        "scaled_max_values": [1.0] * norm.n_bands,
        "scaled_mean_values": [float(v) for v in norm.mean],
        "scaled_std_values": [float(v) for v in norm.std],
    }


def _positive_numbers(values: Sequence[float], what: str) -> list[float]:
    numbers = [float(v) for v in values]
    if not numbers or not all(math.isfinite(v) and v > 0 for v in numbers):
        raise ValueError(f"{what}={list(values)!r}: give a non-empty list of positive numbers.")
    return numbers


def build_emd(
    *,
    model_file: str,
    backbone: str,
    scales: Sequence[float],
    ratios: Sequence[float],
    classes: Sequence[ClassInfo],
    chip_size: int,
    extract_bands: Sequence[int],
    learning_rate: float | slice | None = None,
    resize_to: int | None = None,
    zoom: float = 1.0,
    is_multispectral: bool = False,
    normalization: Normalization | Mapping[str, Any] | None = None,
    average_precision: Mapping[str, float] | None = None,
    cell_size: float | Mapping[str, Any] | None = None,
    crs_wkt: str | None = None,
    extras: Mapping[str, Any] | None = None,
    n_bands: int | None = None,
    band_names: Sequence[str] | None = None,
    threshold: float | None = None,
    network_script: str | None = None,
    imagery_type: str | None = None,
    image_space_used: str = "MAP_SPACE",
    inference_function: str = INFERENCE_FUNCTION,
) -> dict[str, Any]:
    """The EMD of a RetinaNet model, with every key arcgis.learn 2.4 writes (CONTRACT §4).

    Keys, spellings and types follow arcgis.learn's ``_get_emd_params`` and
    ``_create_emd_template``: ``LearningRate`` is a string (``'1.0000e-03'``, ``'None'``),
    ``MinCellSize``/``MaxCellSize`` are Esri ``{"x", "y", "spatialReference"}`` objects (or null),
    ``average_precision_score`` is ``{class name: AP}`` (null when not computed). Multispectral
    models add ``Bands``, ``ImageryType``, ``NormalizationStats`` and ``DoNormalize``. What only
    geolearn needs (its normalisation, anchors, chip size, GSD and CRS of the training data,
    band count and names, and ``extras``) sits under the one ``"geolearn"`` key.

    All arguments are keyword only.

    Args:
        model_file: the weights' file name (``'<name>.pth'``), relative to the EMD.
        backbone: backbone name, e.g. ``'resnet50'``.
        scales: anchor scales (positive numbers).
        ratios: anchor height/width ratios (positive numbers).
        classes: object classes (no background).
        chip_size: side of the square training chips, pixels.
        extract_bands: 0-based bands of the imagery the model reads.
        learning_rate: the last learning rate (a slice counts as its top), or None (the default).
        resize_to: side chips were resized to before cropping, pixels, or None (the default).
        zoom: network pixels per imagery pixel, > 0 (``resize_to`` over the exported chips'
            side). Default 1.0.
        is_multispectral: False (the default) for 8-bit RGB with ImageNet statistics.
        normalization: the data's :class:`Normalization` (or its ``to_json()`` dict); required
            for multispectral models; None (the default) means ImageNet statistics of 8-bit RGB.
        average_precision: ``{class name: AP}``, or None (the default) when not computed.
        cell_size: pixel size of the training data in CRS units (or the export EMD's
            ``MinCellSize`` object), None (the default) when unknown.
        crs_wkt: CRS of the training data as WKT, None (the default) when unknown.
        extras: more entries for the ``"geolearn"`` object (not its reserved keys). Default None.
        n_bands: input bands; default ``len(extract_bands)``.
        band_names: band names, when known. Default None.
        threshold: the detection score threshold ``fit`` calibrated (0–1), or None (the
            default: readers use 0.5).
        network_script: the package's TorchScript file for the raster function
            (:func:`geolearn.models.portable.script_bytes`), relative to the EMD, or None.
        imagery_type: arcgis.learn's ``imagery_type`` for multispectral models (default ``'ms'``).
        image_space_used: ``'MAP_SPACE'`` (the default) or ``'PIXEL_SPACE'`` (the export's
            reference system).
        inference_function: the raster function ArcGIS Pro runs: geolearn's own,
            ``'GeolearnObjectDetector.py'`` (the default, :data:`INFERENCE_FUNCTION`), which
            :func:`save_package` copies next to the EMD and which needs ``network_script``;
            arcgis.learn's names (:data:`ARCGIS_INFERENCE_FUNCTION`,
            :data:`PRO_INFERENCE_FUNCTION`) run Esri's script, which decodes geolearn's box
            sizes wrongly (see docs/model-packages.md).

    Returns:
        The EMD as a JSON-serialisable dict (keys in arcgis.learn's order).

    Raises:
        ValueError: an argument that would make an EMD no reader accepts.

    Examples:
        >>> from geolearn.data.esri import ClassInfo
        >>> emd = build_emd(model_file="pools.pth", backbone="resnet50", scales=[1.0, 0.5], ratios=[1.0],
        ...                 classes=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=256,
        ...                 extract_bands=[0, 1, 2], learning_rate=slice(1e-4, 1e-3))
        >>> emd["ModelFile"], emd["ImageHeight"], emd["LearningRate"], emd["ModelParameters"]["scales"]
        ('pools.pth', 256, '1.0000e-03', [1.0, 0.5])
        >>> emd["Classes"]
        [{'Value': 1, 'Name': 'pool', 'Color': [0, 168, 132]}]
    """
    if not model_file or Path(model_file).name != model_file:
        raise ValueError(f"model_file={model_file!r}: give the weights' file name relative to the EMD, e.g. 'pools.pth'.")
    if isinstance(chip_size, bool) or not isinstance(chip_size, int) or chip_size <= 0:
        raise ValueError(f"chip_size={chip_size!r}: give the training chips' side in pixels (a positive int).")
    if not classes or not all(isinstance(c, ClassInfo) for c in classes):
        raise ValueError(f"classes={classes!r}: give a non-empty list of ClassInfo (value, name, color).")
    bands = [int(b) for b in extract_bands]
    if not bands or min(bands) < 0:
        raise ValueError(f"extract_bands={list(extract_bands)!r}: give 0-based band indices, e.g. [0, 1, 2].")
    n_bands = len(bands) if n_bands is None else int(n_bands)
    norm = _as_normalization(normalization)
    if is_multispectral and norm is None:
        raise ValueError("is_multispectral=True needs normalization= (the data's band statistics).")
    if norm is not None and norm.n_bands != n_bands:
        raise ValueError(f"normalization has {norm.n_bands} bands, the model reads {n_bands}: pass the data's own.")
    if not zoom > 0:
        raise ValueError(f"zoom={zoom!r}: network pixels per imagery pixel, a number > 0 (1.0 without resize_to).")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"threshold={threshold!r}: a detection score between 0 and 1, or None.")
    cell_entry, gsd = _cell_size_entry(cell_size, crs_wkt)
    extras = dict(extras or {})
    clash = sorted(set(extras) & set(_GEOLEARN_RESERVED))
    if clash:
        raise ValueError(f"extras: keys {clash} are written by build_emd itself; pass them as its arguments.")
    ap = None
    if average_precision is not None:
        # NaN is not JSON: a class whose AP cannot be computed is written as null.
        ap = {str(k): (float(v) if v is not None and math.isfinite(float(v)) else None)
              for k, v in average_precision.items()}

    emd: dict[str, Any] = {
        "Framework": FRAMEWORK,
        "InferenceFunction": inference_function,
        "ModelConfiguration": MODEL_CONFIGURATION,
        "ModelType": MODEL_TYPE,
        "ExtractBands": bands,
        "ModelParameters": {
            "scales": _positive_numbers(scales, "scales"),
            "ratios": _positive_numbers(ratios, "ratios"),
            "backbone": str(backbone),
            "backend": BACKEND,
        },
        "Classes": [c.to_esri() for c in classes],
        "ModelFormat": "NCHW",
        "MinCellSize": cell_entry,
        "MaxCellSize": dict(cell_entry) if isinstance(cell_entry, dict) else cell_entry,
        "SupportsVariableTileSize": False,
        "ArcGISLearnVersion": ARCGIS_LEARN_VERSION,
        "ModelFile": model_file,
        "ImageHeight": chip_size,
        "ImageWidth": chip_size,
        "ImageSpaceUsed": image_space_used,
        "LearningRate": _format_learning_rate(learning_rate),
        "ModelName": MODEL_NAME,
        "backend": BACKEND,
        "average_precision_score": ap,
        "resize_to": int(resize_to) if resize_to else None,
        "IsMultispectral": bool(is_multispectral),
        "IsImageNetNormalization": bool(norm.imagenet) if norm is not None else not is_multispectral,
    }
    if is_multispectral:
        emd["Bands"] = list(band_names) if band_names else [f"Band_{b + 1}" for b in bands]
        emd["ImageryType"] = imagery_type or "ms"
        emd["NormalizationStats"] = _normalization_stats(norm)
        emd["DoNormalize"] = True
    emd["geolearn"] = {
        "version": __version__,
        "normalization": norm.to_json() if norm is not None else None,
        "scales": emd["ModelParameters"]["scales"],
        "ratios": emd["ModelParameters"]["ratios"],
        "chip_size": chip_size,
        "zoom": float(zoom),
        "cell_size": gsd,
        "crs_wkt": crs_wkt,
        "n_bands": n_bands,
        "band_names": list(band_names) if band_names else None,
        "threshold": float(threshold) if threshold is not None else None,
        "network_script": network_script,
        **extras,
    }
    return emd


# ----------------------------------------------------------------------------- reading an EMD


_MISSING = object()


def _describe(value: Any) -> str:
    if value is _MISSING:
        return "nothing (the key is missing)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


class _EmdReader:
    """Typed access to an EMD's keys; every failure names the file, the key, the value and a fix."""

    def __init__(self, emd: dict[str, Any], path: Path) -> None:
        self.emd = emd
        self.path = path

    def error(self, key: str, expected: str, found: Any, fix: str) -> ModelDefinitionError:
        return ModelDefinitionError(f"{self.path}: key '{key}' must be {expected}, found {_describe(found)}. {fix}")

    def get(self, key: str, container: dict[str, Any] | None = None) -> Any:
        return (self.emd if container is None else container).get(key, _MISSING)

    def integer(self, key: str, value: Any, *, minimum: int = 1, fix: str = "") -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"an integer >= {minimum}", value, fix)
        return value

    def numbers(self, key: str, value: Any, fix: str) -> list[float]:
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                           for v in value)):
            raise self.error(key, "a non-empty list of positive numbers", value, fix)
        return [float(v) for v in value]


def _parse_learning_rate(value: Any) -> float | None:
    """arcgis.learn writes ``'1.0000e-03'``, ``"slice('1e-04', '1e-03', None)"``, ``'None'`` or ``'0.0'``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        match = re.fullmatch(r"slice\((.*)\)", text)
        if match:  # the top of the slice: the rate of the heads, as a float lr means in fit()
            parts = [p.strip().strip("'\"") for p in match.group(1).split(",")]
            text = parts[1] if len(parts) > 1 else parts[0]
        try:
            value = float(text.strip("'\""))
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None  # arcgis.learn writes '0.0' for models whose rate it does not know
    return float(value)


def _parse_average_precision(value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): float(v) for k, v in value.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _read_chip_size(reader: _EmdReader) -> int:
    fix = "Set it to the training chip size in pixels, e.g. \"ImageHeight\": 256, \"ImageWidth\": 256."
    height, width = reader.get("ImageHeight"), reader.get("ImageWidth")
    if height is _MISSING and width is _MISSING:
        raise reader.error("ImageHeight", "the chip size in pixels (ImageHeight/ImageWidth)", _MISSING, fix)
    sizes = {key: reader.integer(key, value, fix=fix)
             for key, value in (("ImageHeight", height), ("ImageWidth", width)) if value is not _MISSING}
    if len(set(sizes.values())) > 1:
        raise ModelDefinitionError(
            f"{reader.path}: ImageHeight {sizes['ImageHeight']} and ImageWidth {sizes['ImageWidth']} differ; "
            "geolearn's RetinaNet is trained on square chips. Make them equal to the training chip size."
        )
    return next(iter(sizes.values()))


def _read_classes(reader: _EmdReader) -> list[ClassInfo]:
    entries = reader.get("Classes")
    fix = "Give the classes the model was trained on, e.g. \"Classes\": [{\"Value\": 1, \"Name\": \"pool\", \"Color\": [0, 168, 132]}]."
    if not isinstance(entries, list) or not entries:
        raise reader.error("Classes", "a non-empty list of {Value, Name, Color}", entries, fix)
    if not all(isinstance(entry, dict) for entry in entries):
        raise reader.error("Classes", "a list of objects {Value, Name, Color}", entries, fix)
    try:
        classes = parse_classes(reader.emd, reader.path)
    except LabelFormatError as err:
        raise ModelDefinitionError(f"{err} {fix}") from None
    for attribute in ("value", "name"):
        seen = [getattr(c, attribute) for c in classes]
        duplicates = sorted({v for v in seen if seen.count(v) > 1}, key=str)
        if duplicates:
            raise ModelDefinitionError(
                f"{reader.path}: key 'Classes' repeats the class {attribute} {duplicates}; each class needs "
                "its own Value and Name. Fix the EMD from the training data's esri_model_definition.emd."
            )
    return classes


def _read_normalization(reader: _EmdReader, geolearn: dict[str, Any], is_multispectral: bool,
                        n_bands: int) -> Normalization:
    """geolearn's own statistics when present, else arcgis.learn's ``NormalizationStats``, else ImageNet."""
    if geolearn.get("normalization") is not None:
        try:
            norm = Normalization.from_json(geolearn["normalization"])
        except (KeyError, TypeError, ValueError):
            raise reader.error(
                "geolearn.normalization", "{band_min, band_max, scaled_mean, scaled_std, imagenet}",
                geolearn["normalization"], "Save the model again with geolearn, or delete the key to use "
                "NormalizationStats / ImageNet statistics.") from None
    elif is_multispectral:
        stats = reader.get("NormalizationStats")
        names = ("band_min_values", "band_max_values", "scaled_mean_values", "scaled_std_values")
        fix = ("A multispectral model needs its band statistics: save it again from the training data "
               "(prepare_data computes them).")
        if not isinstance(stats, dict):
            raise reader.error("NormalizationStats", "an object with band_/scaled_ min/max/mean/std values", stats, fix)
        columns = []
        for name in names:
            values = stats.get(name, _MISSING)
            if (not isinstance(values, list)
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise reader.error(f"NormalizationStats.{name}", f"a list of {n_bands} numbers", values, fix)
            columns.append(tuple(float(v) for v in values))
        band_min, band_max, mean, std = columns
        if reader.emd.get("DoNormalize") is False:  # min-max scaling only, no standardisation
            mean, std = (0.0,) * len(band_min), (1.0,) * len(band_min)
        norm = Normalization(band_min, band_max, mean, std, False)
    else:
        if n_bands != 3:
            raise ModelDefinitionError(
                f"{reader.path}: an RGB model (IsMultispectral false) must read 3 bands, ExtractBands gives "
                f"{n_bands}. Set \"IsMultispectral\": true with its NormalizationStats, or fix ExtractBands."
            )
        norm = Normalization.for_rgb8()
    if any(len(column) != n_bands for column in (norm.band_min, norm.band_max, norm.mean, norm.std)):
        raise ModelDefinitionError(
            f"{reader.path}: the normalisation statistics do not have one value per band for the model's "
            f"{n_bands} bands (ExtractBands). Save the model again from its training data."
        )
    return norm


def read_emd(path: str | Path, *, require_model_file: bool = True) -> ModelDefinition:
    """Reads and validates a RetinaNet EMD written by geolearn or by arcgis.learn.

    Older keys (``ClassValue``/``ClassName``) are accepted and missing optional keys get
    arcgis.learn's defaults (see the module docstring for which keys are required).

    Args:
        path: the ``.emd`` file.
        require_model_file: the weights file ``ModelFile`` names must exist. Default True.
            Keyword only.

    Returns:
        The normalised :class:`ModelDefinition`.

    Raises:
        FileNotFoundError: the EMD, or the weights it names, do not exist.
        ModelDefinitionError: not JSON, a required key missing, a key with the wrong type, or a
            model that is not a RetinaNet.

    Examples:
        >>> import tempfile
        >>> from geolearn.data.esri import ClassInfo
        >>> emd = build_emd(model_file="pools.pth", backbone="resnet18", scales=[1.0], ratios=[1.0],
        ...                 classes=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=256, extract_bands=[0, 1, 2])
        >>> folder = save_package(Path(tempfile.mkdtemp()) / "pools", "pools", state_dict={"w": torch.zeros(2)}, emd=emd)
        >>> definition = read_emd(folder / "pools.emd")
        >>> definition.backbone, definition.chip_size, definition.class_mapping, definition.model_file.name
        ('resnet18', 256, {1: 'pool'}, 'pools.pth')
        >>> definition.normalization.imagenet, definition.learning_rate
        (True, None)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model definition (.emd) file.")
    try:
        emd = read_json(path)
    except LabelFormatError as err:
        raise ModelDefinitionError(str(err)) from None
    reader = _EmdReader(emd, path)

    for key, expected in (("ModelName", MODEL_NAME), ("ModelConfiguration", MODEL_CONFIGURATION)):
        value = emd.get(key)
        normalised = "".join(ch for ch in value if ch.isalnum()) if isinstance(value, str) else value
        if value is not None and normalised != "".join(ch for ch in expected if ch.isalnum()):
            raise reader.error(key, repr(expected), value,
                               "geolearn loads RetinaNet models only; load this model with arcgis.learn.")

    model_file = reader.get("ModelFile")
    if not isinstance(model_file, str) or not model_file.strip():
        raise reader.error("ModelFile", "the weights' file name (e.g. \"pools.pth\")", model_file,
                           "Set it to the .pth file saved with the model, relative to the .emd.")
    # An EMD written on Windows may use backslashes; relative names resolve against the EMD's folder.
    model_path = Path(model_file.replace("\\", "/"))
    if not model_path.is_absolute():
        model_path = path.parent / model_path
    if require_model_file and not model_path.is_file():
        raise FileNotFoundError(
            f"{path}: ModelFile {model_file!r} -> {model_path} does not exist. Keep the .pth next to the .emd "
            "(copy the whole model folder, or use the .dlpk)."
        )

    chip_size = _read_chip_size(reader)
    classes = _read_classes(reader)

    geolearn = reader.get("geolearn")
    if geolearn is _MISSING or geolearn is None:
        geolearn = {}
    elif not isinstance(geolearn, dict):
        raise reader.error("geolearn", "an object", geolearn, "Delete the key or save the model again with geolearn.")

    parameters = reader.get("ModelParameters")
    if parameters is _MISSING or parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise reader.error("ModelParameters", "an object {backbone, scales, ratios}", parameters,
                           "Write e.g. \"ModelParameters\": {\"backbone\": \"resnet50\"}.")
    backbone = parameters.get("backbone", DEFAULT_BACKBONE)
    if not isinstance(backbone, str) or not backbone:
        raise reader.error("ModelParameters.backbone", "a backbone name such as 'resnet50'", backbone,
                           "Set it to the backbone the model was trained with.")
    anchors_fix = "Set it to the anchors the model was trained with (arcgis.learn's default is used when absent)."
    scales = (reader.numbers("ModelParameters.scales", parameters["scales"], anchors_fix)
              if parameters.get("scales") is not None else list(DEFAULT_SCALES))
    ratios = (reader.numbers("ModelParameters.ratios", parameters["ratios"], anchors_fix)
              if parameters.get("ratios") is not None else list(DEFAULT_RATIOS))

    n_bands_hint = geolearn.get("n_bands")
    bands = reader.get("ExtractBands")
    if bands is _MISSING or bands is None:
        bands = list(range(n_bands_hint)) if isinstance(n_bands_hint, int) and n_bands_hint > 0 else [0, 1, 2]
    elif (not isinstance(bands, list) or not bands
          or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bands)):
        raise reader.error("ExtractBands", "a non-empty list of 0-based band indices", bands,
                           "Write e.g. \"ExtractBands\": [0, 1, 2].")
    n_bands = len(bands)
    if isinstance(n_bands_hint, int) and n_bands_hint != n_bands:
        raise ModelDefinitionError(
            f"{path}: geolearn.n_bands is {n_bands_hint} but ExtractBands lists {n_bands} bands; "
            "make them agree (the network's input bands)."
        )

    is_multispectral = emd.get("IsMultispectral", False)
    if not isinstance(is_multispectral, bool):
        raise reader.error("IsMultispectral", "true or false", is_multispectral,
                           "false for 8-bit RGB imagery, true otherwise.")
    normalization = _read_normalization(reader, geolearn, is_multispectral, n_bands)

    resize_to = emd.get("resize_to")
    if isinstance(resize_to, list) and len(resize_to) == 2 and resize_to[0] == resize_to[1]:
        resize_to = resize_to[0]  # arcgis.learn writes a (height, width) tuple as a list
    if resize_to is not None:
        resize_to = reader.integer("resize_to", resize_to, fix="Give one side in pixels, or null.")

    zoom = geolearn.get("zoom", 1.0)
    if isinstance(zoom, bool) or not isinstance(zoom, (int, float)) or not 0 < zoom < float("inf"):
        raise reader.error("geolearn.zoom", "a number > 0", zoom,
                           "Set it to resize_to over the exported chips' side (1.0 without resize_to).")

    band_names = geolearn.get("band_names")
    if band_names is None and is_multispectral and isinstance(emd.get("Bands"), list):
        band_names = emd["Bands"]
    if band_names is not None and not (isinstance(band_names, list) and all(isinstance(b, str) for b in band_names)):
        raise reader.error("geolearn.band_names", "a list of band names", band_names, "Delete it or fix it.")

    threshold = geolearn.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 <= threshold <= 1):
        raise reader.error("geolearn.threshold", "a score between 0 and 1, or null", threshold,
                           "Set it to the detection threshold to use, or delete it (0.5 is used).")

    cell_size = geolearn.get("cell_size")
    if cell_size is None:  # arcgis.learn: the training GSD only when the export had a single one
        low, high = emd.get("MinCellSize"), emd.get("MaxCellSize")
        if isinstance(low, dict) and low == high and isinstance(low.get("x"), (int, float)):
            cell_size = float(low["x"])

    return ModelDefinition(
        path=path,
        model_file=model_path,
        backbone=backbone,
        scales=scales,
        ratios=ratios,
        classes=classes,
        chip_size=chip_size,
        extract_bands=list(bands),
        is_multispectral=is_multispectral,
        normalization=normalization,
        n_bands=n_bands,
        band_names=list(band_names) if band_names is not None else None,
        resize_to=resize_to,
        zoom=float(zoom),
        learning_rate=_parse_learning_rate(emd.get("LearningRate")),
        average_precision=_parse_average_precision(emd.get("average_precision_score")),
        cell_size=float(cell_size) if isinstance(cell_size, (int, float)) and not isinstance(cell_size, bool) else None,
        crs_wkt=geolearn.get("crs_wkt") if isinstance(geolearn.get("crs_wkt"), str) else None,
        threshold=float(threshold) if threshold is not None else None,
        geolearn=geolearn,
        emd=emd,
    )


# ----------------------------------------------------------------------------- finding the EMD


def _cache_dir() -> Path:
    """Where .dlpk archives are extracted: ``$GEOLEARN_CACHE_DIR`` or ``<user cache>/geolearn``."""
    if os.environ.get("GEOLEARN_CACHE_DIR"):
        return Path(os.environ["GEOLEARN_CACHE_DIR"]) / "dlpk"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geolearn" / "dlpk"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_entries(archive: zipfile.ZipFile, dlpk: Path) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Each entry with the relative path it extracts to; refuses any entry that could leave the folder.

    Raises:
        ModelDefinitionError: an absolute path, a ``..`` component, a symbolic link or a special file.
    """
    fix = "Rebuild the package from its model folder (geolearn save, or arcgis.learn save)."
    entries = []
    for info in archive.infolist():
        name = info.filename
        posix = name.replace("\\", "/")  # zips made on Windows may use backslashes
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise ModelDefinitionError(f"{dlpk}: entry {name!r} is a symbolic link; geolearn refuses links in a .dlpk. {fix}")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise ModelDefinitionError(f"{dlpk}: entry {name!r} is not a regular file or folder. {fix}")
        if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
            raise ModelDefinitionError(f"{dlpk}: entry {name!r} has an absolute path; entries must be relative. {fix}")
        parts = [part for part in posix.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise ModelDefinitionError(f"{dlpk}: entry {name!r} points outside the package ('..'). {fix}")
        if parts:
            entries.append((info, PurePosixPath(*parts)))
    return entries


def _extract_dlpk(dlpk: Path, cache: Path) -> Path:
    """Extracts ``dlpk`` into ``cache/<stem>-<sha256[:16]>`` (reused when present) and returns it."""
    try:
        archive = zipfile.ZipFile(dlpk)
    except zipfile.BadZipFile:
        raise ModelDefinitionError(f"{dlpk}: not a .dlpk (zip) archive, or a damaged one. Copy it again.") from None
    with archive:
        entries = _safe_entries(archive, dlpk)  # all checked before anything is written
        target = cache / f"{dlpk.stem}-{_sha256(dlpk)[:16]}"
        if target.is_dir():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        staging = cache / f".{target.name}.extracting-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            for info, relative in entries:
                destination = staging.joinpath(*relative.parts)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # not a concurrent extraction of the same archive
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info("extracted %s into %s", dlpk, target)
    return target


def _single_emd(folder: Path, origin: Path) -> Path:
    emds = sorted(folder.glob("*.emd"))
    if not emds:  # a package zipped with its folder as the top-level entry
        emds = sorted(p for p in folder.rglob("*.emd") if CHARACTERISTICS_DIR not in p.parts)
    if len(emds) == 1:
        return emds[0]
    if not emds:
        listing = sorted(p.name for p in folder.iterdir())[:20]
        raise FileNotFoundError(
            f"{origin}: no model definition (.emd) found (it holds {listing}). Give the model's .emd, "
            "its folder or its .dlpk."
        )
    names = [str(p.relative_to(folder)) for p in emds]
    raise ModelDefinitionError(
        f"{origin}: holds {len(emds)} model definitions {names}; give the path of the one to load "
        "(or keep one model per folder, as save() does)."
    )


def resolve_model(path: str | Path, *, extract_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The EMD of a saved model and the folder it lives in.

    Args:
        path: a ``.emd``, a folder holding exactly one ``.emd``, or a ``.dlpk``.
        extract_dir: where ``.dlpk`` archives are extracted (a subfolder per archive, named
            after the archive and its SHA-256, reused when present). Default None: the user cache
            (``$GEOLEARN_CACHE_DIR/dlpk``, else ``$XDG_CACHE_HOME/geolearn/dlpk``, else
            ``~/.cache/geolearn/dlpk``). Keyword only.

    Returns:
        ``(emd path, its folder)``.

    Raises:
        FileNotFoundError: the path does not exist, or holds no ``.emd``.
        ModelDefinitionError: several ``.emd`` files, an unsafe or damaged ``.dlpk``, or another kind of file.

    Examples:
        >>> import tempfile
        >>> from geolearn.data.esri import ClassInfo
        >>> emd = build_emd(model_file="pools.pth", backbone="resnet18", scales=[1.0], ratios=[1.0],
        ...                 classes=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=256, extract_bands=[0, 1, 2])
        >>> folder = save_package(Path(tempfile.mkdtemp()) / "pools", "pools", state_dict={"w": torch.zeros(2)}, emd=emd)
        >>> resolve_model(folder) == (folder / "pools.emd", folder)
        True
        >>> emd_path, extracted = resolve_model(folder / "pools.dlpk", extract_dir=folder.parent / "cache")
        >>> emd_path.name, extracted.parent == folder.parent / "cache"
        ('pools.emd', True)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model; give a model's .emd, its folder or its .dlpk.")
    if path.is_dir():
        emd = _single_emd(path, path)
    elif path.suffix.lower() == ".emd":
        emd = path
    elif path.suffix.lower() == ".dlpk":
        cache = Path(extract_dir) if extract_dir is not None else _cache_dir()
        emd = _single_emd(_extract_dlpk(path, cache), path)
    else:
        raise ModelDefinitionError(
            f"{path}: a {path.suffix or 'suffix-less'} file is not a model package; give the model's .emd, "
            "its folder or its .dlpk."
        )
    return emd, emd.parent


# ----------------------------------------------------------------------------- weights


def load_state_dict(pth_path: str | Path) -> dict[str, Tensor]:
    """Loads weights saved by geolearn or arcgis.learn, safely (``weights_only=True``, on the CPU).

    Accepts the two forms arcgis.learn writes: a plain state_dict, or exactly
    ``{'model': state_dict, 'opt': optimizer state}``.

    Args:
        pth_path: the ``.pth`` file.

    Returns:
        The state_dict, ``{parameter name: tensor}`` on the CPU (the optimizer state is dropped).

    Raises:
        FileNotFoundError: no such file.
        ModelDefinitionError: a file that needs unsafe unpickling, is damaged, or holds something else.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "pools.pth"
        >>> torch.save({"model": {"w": torch.ones(2)}, "opt": {}}, path)  # arcgis.learn's form with optimizer
        >>> load_state_dict(path)
        {'w': tensor([1., 1.])}
    """
    path = Path(pth_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights (.pth) file.")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelDefinitionError(
            f"{path}: cannot be loaded as plain weights ({reason}). geolearn loads with "
            "torch.load(weights_only=True) and never runs code from a model file; save the weights "
            "as a state_dict (torch.save(model.state_dict(), ...))."
        ) from None
    state = content
    if isinstance(content, Mapping) and set(content) == {"model", "opt"}:
        state = content["model"]
    if (isinstance(state, Mapping) and state
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())):
        return dict(state)
    if isinstance(content, Mapping):
        keys = list(content)[:6]
        found = f"a dict with keys {keys}{' ...' if len(content) > 6 else ''}"
    else:
        found = type(content).__name__
    raise ModelDefinitionError(
        f"{path}: expected a state_dict (parameter names -> tensors) or exactly {{'model': state_dict, "
        f"'opt': optimizer state}}, found {found}. Save with torch.save(model.state_dict(), path)."
    )


def _cpu(value: Any) -> Any:
    """Tensors moved to the CPU (no copy when already there), containers rebuilt."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


# ----------------------------------------------------------------------------- writing a package


def _is_package_entry(entry: Path, name: str, extra_top: set[str]) -> bool:
    """Whether a top-level entry of an existing model folder is something a save writes."""
    if entry.name in extra_top:
        return True
    if entry.is_dir() and not entry.is_symlink():
        return entry.name in _PACKAGE_DIRS
    if entry.name in _PACKAGE_FILES or entry.name in (f"{name}.pth", f"{name}.emd", f"{name}.dlpk"):
        return True
    return entry.name.startswith(name) and entry.suffix in (".pt", ".onnx")


def _check_replaceable(folder: Path, name: str, overwrite: bool, extra_top: set[str]) -> None:
    if not folder.is_dir() or folder.is_symlink():
        raise OutputExistsError(f"{folder}: exists and is not a plain folder (a file or a link); save the model "
                                "under another name or path.")
    entries = sorted(folder.iterdir())
    if not entries:
        return
    if not overwrite:
        raise OutputExistsError(f"{folder}: already holds a saved model; pass overwrite=True or save under another name.")
    foreign = [e.name for e in entries if not _is_package_entry(e, name, extra_top)]
    if foreign:
        raise OutputExistsError(
            f"{folder}: holds files a model save did not write: {foreign[:10]}{' ...' if len(foreign) > 10 else ''}. "
            "A save replaces the model folder as a whole and never deletes what it did not write: move "
            "them elsewhere, or save the model into a new or empty folder."
        )


def _write_figures(staging: Path, figures: Mapping[str, Any]) -> dict[str, Path]:
    written = {}
    for key, figure in figures.items():
        if figure is None:
            continue
        if not _NAME.match(key):
            raise ValueError(f"figures: key {key!r} must be a plain file stem such as 'loss_graph'.")
        target = staging / CHARACTERISTICS_DIR / f"{key}.png"
        target.parent.mkdir(exist_ok=True)
        figure.savefig(target, format="png", dpi=100, bbox_inches="tight")
        written[key] = target
    return written


def _write_extra_files(staging: Path, extra_files: Mapping[str, bytes | str | Path], reserved: set[str]) -> None:
    for relative, content in extra_files.items():
        posix = relative.replace("\\", "/")
        parts = PurePosixPath(posix).parts
        if (not parts or PurePosixPath(posix).is_absolute() or ".." in parts
                or re.match(r"^[A-Za-z]:", relative) or parts[0] in reserved):
            raise ValueError(f"extra_files: {relative!r} must be a relative path inside the package, not "
                             f"one of the package's own files {sorted(reserved)}.")
        target = staging.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)


def _metrics_html(name: str, emd: Mapping[str, Any], images: Mapping[str, Path], metrics: Mapping[str, Any] | None) -> str:
    """``model_metrics.html``: what arcgis.learn's page shows, readable and self-contained."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return html.escape(f"{value:.4g}")
        if isinstance(value, (dict, list)):
            return html.escape(json.dumps(value))
        return html.escape(str(value))

    def table(rows: Sequence[tuple[Any, Any]], header: tuple[str, str] | None = None) -> str:
        head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>" if header else ""
        body = "".join(f"<tr><th scope=\"row\">{cell(k)}</th><td>{cell(v)}</td></tr>" for k, v in rows)
        return f"<table>{head}{body}</table>"

    parameters = emd.get("ModelParameters") or {}
    summary = [
        ("Model", emd.get("ModelName", MODEL_NAME)),
        ("Backbone", parameters.get("backbone", "")),
        ("Learning rate", emd.get("LearningRate", "None")),
        ("Chip size", f"{emd.get('ImageWidth')} × {emd.get('ImageHeight')} px"),
        ("Classes", ", ".join(str(c.get("Name", c.get("ClassName", ""))) for c in emd.get("Classes", []))),
        ("Bands read", emd.get("ExtractBands")),
        ("Saved by", f"geolearn {(emd.get('geolearn') or {}).get('version', '')}".strip()),
    ]
    sections = [f"<h1>{html.escape(str(emd.get('ModelName', MODEL_NAME)))} model “{html.escape(name)}”</h1>",
                table(summary)]
    ap = emd.get("average_precision_score")
    sections.append("<h2>Average precision per class</h2>")
    if isinstance(ap, dict) and ap:
        rows = [(k, v if v is not None else "n/a") for k, v in ap.items()]
        values = [v for v in ap.values() if isinstance(v, (int, float))]
        if values:
            rows.append(("mean", sum(values) / len(values)))
        sections.append(table(rows, ("Class", "Average precision")))
    else:
        sections.append("<p>Not computed (save with compute_metrics=True).</p>")
    if metrics:
        sections.append("<h2>Training</h2>")
        sections.append(table(list(metrics.items()), ("Metric", "Value")))
    titles = {"loss_graph": "Training and validation loss", "show_results": "Sample results (ground truth | predictions)"}
    for key in sorted(images, key=lambda k: (k not in titles, list(titles).index(k) if k in titles else 0, k)):
        encoded = base64.b64encode(images[key].read_bytes()).decode("ascii")
        title = titles.get(key, key.replace("_", " ").capitalize())
        sections.append(f"<h2>{html.escape(title)}</h2>\n<img src=\"data:image/png;base64,{encoded}\" "
                        f"alt=\"{html.escape(title)}\">")
    style = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .8em;"
             "text-align:left}th{background:#f5f5f5}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(name)}: model metrics</title>\n<style>{style}</style>\n</head>\n<body>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def _write_dlpk(staging: Path, name: str) -> Path:
    """``<name>.dlpk``: a zip of every other file of the package, relative POSIX paths, sorted."""
    target = staging / f"{name}.dlpk"
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p != target)
    with zipfile.ZipFile(target, "w", allowZip64=True) as archive:
        for file in files:
            compression = zipfile.ZIP_STORED if file.suffix in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            archive.write(file, file.relative_to(staging).as_posix(), compress_type=compression)
    return target


def _write_package(staging: Path, name: str, state_dict: Mapping[str, Tensor], emd: Mapping[str, Any],
                   optimizer_state: Mapping[str, Any] | None, figures: Mapping[str, Any] | None,
                   metrics: Mapping[str, Any] | None, extra_files: Mapping[str, bytes | str | Path] | None) -> None:
    weights = staging / f"{name}.pth"
    state = {key: _cpu(value) for key, value in state_dict.items()}
    if optimizer_state is None:
        torch.save(state, weights)
    else:
        torch.save({"model": state, "opt": _cpu(dict(optimizer_state))}, weights)
        try:  # the package must load the way geolearn and arcgis.learn load it
            torch.load(weights, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"optimizer_state holds values torch.load(weights_only=True) refuses "
                             f"({str(err).splitlines()[0]}); pass only tensors, numbers, strings, lists and dicts.") from None
    emd = dict(emd)
    emd["ModelFile"] = weights.name  # the package is self-consistent whatever name it is saved under
    (staging / f"{name}.emd").write_text(json.dumps(emd, indent=2, allow_nan=False), encoding="utf-8")
    images = _write_figures(staging, figures or {})
    reserved = {weights.name, f"{name}.emd", f"{name}.dlpk", METRICS_FILE}
    if emd.get("InferenceFunction") == INFERENCE_FUNCTION:  # the EMD names it: Pro looks for it beside the EMD
        shutil.copyfile(raster_function.__file__, staging / INFERENCE_FUNCTION)
        reserved.add(INFERENCE_FUNCTION)
    _write_extra_files(staging, extra_files or {}, reserved)
    (staging / METRICS_FILE).write_text(_metrics_html(name, emd, images, metrics), encoding="utf-8")
    _write_dlpk(staging, name)


def _swap_in(staging: Path, folder: Path) -> None:
    """Puts ``staging`` at ``folder``; an existing ``folder`` is moved aside first and deleted last."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    backup = folder.parent / f".{folder.name}.previous-{uuid.uuid4().hex[:8]}"
    os.rename(folder, backup)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(backup, folder)  # the previous package goes back where it was
        raise
    shutil.rmtree(backup, ignore_errors=True)


def save_package(
    folder: str | Path,
    name: str,
    *,
    state_dict: Mapping[str, Tensor],
    emd: Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | None = None,
    figures: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    overwrite: bool = True,
    extra_files: Mapping[str, bytes | str | Path] | None = None,
) -> Path:
    """Writes a model package atomically: weights, EMD, figures, metrics page and ``.dlpk``.

    Everything is written into a hidden sibling folder, then swapped in (see the module doc):
    an interrupted save leaves either the previous package or none, never a half-written one.

    Args:
        folder: the model folder, e.g. ``<data.path>/models/<name>``.
        name: the model's name: files are ``<name>.pth``, ``<name>.emd``, ``<name>.dlpk``.
        state_dict: the network's weights (moved to the CPU in the file).
        emd: the model definition (:func:`build_emd`); its ``ModelFile`` is set to ``<name>.pth``.
        optimizer_state: with it the ``.pth`` is exactly ``{'model': ..., 'opt': ...}``.
            Default None: a plain state_dict.
        figures: matplotlib Figures by name; ``'loss_graph'`` and ``'show_results'`` are what
            arcgis.learn writes, each saved as ``ModelCharacteristics/<key>.png`` (100 dpi) and
            embedded in ``model_metrics.html``; absent or None ones are skipped. Default None.
        metrics: more rows for the metrics page (e.g. ``{'epochs': 10, 'valid_loss': 0.41}``).
            Default None.
        overwrite: replace an existing model folder (see the module doc for which folders).
            Default True.
        extra_files: more files for the package, ``{relative path: bytes or source path}``
            (e.g. TorchScript files); they go into the folder and the ``.dlpk``. Default None.

    ``state_dict`` and everything after it are keyword only.

    Returns:
        ``folder``, as a ``Path``.

    Raises:
        OutputExistsError: ``folder`` exists and ``overwrite`` is False, or it holds files that
            are not part of a model package.
        ValueError: a bad name, state_dict, figure key or ``extra_files`` path, an
            ``optimizer_state`` that ``torch.load(weights_only=True)`` would refuse, or an
            ``emd`` holding NaN or infinity (not JSON).

    Examples:
        >>> import tempfile
        >>> from geolearn.data.esri import ClassInfo
        >>> emd = build_emd(model_file="pools.pth", backbone="resnet18", scales=[1.0], ratios=[1.0],
        ...                 classes=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=256, extract_bands=[0, 1, 2])
        >>> folder = save_package(Path(tempfile.mkdtemp()) / "pools", "pools", state_dict={"w": torch.zeros(2)}, emd=emd)
        >>> sorted(p.name for p in folder.iterdir())
        ['GeolearnObjectDetector.py', 'model_metrics.html', 'pools.dlpk', 'pools.emd', 'pools.pth']
        >>> save_package(folder, "pools", state_dict={"w": torch.ones(2)}, emd=emd, overwrite=False)
        Traceback (most recent call last):
        ...
        geolearn.errors.OutputExistsError: ...pools: already holds a saved model; pass overwrite=True or save under another name.
    """
    folder = Path(folder)
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith("."):
        raise ValueError(f"name={name!r}: use letters, digits, '_', '-' and '.', e.g. 'pools_resnet50'.")
    if not state_dict or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state_dict.items()):
        raise ValueError("state_dict: give the network's state_dict (parameter names -> tensors).")
    extra_top = {PurePosixPath(p.replace("\\", "/")).parts[0] for p in (extra_files or {}) if p}
    if folder.exists() or folder.is_symlink():
        _check_replaceable(folder, name, overwrite, extra_top)
    else:
        leftovers = sorted(folder.parent.glob(f".{folder.name}.previous-*")) if folder.parent.is_dir() else []
        if leftovers:
            logger.warning("an earlier save into %s was interrupted; its previous package is in %s",
                           folder, leftovers[-1])
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.saving-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # honours the umask, unlike tempfile.mkdtemp (0700)
    try:
        _write_package(staging, name, state_dict, emd, optimizer_state, figures, metrics, extra_files)
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved model %s in %s", name, folder)
    return folder
