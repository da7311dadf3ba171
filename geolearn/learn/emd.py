"""The model definition (``.emd``): the JSON file that says what a model's weights mean (CONTRACT §4).

ArcGIS Pro, arcgis.learn and geolearn all read it. This module is its file form, once in each
direction: :func:`build_emd` writes a :class:`~geolearn.learn.config.ModelConfig` with every key
arcgis.learn 2.4 writes (and geolearn's own under one ``"geolearn"`` key), and :func:`read_emd`
reads one written by geolearn or by arcgis.learn back into a ``ModelConfig``, validated.
:mod:`geolearn.learn.package` stores it beside the weights.

Decisions, each one deliberate:

- **Required EMD keys** (:func:`read_emd`): ``ModelFile`` (non-empty file name), ``Classes``
  (non-empty list; ``Value/Name`` or ``ClassValue/ClassName``) and the chip size in
  ``ImageHeight`` and/or ``ImageWidth`` (integers; both present must agree, geolearn trains square
  chips). Everything else has arcgis.learn's default: ``ModelParameters.backbone`` →
  ``'resnet50'``, ``scales``/``ratios`` → the paper's, ``ExtractBands`` → ``[0, 1, 2]``,
  ``IsMultispectral`` → False (ImageNet normalisation of 8-bit RGB). A key that is present with
  the wrong type is an error even where a missing one would be defaulted: a wrong value is a
  broken file, not an old one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from geolearn._version import __version__
from geolearn.data.esri import ClassInfo, parse_classes, read_json
from geolearn.data.georef import esri_spatial_reference
from geolearn.data.normalization import Normalization
from geolearn.errors import LabelFormatError, ModelDefinitionError
from geolearn.learn.config import DEFAULT_BACKBONE, ModelConfig
from geolearn.models.anchors import DEFAULT_RATIOS, DEFAULT_SCALES

__all__ = [
    "ModelDefinition",
    "build_emd",
    "read_emd",
    "ARCGIS_LEARN_VERSION",
    "INFERENCE_FUNCTION",
    "ARCGIS_INFERENCE_FUNCTION",
    "PRO_INFERENCE_FUNCTION",
]

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

# Keys of the "geolearn" object that build_emd fills itself; extras may not override them.
_GEOLEARN_RESERVED = ("version", "normalization", "scales", "ratios", "chip_size", "zoom", "cell_size",
                      "crs_wkt", "n_bands", "band_names", "threshold", "network_script")




# ----------------------------------------------------------------------------- the model definition


@dataclass(frozen=True)
class ModelDefinition:
    """A model definition as read: the model's :class:`ModelConfig` and where its file and weights are.

    Read from an EMD written by geolearn or by arcgis.learn (see :func:`read_emd`).

    Attributes:
        path: the ``.emd`` file.
        model_file: the weights file (``ModelFile`` resolved against the EMD's folder).
        config: what the model is: classes, bands, chip size, anchors, ... (validated).
        average_precision: ``{class name: AP}`` when computed at save time.
        geolearn: the EMD's ``"geolearn"`` object (``{}`` in arcgis.learn's EMDs).
        emd: the EMD as read.

    Examples:
        See :func:`read_emd`, which returns it.
    """

    path: Path
    model_file: Path
    config: ModelConfig
    average_precision: dict[str, float] | None = None
    geolearn: dict[str, Any] = field(default_factory=dict, repr=False)
    emd: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_multispectral(self) -> bool:
        """False for 8-bit RGB with ImageNet statistics (arcgis.learn's ``IsMultispectral``)."""
        return not self.config.normalization.imagenet

    @property
    def class_mapping(self) -> dict[int, str]:
        """``{value: name}`` of the classes (arcgis.learn's ``data.class_mapping``)."""
        return {c.value: c.name for c in self.config.class_infos}

    @property
    def written_by_geolearn(self) -> bool:
        """Whether the EMD has a non-empty ``"geolearn"`` object (geolearn wrote it)."""
        return bool(self.geolearn)


# ----------------------------------------------------------------------------- writing an EMD


def _format_learning_rate(learning_rate: float | slice | None) -> str:
    """arcgis.learn's spelling: ``'{:1.4e}'`` of the rate, ``'None'`` when unknown."""
    if isinstance(learning_rate, slice):  # the rate of the heads, as a float lr means in fit()
        learning_rate = learning_rate.stop
    if learning_rate is None:
        return "None"
    return f"{float(learning_rate):1.4e}"


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
    reference = esri_spatial_reference(crs_wkt)
    if reference:
        entry["spatialReference"] = reference
    return entry, value


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


def build_emd(
    config: ModelConfig,
    *,
    model_file: str,
    average_precision: Mapping[str, float] | None = None,
    network_script: str | None = None,
    extras: Mapping[str, Any] | None = None,
    imagery_type: str | None = None,
    image_space_used: str = "MAP_SPACE",
    inference_function: str = INFERENCE_FUNCTION,
) -> dict[str, Any]:
    """The EMD of a RetinaNet model, with every key arcgis.learn 2.4 writes (CONTRACT §4).

    Keys, spellings and types follow arcgis.learn's ``_get_emd_params`` and
    ``_create_emd_template``: ``LearningRate`` is a string (``'1.0000e-03'``, ``'None'``),
    ``MinCellSize``/``MaxCellSize`` are Esri ``{"x", "y", "spatialReference"}`` objects (or null),
    ``average_precision_score`` is ``{class name: AP}`` (null when not computed). Multispectral
    models (any normalisation but ImageNet's of 8-bit RGB) add ``Bands``, ``ImageryType``,
    ``NormalizationStats`` and ``DoNormalize``. What only geolearn needs (its normalisation,
    anchors, chip size, GSD and CRS of the training data, band count and names, and ``extras``)
    sits under the one ``"geolearn"`` key.

    Args:
        config: the model (:meth:`ModelConfig.to_emd` calls this).
        model_file: the weights' file name (``'<name>.pth'``), relative to the EMD. Keyword
            only, like all that follow.
        average_precision: ``{class name: AP}``, or None (the default) when not computed.
        network_script: the package's TorchScript file for the raster function
            (:func:`geolearn.models.portable.script_bytes`), relative to the EMD, or None.
        extras: more entries for the ``"geolearn"`` object (not its reserved keys). Default None.
        imagery_type: arcgis.learn's ``imagery_type`` for multispectral models (default ``'ms'``).
        image_space_used: ``'MAP_SPACE'`` (the default) or ``'PIXEL_SPACE'`` (the export's
            reference system).
        inference_function: the raster function ArcGIS Pro runs: geolearn's own,
            ``'GeolearnObjectDetector.py'`` (the default, :data:`INFERENCE_FUNCTION`), which
            :func:`~geolearn.learn.package.save_package` copies next to the EMD and which needs
            ``network_script``; arcgis.learn's names (:data:`ARCGIS_INFERENCE_FUNCTION`,
            :data:`PRO_INFERENCE_FUNCTION`) run Esri's script, which decodes geolearn's box
            sizes wrongly (see docs/model-packages.md).

    Returns:
        The EMD as a JSON-serialisable dict (keys in arcgis.learn's order).

    Raises:
        ValueError: an argument that would make an EMD no reader accepts.

    Examples:
        >>> config = ModelConfig(class_infos=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=256,
        ...                      normalization=Normalization.for_rgb8(), n_bands=3, scales=[1.0, 0.5],
        ...                      learning_rate=1e-3)
        >>> emd = build_emd(config, model_file="pools.pth")
        >>> emd["ModelFile"], emd["ImageHeight"], emd["LearningRate"], emd["ModelParameters"]["scales"]
        ('pools.pth', 256, '1.0000e-03', [1.0, 0.5])
        >>> emd["Classes"]
        [{'Value': 1, 'Name': 'pool', 'Color': [0, 168, 132]}]
    """
    if not model_file or Path(model_file).name != model_file:
        raise ValueError(f"model_file={model_file!r}: give the weights' file name relative to the EMD, e.g. 'pools.pth'.")
    norm = config.normalization
    is_multispectral = not norm.imagenet
    bands = list(config.extract_bands) if config.extract_bands is not None else list(range(config.n_bands))
    cell_entry, gsd = _cell_size_entry(config.cell_size, config.crs_wkt)
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
            "scales": list(config.scales),
            "ratios": list(config.ratios),
            "backbone": config.backbone_name,
            "backend": BACKEND,
        },
        "Classes": [c.to_esri() for c in config.class_infos],
        "ModelFormat": "NCHW",
        "MinCellSize": cell_entry,
        "MaxCellSize": dict(cell_entry) if isinstance(cell_entry, dict) else cell_entry,
        "SupportsVariableTileSize": False,
        "ArcGISLearnVersion": ARCGIS_LEARN_VERSION,
        "ModelFile": model_file,
        "ImageHeight": config.chip_size,
        "ImageWidth": config.chip_size,
        "ImageSpaceUsed": image_space_used,
        "LearningRate": _format_learning_rate(config.learning_rate),
        "ModelName": MODEL_NAME,
        "backend": BACKEND,
        "average_precision_score": ap,
        "resize_to": int(config.resize_to) if config.resize_to else None,
        "IsMultispectral": is_multispectral,
        "IsImageNetNormalization": norm.imagenet,
    }
    if is_multispectral:
        emd["Bands"] = list(config.band_names) if config.band_names else [f"Band_{b + 1}" for b in bands]
        emd["ImageryType"] = imagery_type or "ms"
        emd["NormalizationStats"] = _normalization_stats(norm)
        emd["DoNormalize"] = True
    emd["geolearn"] = {
        "version": __version__,
        "normalization": norm.to_json(),
        "scales": emd["ModelParameters"]["scales"],
        "ratios": emd["ModelParameters"]["ratios"],
        "chip_size": config.chip_size,
        "zoom": config.zoom,
        "cell_size": gsd,
        "crs_wkt": config.crs_wkt,
        "n_bands": config.n_bands,
        "band_names": list(config.band_names) if config.band_names else None,
        "threshold": config.threshold,
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


def _check_retinanet(reader: _EmdReader) -> None:
    for key, expected in (("ModelName", MODEL_NAME), ("ModelConfiguration", MODEL_CONFIGURATION)):
        value = reader.emd.get(key)
        normalised = "".join(ch for ch in value if ch.isalnum()) if isinstance(value, str) else value
        if value is not None and normalised != "".join(ch for ch in expected if ch.isalnum()):
            raise reader.error(key, repr(expected), value,
                               "geolearn loads RetinaNet models only; load this model with arcgis.learn.")


def _read_model_file(reader: _EmdReader, require_model_file: bool) -> Path:
    model_file = reader.get("ModelFile")
    if not isinstance(model_file, str) or not model_file.strip():
        raise reader.error("ModelFile", "the weights' file name (e.g. \"pools.pth\")", model_file,
                           "Set it to the .pth file saved with the model, relative to the .emd.")
    # An EMD written on Windows may use backslashes; relative names resolve against the EMD's folder.
    model_path = Path(model_file.replace("\\", "/"))
    if not model_path.is_absolute():
        model_path = reader.path.parent / model_path
    if require_model_file and not model_path.is_file():
        raise FileNotFoundError(
            f"{reader.path}: ModelFile {model_file!r} -> {model_path} does not exist. Keep the .pth next to the .emd "
            "(copy the whole model folder, or use the .dlpk)."
        )
    return model_path


def _read_object(reader: _EmdReader, key: str, expected: str, fix: str) -> dict[str, Any]:
    """An optional JSON object of the EMD; ``{}`` when missing or null."""
    value = reader.get(key)
    if value is _MISSING or value is None:
        return {}
    if not isinstance(value, dict):
        raise reader.error(key, expected, value, fix)
    return value


def _read_network(reader: _EmdReader) -> dict[str, Any]:
    """``backbone``, ``scales`` and ``ratios`` from ``ModelParameters`` (arcgis.learn's defaults when absent)."""
    parameters = _read_object(reader, "ModelParameters", "an object {backbone, scales, ratios}",
                              "Write e.g. \"ModelParameters\": {\"backbone\": \"resnet50\"}.")
    backbone = parameters.get("backbone", DEFAULT_BACKBONE)
    if not isinstance(backbone, str) or not backbone:
        raise reader.error("ModelParameters.backbone", "a backbone name such as 'resnet50'", backbone,
                           "Set it to the backbone the model was trained with.")
    fix = "Set it to the anchors the model was trained with (arcgis.learn's default is used when absent)."
    scales = (reader.numbers("ModelParameters.scales", parameters["scales"], fix)
              if parameters.get("scales") is not None else DEFAULT_SCALES)
    ratios = (reader.numbers("ModelParameters.ratios", parameters["ratios"], fix)
              if parameters.get("ratios") is not None else DEFAULT_RATIOS)
    return {"backbone": backbone, "scales": scales, "ratios": ratios}


def _read_bands(reader: _EmdReader, geolearn: dict[str, Any]) -> list[int]:
    """``ExtractBands``, agreeing with ``geolearn.n_bands`` when both are there."""
    n_bands_hint = geolearn.get("n_bands")
    bands = reader.get("ExtractBands")
    if bands is _MISSING or bands is None:
        bands = list(range(n_bands_hint)) if isinstance(n_bands_hint, int) and n_bands_hint > 0 else [0, 1, 2]
    elif (not isinstance(bands, list) or not bands
          or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bands)):
        raise reader.error("ExtractBands", "a non-empty list of 0-based band indices", bands,
                           "Write e.g. \"ExtractBands\": [0, 1, 2].")
    if isinstance(n_bands_hint, int) and n_bands_hint != len(bands):
        raise ModelDefinitionError(
            f"{reader.path}: geolearn.n_bands is {n_bands_hint} but ExtractBands lists {len(bands)} bands; "
            "make them agree (the network's input bands)."
        )
    return list(bands)


