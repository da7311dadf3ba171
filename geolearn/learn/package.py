"""Model packages: the ``.pth`` weights, the ``.emd`` model definition and the ``.dlpk`` (CONTRACT §4).

A saved model is a folder that ArcGIS Pro, arcgis.learn and geolearn all read::

    <folder>/<name>.pth                         weights: a plain state_dict, or exactly {'model', 'opt'}
    <folder>/<name>.emd                         JSON model definition (geolearn/learn/emd.py)
    <folder>/GeolearnObjectDetector.py          the raster function ArcGIS Pro runs (geolearn/models/raster_function.py)
    <folder>/<name>_detector.pt                 its network: TorchScript, normalisation and box decoding inside
    <folder>/model_metrics.html                 backbone, learning rate, AP per class, figures (self-contained)
    <folder>/ModelCharacteristics/loss_graph.png
    <folder>/ModelCharacteristics/show_results.png
    <folder>/<name>.dlpk                        zip of all of the above, relative paths

The functions here take plain values (state_dicts, the EMD's dict, matplotlib Figures) so that
the ``RetinaNet`` class stays an adapter and the file formats are testable without training:
:func:`resolve_model` finds a package's EMD (extracting a ``.dlpk``), :func:`load_state_dict`
reads its weights safely, :func:`save_package` writes one.

Decisions, each one deliberate:

- **.dlpk extraction** (:func:`resolve_model`): into a cache folder named after the archive's
  SHA-256 (under ``$GEOLEARN_CACHE_DIR/dlpk``, else ``$XDG_CACHE_HOME/geolearn/dlpk``, else
  ``~/.cache/geolearn/dlpk``), never next to the user's files. Extraction goes to a temporary
  sibling that is renamed into place, so a cache folder that exists is complete and is reused.
  The default cache keeps the :data:`CACHE_KEEP` most recently loaded packages and removes
  older ones (and extractions a killed process left half-done): without a bound it grows by one
  folder, often hundreds of MB, per package ever loaded. A folder given as ``extract_dir`` is
  the caller's and is never pruned.
  Every entry is checked *before* anything is written: absolute paths, ``..`` components,
  symbolic links and special files are refused.
- **Saving replaces the whole folder** (:func:`save_package`): a model folder is geolearn's own
  output, so a new save never mixes with files of the previous one. The new package is written
  into a hidden sibling folder and swapped in with two renames (previous → hidden backup, new →
  target; the backup is deleted last), so an interrupted save leaves the previous package, not a
  half-written one. What a killed save leaves (its hidden staging folder, or the previous
  package moved aside when the kill fell between the two renames) is cleared, or put back, by
  the next save into the same folder. An existing folder is only replaced when everything in it is something a
  model save writes (``<name>.pth/.emd/.dlpk``, ``<name>*.pt/.onnx``, ``model_metrics.html``,
  ``GeolearnObjectDetector.py``, ``ArcGISObjectDetector.py``, ``ModelCharacteristics/``, ``torch_scripts/``); anything else
  (notes, checkpoints, a user's documents) makes the save refuse rather than delete it.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import html
import json
import logging
import os
import pickle
import re
import shutil
import stat
import time
import uuid
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from geolearn.cache import cache_root
from geolearn.errors import ModelDefinitionError, OutputExistsError, OutputNotWritableError
from geolearn.learn import distributed
from geolearn.learn.emd import ARCGIS_INFERENCE_FUNCTION, INFERENCE_FUNCTION, MODEL_NAME, read_emd
from geolearn.models import raster_function
from geolearn.models.retinanet import check_weights_fit

__all__ = [
    "resolve_model",
    "load_state_dict",
    "weights_file",
    "load_fitting_state_dict",
    "save_package",
    "CHARACTERISTICS_DIR",
    "METRICS_FILE",
]

logger = logging.getLogger(__name__)

CHARACTERISTICS_DIR = "ModelCharacteristics"
METRICS_FILE = "model_metrics.html"
# Top-level entries of a model folder that a save may replace besides <name>.* (see the module doc).
_PACKAGE_DIRS = (CHARACTERISTICS_DIR, "torch_scripts")
_PACKAGE_FILES = (METRICS_FILE, INFERENCE_FUNCTION, ARCGIS_INFERENCE_FUNCTION)
# Entries stored uncompressed in the .dlpk: deflating float weights or PNGs costs seconds, saves ~5 %.
_STORED_SUFFIXES = {".pth", ".pt", ".png", ".onnx"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Extracted packages the default cache keeps, most recently loaded first (see the module doc).
CACHE_KEEP = 8
# A hidden ``.<name>.extracting-*`` folder older than this was left by a killed extraction.
_STALE_SECONDS = 3600


# ----------------------------------------------------------------------------- finding the EMD


def _cache_dir() -> Path:
    """Where .dlpk archives are extracted: ``dlpk`` in :func:`~geolearn.cache.cache_root`."""
    return cache_root() / "dlpk"


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
            os.utime(target)  # marks it recently used for _prune_cache
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
                try:
                    with archive.open(info) as source, destination.open("wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # a bad CRC, a cut or garbled entry
                    raise ModelDefinitionError(
                        f"{dlpk}: its entry {info.filename} is damaged ({err}); the archive was cut short "
                        "or corrupted in transfer. Copy the .dlpk again, or save the model again."
                    ) from None
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


def _prune_cache(cache: Path, keep: int) -> None:
    """Removes all but the ``keep`` most recently used extractions in ``cache``, and stale staging folders."""
    now = time.time()
    finished = []
    for entry in cache.iterdir():
        if not entry.is_dir():
            continue
        age = now - entry.stat().st_mtime
        if entry.name.startswith("."):
            if ".extracting-" in entry.name and age > _STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        else:
            finished.append((age, entry))
    for _, entry in sorted(finished)[keep:]:
        shutil.rmtree(entry, ignore_errors=True)
        logger.info("removed %s from the .dlpk cache (it keeps the %d most recently loaded)", entry, keep)


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
            ``~/.cache/geolearn/dlpk``), which keeps the :data:`CACHE_KEEP` most recently loaded
            packages. Keyword only.

    Returns:
        ``(emd path, its folder)``.

    Raises:
        FileNotFoundError: the path does not exist, or holds no ``.emd``.
        ModelDefinitionError: several ``.emd`` files, an unsafe or damaged ``.dlpk``, or another kind of file.

    Examples:
        >>> import tempfile
        >>> from geolearn.data.esri import ClassInfo
        >>> from geolearn.data.normalization import Normalization
        >>> from geolearn.learn.config import ModelConfig
        >>> emd = ModelConfig(class_infos=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=256,
        ...                   normalization=Normalization.for_rgb8(), n_bands=3).to_emd("pools.pth")
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
        if extract_dir is not None:
            emd = _single_emd(_extract_dlpk(path, Path(extract_dir)), path)
        else:
            extracted = _extract_dlpk(path, _cache_dir())
            _prune_cache(extracted.parent, CACHE_KEEP)
            emd = _single_emd(extracted, path)
    else:
        raise ModelDefinitionError(
            f"{path}: a {path.suffix or 'suffix-less'} file is not a model package; give the model's .emd, "
            "its folder or its .dlpk."
        )
    return emd, emd.parent


# ----------------------------------------------------------------------------- weights


def load_fitting_state_dict(pth: str | Path, expected: Mapping[str, Tensor], network: str) -> dict[str, Tensor]:
    """:func:`load_state_dict` of ``pth``, when its names and shapes fit the network's ``expected`` state_dict.

    Args:
        pth: the weights file.
        expected: the network's ``state_dict()`` (meta tensors will do).
        network: the network in words, for the message (``"this model is a resnet18 with ..."``).

    Raises:
        ModelDefinitionError: naming ``pth``, how the weights differ
            (:func:`~geolearn.models.retinanet.check_weights_fit`) and ``network``.

    Examples:
        See ``RetinaNet.load``, which calls it.
    """
    state = load_state_dict(pth)
    try:
        check_weights_fit(expected, state)
    except ValueError as error:
        raise ModelDefinitionError(f"{pth}: {error}; {network}.") from None
    return state


def weights_file(name_or_path: str | Path, models_folder: Path | None = None) -> Path:
    """The ``.pth`` that ``RetinaNet.load(name_or_path)`` loads.

    Args:
        name_or_path: a ``.pth``; an ``.emd``, a model folder or a ``.dlpk`` (its EMD's
            ``ModelFile``); or, with ``models_folder``, a model's name.
        models_folder: where models saved by name live (``<data.path>/models``). Default None.

    Raises:
        FileNotFoundError: no such weights file.

    Examples:
        >>> weights_file("no/such/trees.pth")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no/such/trees.pth: no such model weights file; give a .pth, .emd or .dlpk path or the name of a model saved under <data.path>/models/.
    """
    path = Path(name_or_path)
    if models_folder is not None:
        weights = models_folder / path.name / f"{path.name}.pth"
    elif path.suffix == ".pth":
        weights = path
    else:
        weights = read_emd(resolve_model(path)[0]).model_file
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no such model weights file; give a .pth, .emd or .dlpk path "
                                "or the name of a model saved under <data.path>/models/.")
    return weights


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


def _tidy_interrupted_saves(folder: Path) -> None:
    """Clears what saves into ``folder`` that were killed left beside it (see :func:`_swap_in`).

    Their staging folders (``.<folder>.saving-*``, incomplete) are removed. A previous package
    moved aside (``.<folder>.previous-*``) goes back to ``folder`` when a kill between the two
    renames left ``folder`` missing; otherwise the swap had completed and it is removed.
    """
    if not folder.parent.is_dir():
        return
    prefix = f".{folder.name}."
    for entry in sorted(folder.parent.iterdir()):
        if entry.name.startswith(prefix + "saving-") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            logger.warning("removed %s, left by an interrupted save of %s", entry, folder)
    backups = sorted((e for e in folder.parent.iterdir() if e.name.startswith(prefix + "previous-") and e.is_dir()),
                     key=lambda e: e.stat().st_mtime)
    if backups and not (folder.exists() or folder.is_symlink()):
        os.rename(backups.pop(), folder)
        logger.warning("an earlier save into %s was interrupted between its two renames: its previous "
                       "package is back in place", folder)
    for backup in backups:
        shutil.rmtree(backup, ignore_errors=True)


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
    Under a launcher (``torchrun``) rank 0 alone writes; every rank returns the folder.

    Args:
        folder: the model folder, e.g. ``<data.path>/models/<name>``.
        name: the model's name: files are ``<name>.pth``, ``<name>.emd``, ``<name>.dlpk``.
        state_dict: the network's weights (moved to the CPU in the file).
        emd: the model definition (:func:`geolearn.learn.emd.build_emd`); its ``ModelFile`` is set to ``<name>.pth``.
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
        OutputNotWritableError: the folder (or its parent) cannot be written: permissions, a
            read-only disk.
        ValueError: a bad name, state_dict, figure key or ``extra_files`` path, an
            ``optimizer_state`` that ``torch.load(weights_only=True)`` would refuse, or an
            ``emd`` holding NaN or infinity (not JSON).

    Examples:
        >>> import tempfile
        >>> from geolearn.data.esri import ClassInfo
        >>> from geolearn.data.normalization import Normalization
        >>> from geolearn.learn.config import ModelConfig
        >>> emd = ModelConfig(class_infos=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=256,
        ...                   normalization=Normalization.for_rgb8(), n_bands=3).to_emd("pools.pth")
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
    broken = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ValueError(f"state_dict: {len(broken)} tensors hold NaN or infinity (e.g. {broken[0]!r}): training "
                         "diverged, and a package of these weights would detect nothing. Train again with a lower "
                         "learning rate, or load a checkpoint saved before it diverged.")
    # Under a launcher (torchrun) rank 0 writes the one package; the others wait and return its folder.
    distributed.on_main("save the model", lambda: _save_here(folder, name, state_dict, emd, optimizer_state, figures,
                                                             metrics, overwrite, extra_files))
    return folder


def _save_here(folder: Path, name: str, state_dict, emd, optimizer_state, figures, metrics, overwrite: bool,
               extra_files) -> None:
    extra_top = {PurePosixPath(p.replace("\\", "/")).parts[0] for p in (extra_files or {}) if p}
    _tidy_interrupted_saves(folder)
    if folder.exists() or folder.is_symlink():
        _check_replaceable(folder, name, overwrite, extra_top)
    staging = folder.parent / f".{folder.name}.saving-{uuid.uuid4().hex[:8]}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # honours the umask, unlike tempfile.mkdtemp (0700)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise OutputNotWritableError(
            f"{folder}: cannot save here: {err.strerror} ({err.filename}). Save into a folder you can "
            "write, e.g. model.save('/path/you/own/trees')."
        ) from None
    try:
        _write_package(staging, name, state_dict, emd, optimizer_state, figures, metrics, extra_files)
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved model %s in %s", name, folder)
