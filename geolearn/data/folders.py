"""Reads one training-data folder into a list of chips with named objects.

Supported layouts (CONTRACT §1–2): an Esri export (``images/``, ``labels/`` with
PASCAL VOC ``.xml`` or KITTI ``.txt``, and the Esri metadata files), plain VOC or
KITTI folders, COCO (``images/`` + ``labels.json``) and YOLO (``images/`` +
``labels/<stem>.txt`` + ``classes.txt`` or ``data.yaml``). Whatever the layout,
the result is the same: per chip, its image path, boxes in chip pixels and the
*names* of their classes, plus the classes' Esri values and colours.

Problems arcgis.learn passes over silently are counted and reported in one
warning each; problems that would make training wrong raise errors that name
the file and the fix.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from rasterio.errors import NotGeoreferencedWarning

from geolearn.data.bandstats import BandStats
from geolearn.data.esri import (
    DATASET_TYPES,
    EMD_FILE,
    MAP_FILE,
    STATS_FILE,
    ClassInfo,
    default_color,
    esri_dataset_type,
    parse_classes,
    read_json,
)
from geolearn.data.export_folder import finish_interrupted_exports
from geolearn.data.images import IMAGE_SUFFIXES, ImageInfo, read_image_info
from geolearn.data.labels import (
    ChipLabels,
    clip_to_chip,
    read_coco,
    read_kitti,
    read_voc,
    read_yolo,
    read_yolo_class_names,
)
from geolearn.errors import (
    BandMismatchError,
    DataFolderError,
    GeolearnWarning,
    LabelFormatError,
    NoChipsError,
)

__all__ = ["FolderData", "read_folder", "infer_dataset_type"]

logger = logging.getLogger(__name__)

COCO_FILE = "labels.json"


@dataclass
class FolderData:
    """A data folder, read.

    Attributes:
        root: the folder.
        dataset_type: one of :data:`~geolearn.data.esri.DATASET_TYPES`.
        images: chip image paths, sorted by file name.
        labels: per chip, boxes in chip pixels and their class *names*.
        infos: per chip, its header.
        classes: the classes (value, name, colour) the folder defines or uses.
        band_stats: the export's accumulated band statistics, when it has them.
        emd: the export's ``esri_model_definition.emd``, when it has one.

    Examples:
        See :func:`read_folder`, which builds it.
    """

    root: Path
    dataset_type: str
    images: list[Path]
    labels: list[ChipLabels]
    infos: list[ImageInfo]
    classes: list[ClassInfo]
    band_stats: BandStats | None
    emd: dict | None = None


def infer_dataset_type(root: Path) -> str:
    """Guesses the label format from the files, for folders without Esri metadata.

    ``labels.json`` → COCO; ``labels/*.xml`` → PASCAL VOC; ``labels/*.txt`` → YOLO when
    the first object line (of the first file, by name, that has one) is five fields with the
    last four numbers in [0, 1], else KITTI.

    Args:
        root: the data folder.

    Returns:
        One of ``"COCO_rectangles"``, ``"PASCAL_VOC_rectangles"``, ``"YOLO_rectangles"``,
        ``"KITTI_rectangles"``.

    Raises:
        DataFolderError: no label files to tell from (``.txt`` files without objects do not count).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "labels").mkdir()
        >>> _ = (root / "labels" / "000000001.txt").write_text("0 0.5 0.5 0.2 0.2\\n")
        >>> infer_dataset_type(root)
        'YOLO_rectangles'
    """
    if (root / COCO_FILE).exists():
        return "COCO_rectangles"
    label_dir = root / "labels"
    if label_dir.is_dir():
        if any(label_dir.glob("*.xml")):
            return "PASCAL_VOC_rectangles"
        for txt in sorted(label_dir.glob("*.txt")):
            first = next((line.split() for line in txt.read_text().splitlines() if line.strip()), None)
            if first is None:
                continue
            try:
                values = [float(v) for v in first[1:]]
            except ValueError:
                return "KITTI_rectangles"
            is_yolo = len(first) == 5 and all(0 <= v <= 1 for v in values)
            return "YOLO_rectangles" if is_yolo else "KITTI_rectangles"
    raise DataFolderError(
        f"{root}: cannot tell the label format: no labels.json and no .xml or .txt files with "
        "objects in labels/. Pass dataset_type= one of " + ", ".join(DATASET_TYPES) + "."
    )


def _check_dataset_type(dataset_type: str, root: Path) -> str:
    if dataset_type not in DATASET_TYPES:
        raise DataFolderError(
            f"{root}: dataset type {dataset_type!r} is not one RetinaNet trains on; it needs "
            f"rectangles: one of {', '.join(DATASET_TYPES)}. Re-export with metadata_format="
            "'PASCAL_VOC_rectangles' (or 'KITTI_rectangles')."
        )
    return dataset_type


def _list_images(root: Path) -> list[Path]:
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataFolderError(
            f"{root}: no images/ folder. Point prepare_data at the folder that "
            "'Export Training Data For Deep Learning' (or geolearn.export_training_data) wrote, "
            "the one holding images/ and labels/."
        )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise NoChipsError(
            f"{image_dir}: no chips ({', '.join(IMAGE_SUFFIXES)} files). Export training data into {root} first."
        )
    return images


def _warn_unlisted_files(coco_path: Path, absent: set[str]) -> None:
    """One counted warning for the images ``labels.json`` lists whose files are not in ``images/``."""
    if absent:
        warnings.warn(
            f"{coco_path}: {len(absent)} images it lists have no file in images/ (e.g. {min(absent)}) and "
            "were left out, with their boxes. Copy the missing files into images/, or remove their "
            "entries from labels.json.",
            GeolearnWarning,
            stacklevel=4,
        )


def _read_labels(
    root: Path, dataset_type: str, images: list[Path], infos: list[ImageInfo]
) -> tuple[list[Path], list[ImageInfo], list[ChipLabels], dict[str, str] | None]:
    """Reads each chip's label file; chips without one are dropped (counted in one warning).

    Returns the kept images, their infos, their raw labels (class tokens as written)
    and the names the folder itself gives tokens (COCO categories, YOLO names), if any.
    """
    token_names: dict[str, str] | None = None
    if dataset_type == "COCO_rectangles":
        coco_path = root / COCO_FILE
        if not coco_path.exists():
            raise DataFolderError(f"{root}: COCO_rectangles needs {COCO_FILE} next to images/.")
        per_image, token_names = read_coco(coco_path)
        found = [per_image.get(image.name) for image in images]
        _warn_unlisted_files(coco_path, set(per_image) - {image.name for image in images})
    else:
        label_dir = root / "labels"
        if not label_dir.is_dir():
            raise DataFolderError(
                f"{root}: no labels/ folder. A {dataset_type} folder holds images/ and labels/ side "
                "by side; re-export the training data or restore labels/."
            )
        suffix = ".xml" if dataset_type == "PASCAL_VOC_rectangles" else ".txt"
        found = []
        for image, info in zip(images, infos):
            label_path = label_dir / (image.stem + suffix)
            if not label_path.exists():
                found.append(None)
            elif dataset_type == "PASCAL_VOC_rectangles":
                found.append(read_voc(label_path))
            elif dataset_type == "KITTI_rectangles":
                found.append(read_kitti(label_path))
            else:
                found.append(read_yolo(label_path, info.width, info.height))
        if dataset_type == "YOLO_rectangles":
            token_names = read_yolo_class_names(root)
    kept = [i for i, labels in enumerate(found) if labels is not None]
    n_missing = len(images) - len(kept)
    if n_missing:
        where = COCO_FILE if dataset_type == "COCO_rectangles" else "labels/"
        example = next(image.name for image, labels in zip(images, found) if labels is None)
        warnings.warn(
            f"{root}: {n_missing} of {len(images)} chips have no labels in {where} (e.g. {example}) "
            "and were left out. Give a chip an empty label file to train on it as background.",
            GeolearnWarning,
            stacklevel=3,
        )
    return [images[i] for i in kept], [infos[i] for i in kept], [found[i] for i in kept], token_names


def _resolve_classes(
    root: Path,
    raw_labels: list[ChipLabels],
    emd_classes: list[ClassInfo] | None,
    token_names: Mapping[str, str] | None,
    class_mapping: Mapping | None,
) -> tuple[list[ChipLabels], list[ClassInfo]]:
    """Turns label tokens into class names; objects of unknown classes are dropped and counted.

    Rules (CONTRACT §2): with an EMD, tokens are class values (or names) of its
    ``Classes`` and ``class_mapping`` renames values. Without one, tokens are
    mapped through ``class_mapping`` (objects whose token it lacks are dropped),
    else through the folder's own names (COCO categories, YOLO names), else the
    token is the name.
    """
    mapping = {str(k): str(v) for k, v in (class_mapping or {}).items()}
    if emd_classes is not None:
        classes = [ClassInfo(c.value, mapping.get(str(c.value), c.name), c.color) for c in emd_classes]
        by_token = {str(c.value): c.name for c in classes}
        by_token.update({c.name: c.name for c in classes})
        by_token.update({e.name: c.name for e, c in zip(emd_classes, classes)})
    elif mapping:
        by_token = dict(mapping)
        classes = None
    else:
        tokens = sorted({t for labels in raw_labels for t in labels.classes})
        by_token = {t: (token_names or {}).get(t, t) for t in tokens}
        classes = None

    resolved, unknown = [], {}
    for labels in raw_labels:
        keep = [i for i, t in enumerate(labels.classes) if t in by_token]
        for t in labels.classes:
            if t not in by_token:
                unknown[t] = unknown.get(t, 0) + 1
        resolved.append(ChipLabels(labels.chip_boxes[keep], tuple(by_token[labels.classes[i]] for i in keep)))
    if unknown:
        listing = ", ".join(f"{t!r} ({n})" for t, n in sorted(unknown.items()))
        known = ", ".join(sorted(set(by_token)))
        warnings.warn(
            f"{root}: {sum(unknown.values())} objects of classes not in the class mapping were left out: "
            f"{listing}. Known classes: {known}. Add them to class_mapping to train on them.",
            GeolearnWarning,
            stacklevel=3,
        )
    if classes is None:
        names = sorted({n for labels in resolved for n in labels.classes} | set(mapping.values()))
        values = {}
        for token, name in by_token.items():
            if token.lstrip("-").isdigit():
                values.setdefault(name, int(token))
        next_value = max(values.values(), default=0) + 1
        classes = []
        for name in names:
            if name not in values:
                values[name], next_value = next_value, next_value + 1
            classes.append(ClassInfo(values[name], name, default_color(values[name])))
    return resolved, classes


def _check_bands(root: Path, images: Sequence[Path], infos: Sequence[ImageInfo]) -> None:
    first = {}
    for image, info in zip(images, infos):
        first.setdefault(info.count, image)
    if len(first) > 1:
        examples = "; ".join(f"{n} bands: {p.name}" for n, p in sorted(first.items()))
        raise BandMismatchError(
            f"{root}: chips have different band counts ({examples}). All chips of a data set need "
            "the same bands: re-export them from one raster, or keep them in separate folders."
        )


def read_folder(
    root: str | Path,
    dataset_type: str | None = None,
    class_mapping: Mapping | None = None,
) -> FolderData:
    """Reads a training-data folder.

    Chips are the ``.tif``, ``.tiff``, ``.png``, ``.jpg`` and ``.jpeg`` files of ``images/``,
    sorted by name; a chip's label file has the same stem. Boxes are clipped to their chip.

    Args:
        root: the folder holding ``images/`` (and ``labels/`` or ``labels.json``).
        dataset_type: the label format, one of :data:`~geolearn.data.esri.DATASET_TYPES`.
            Default None detects it (Esri metadata, then :func:`infer_dataset_type`).
        class_mapping: ``{value or label token: class name}`` (CONTRACT §2). With an EMD it
            renames class values; without one, objects whose token it lacks are left out.
            Default None: the EMD's names, else the folder's own (COCO categories, YOLO
            names), else the tokens themselves.

    Returns:
        The folder's chips, labels (clipped to each chip) and classes.

    Raises:
        DataFolderError: missing folder, ``images/``, ``labels/`` or ``labels.json``, an
            undetectable format, or a ``dataset_type`` that is not rectangles.
        NoChipsError: no chips, or none left with a label file.
        ImageReadError: an unreadable chip.
        BandMismatchError: chips with different band counts.
        LabelFormatError: a malformed label or metadata file (see :mod:`geolearn.data.labels`).

    Warns:
        GeolearnWarning: once each for chips without a label file (left out), objects of
            classes not in ``class_mapping`` (left out), and boxes clipped to or wholly outside
            their chip.

    Examples:
        >>> import numpy as np, rasterio, tempfile
        >>> from pathlib import Path
        >>> from geolearn.data.labels import write_kitti
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "images").mkdir(), (root / "labels").mkdir()
        (None, None)
        >>> for stem, boxes in [("a", [[2, 2, 6, 6]]), ("b", [])]:  # "b" is a background chip
        ...     with rasterio.open(root / "images" / f"{stem}.png", "w", driver="PNG",
        ...                        width=8, height=8, count=3, dtype="uint8") as dst:
        ...         dst.write(np.zeros((3, 8, 8), dtype="uint8"))
        ...     write_kitti(root / "labels" / f"{stem}.txt", ChipLabels.from_lists(boxes, ["pool"] * len(boxes)))
        >>> data = read_folder(root)
        >>> data.dataset_type, [p.name for p in data.images], data.classes
        ('KITTI_rectangles', ['a.png', 'b.png'], [ClassInfo(value=1, name='pool', color=(0, 168, 132))])
        >>> [labels.classes for labels in data.labels]
        [('pool',), ()]
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFolderError(f"{root}: no such folder. Pass the folder an export wrote (it holds images/).")
    unfinished = finish_interrupted_exports(root)
    if unfinished and not (root / "images").is_dir():
        raise DataFolderError(
            f"{root}: holds only an export that did not finish ({unfinished[0].name}: killed, or still "
            "running in another process). Export again; the next export removes it."
        )
    if (root / MAP_FILE).is_file() and not (root / EMD_FILE).is_file():
        raise DataFolderError(
            f"{root}: holds {MAP_FILE} but no {EMD_FILE}, which an export writes last: the export that "
            "wrote it did not finish (killed, or failed). Export again with overwrite=True; if the folder "
            f"is complete without an EMD, remove {MAP_FILE}."
        )
    images = _list_images(root)
    dataset_type = _check_dataset_type(dataset_type or esri_dataset_type(root) or infer_dataset_type(root), root)
    # rasterio releases the GIL while opening files. Warning filters are process-wide and
    # catch_warnings is not thread-safe, so the filter open_image sets is set here too.
    with ThreadPoolExecutor(max_workers=4) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        infos = list(pool.map(read_image_info, images))
    images, infos, raw_labels, token_names = _read_labels(root, dataset_type, images, infos)
    if not images:
        raise NoChipsError(f"{root}: none of the chips in images/ has a label file; nothing to train on.")
    _check_bands(root, images, infos)

    emd = read_json(root / EMD_FILE) if (root / EMD_FILE).exists() else None
    emd_classes = parse_classes(emd, root / EMD_FILE) if emd is not None else None
    labels, classes = _resolve_classes(root, raw_labels, emd_classes, token_names, class_mapping)

    n_clipped = n_dropped = 0
    for index, info in enumerate(infos):
        labels[index], clipped, dropped = clip_to_chip(labels[index], info.width, info.height)
        n_clipped += clipped
        n_dropped += dropped
    if n_clipped or n_dropped:
        warnings.warn(
            f"{root}: {n_clipped} boxes reached past their chip's edge and were clipped to it, and "
            f"{n_dropped} lay wholly outside their chip and were left out. Check the label files "
            "if this is unexpected (boxes are in chip pixels).",
            GeolearnWarning,
            stacklevel=2,
        )

    band_stats = None
    if (root / STATS_FILE).exists():
        state = read_json(root / STATS_FILE).get("BandStatsState")
        try:
            band_stats = BandStats.from_esri(state) if state else None
        except (KeyError, TypeError) as err:
            raise LabelFormatError(
                f"{root / STATS_FILE}: BandStatsState entries need Min, Max, M1, M2 and Num ({err!r})."
            ) from None
    logger.info("%s: %d chips, %s, classes %s", root, len(images), dataset_type, [c.name for c in classes])
    return FolderData(root, dataset_type, images, labels, infos, classes, band_stats, emd)