def _read_scale(reader: _EmdReader, geolearn: dict[str, Any]) -> dict[str, Any]:
    """``resize_to``, ``zoom`` and the training data's ``cell_size``."""
    resize_to = reader.emd.get("resize_to")
    if isinstance(resize_to, list) and len(resize_to) == 2 and resize_to[0] == resize_to[1]:
        resize_to = resize_to[0]  # arcgis.learn writes a (height, width) tuple as a list
    if resize_to is not None:
        resize_to = reader.integer("resize_to", resize_to, fix="Give one side in pixels, or null.")
    zoom = geolearn.get("zoom", 1.0)
    if isinstance(zoom, bool) or not isinstance(zoom, (int, float)) or not 0 < zoom < float("inf"):
        raise reader.error("geolearn.zoom", "a number > 0", zoom,
                           "Set it to resize_to over the exported chips' side (1.0 without resize_to).")
    cell_size = geolearn.get("cell_size")
    if cell_size is None:  # arcgis.learn: the training GSD only when the export had a single one
        low, high = reader.emd.get("MinCellSize"), reader.emd.get("MaxCellSize")
        if isinstance(low, dict) and low == high and isinstance(low.get("x"), (int, float)):
            cell_size = float(low["x"])
    numeric = isinstance(cell_size, (int, float)) and not isinstance(cell_size, bool)
    return {"resize_to": resize_to, "zoom": zoom, "cell_size": float(cell_size) if numeric else None}


def _read_band_names(reader: _EmdReader, geolearn: dict[str, Any], is_multispectral: bool) -> list[str] | None:
    band_names = geolearn.get("band_names")
    if band_names is None and is_multispectral and isinstance(reader.emd.get("Bands"), list):
        band_names = reader.emd["Bands"]
    if band_names is not None and not (isinstance(band_names, list) and all(isinstance(b, str) for b in band_names)):
        raise reader.error("geolearn.band_names", "a list of band names", band_names, "Delete it or fix it.")
    return band_names


def _read_threshold(reader: _EmdReader, geolearn: dict[str, Any]) -> float | None:
    threshold = geolearn.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 <= threshold <= 1):
        raise reader.error("geolearn.threshold", "a score between 0 and 1, or null", threshold,
                           "Set it to the detection threshold to use, or delete it (0.5 is used).")
    return threshold


def read_emd(path: str | Path, *, require_model_file: bool = True) -> ModelDefinition:
    """Reads and validates a RetinaNet EMD written by geolearn or by arcgis.learn.

    Older keys (``ClassValue``/``ClassName``) are accepted and missing optional keys get
    arcgis.learn's defaults (see the module docstring for which keys are required).

    Args:
        path: the ``.emd`` file.
        require_model_file: the weights file ``ModelFile`` names must exist. Default True.
            Keyword only.

    Returns:
        The :class:`ModelDefinition`: the model's :class:`ModelConfig` and its files.

    Raises:
        FileNotFoundError: the EMD, or the weights it names, do not exist.
        ModelDefinitionError: not JSON, a required key missing, a key with the wrong type, or a
            model that is not a RetinaNet.

    Examples:
        >>> import tempfile, torch
        >>> from geolearn.learn.package import save_package
        >>> config = ModelConfig(class_infos=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=256,
        ...                      normalization=Normalization.for_rgb8(), n_bands=3, extract_bands=[0, 1, 2],
        ...                      backbone="resnet18")
        >>> folder = save_package(Path(tempfile.mkdtemp()) / "pools", "pools", state_dict={"w": torch.zeros(2)},
        ...                       emd=config.to_emd("pools.pth"))
        >>> definition = read_emd(folder / "pools.emd")
        >>> definition.config.backbone, definition.config.chip_size, definition.class_mapping
        ('resnet18', 256, {1: 'pool'})
        >>> definition.model_file.name, definition.config == config
        ('pools.pth', True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model definition (.emd) file.")
    try:
        emd = read_json(path)
    except LabelFormatError as err:
        raise ModelDefinitionError(str(err)) from None
    reader = _EmdReader(emd, path)
    _check_retinanet(reader)
    model_file = _read_model_file(reader, require_model_file)
    chip_size = _read_chip_size(reader)
    classes = _read_classes(reader)
    geolearn = _read_object(reader, "geolearn", "an object", "Delete the key or save the model again with geolearn.")
    bands = _read_bands(reader, geolearn)
    is_multispectral = emd.get("IsMultispectral", False)
    if not isinstance(is_multispectral, bool):
        raise reader.error("IsMultispectral", "true or false", is_multispectral,
                           "false for 8-bit RGB imagery, true otherwise.")
    config = ModelConfig(
        class_infos=classes,
        chip_size=chip_size,
        normalization=_read_normalization(reader, geolearn, is_multispectral, len(bands)),
        n_bands=len(bands),
        band_names=_read_band_names(reader, geolearn, is_multispectral),
        extract_bands=bands,
        crs_wkt=geolearn.get("crs_wkt") if isinstance(geolearn.get("crs_wkt"), str) else None,
        learning_rate=_parse_learning_rate(emd.get("LearningRate")),
        threshold=_read_threshold(reader, geolearn),
        **_read_network(reader),
        **_read_scale(reader, geolearn),
    )
    return ModelDefinition(path=path, model_file=model_file, config=config,
                           average_precision=_parse_average_precision(emd.get("average_precision_score")),
                           geolearn=geolearn, emd=emd)
