"""The Esri metadata files of an exported training-data folder (CONTRACT §1).

``esri_model_definition.emd`` (classes, chip size, metadata mode),
``esri_accumulated_stats.json`` (feature counts and band statistics) and
``map.txt`` (image/label pairs with Windows separators). Reading is lenient
where ArcGIS versions differ (``Value``/``Name`` or ``ClassValue``/``ClassName``)
and strict where a wrong value would silently corrupt training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any, Iterable

from geolearn.atomic import atomic_write
from geolearn.errors import LabelFormatError

__all__ = [
    "EMD_FILE",
    "STATS_FILE",
    "MAP_FILE",
    "DATASET_TYPES",
    "ClassInfo",
    "read_json",
    "write_json",
    "parse_classes",
    "esri_dataset_type",
    "write_map_txt",
    "read_map_txt",
    "default_color",
]

EMD_FILE = "esri_model_definition.emd"
STATS_FILE = "esri_accumulated_stats.json"
MAP_FILE = "map.txt"
DATASET_TYPES = ("PASCAL_VOC_rectangles", "KITTI_rectangles", "COCO_rectangles", "YOLO_rectangles")

# Colours ArcGIS-like class symbology starts from; stable per class value so that
# figures and saved models keep the same colour for the same class.
_PALETTE = (
    (0, 168, 132), (255, 170, 0), (0, 112, 255), (230, 0, 169), (168, 56, 0),
    (85, 255, 0), (115, 178, 255), (255, 0, 0), (132, 0, 168), (255, 255, 0),
)


@dataclass(frozen=True)
class ClassInfo:
    """One class of an export: its numeric value, name and display colour.

    Attributes:
        value: the class value (the number label files use), usually 1..C.
        name: the class name.
        color: ``(r, g, b)``, each 0-255.

    Examples:
        >>> ClassInfo(1, "pool", default_color(1)).to_esri()
        {'Value': 1, 'Name': 'pool', 'Color': [0, 168, 132]}
    """

    value: int
    name: str
    color: tuple[int, int, int]

    def to_esri(self) -> dict[str, Any]:
        """The ``Classes`` entry as ArcGIS writes it.

        Returns:
            ``{"Value": int, "Name": str, "Color": [r, g, b]}``.
        """
        return {"Value": self.value, "Name": self.name, "Color": list(self.color)}


def default_color(value: int) -> tuple[int, int, int]:
    """A stable display colour for a class value.

    Ten colours, cycled: values 1 and 11 share one.

    Args:
        value: the class value (1-based).

    Returns:
        ``(r, g, b)``, each 0-255.

    Examples:
        >>> default_color(1), default_color(2), default_color(11)
        ((0, 168, 132), (255, 170, 0), (0, 168, 132))
    """
    return _PALETTE[(value - 1) % len(_PALETTE)]


def read_json(path: str | Path) -> dict[str, Any]:
    """Reads a JSON metadata file, naming the file when it is not valid JSON.

    UTF-8, UTF-16 and UTF-32, with or without the byte-order mark some Windows tools write, are read.

    Args:
        path: the JSON file.

    Returns:
        The parsed object.

    Raises:
        FileNotFoundError: the file does not exist.
        LabelFormatError: the file is not valid JSON, or not a JSON object.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / STATS_FILE
        >>> write_json(path, {"MetaDataMode": "PASCAL_VOC_rectangles"})
        >>> read_json(path)
        {'MetaDataMode': 'PASCAL_VOC_rectangles'}
        >>> _ = path.write_text("[1, 2]")
        >>> read_json(path)
        Traceback (most recent call last):
        ...
        geolearn.errors.LabelFormatError: ...esri_accumulated_stats.json: expected a JSON object, found list.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_bytes())  # json detects UTF-8/16/32, byte-order mark or not
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelFormatError(
            f"{path}: not valid JSON ({err}). Restore the file from the export, or re-export."
        ) from None
    if not isinstance(content, dict):
        raise LabelFormatError(f"{path}: expected a JSON object, found {type(content).__name__}.")
    return content


def write_json(path: str | Path, content: dict[str, Any]) -> None:
    """Writes JSON atomically: a reader never sees a half-written file.

    The content goes to a temporary file in the same folder, which then replaces ``path``;
    when serialising fails, neither file is left behind.

    Args:
        path: the file to write; its folder must exist. An existing file is replaced.
        content: a JSON-serialisable dict, written with an indent of 2.

    Raises:
        TypeError: a value JSON cannot serialise.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "stats.json"
        >>> write_json(path, {"Num": 3})
        >>> print(path.read_text())
        {
          "Num": 3
        }
    """
    text = json.dumps(content, indent=2)  # a value JSON cannot serialise fails here, before any file
    with atomic_write(path) as partial:
        partial.write_text(text)


def parse_classes(emd: dict[str, Any], path: str | Path) -> list[ClassInfo]:
    """The ``Classes`` of an EMD, accepting both ``Value/Name`` and ``ClassValue/ClassName``.

    Args:
        emd: the parsed EMD.
        path: the EMD's path, for error messages.

    Returns:
        Classes in file order; missing colours get :func:`default_color`.

    Raises:
        LabelFormatError: no ``Classes`` list, or an entry whose value is not an integer
            (a missing or blank name becomes the value as text).

    Examples:
        >>> emd = {"Classes": [{"ClassValue": 1, "ClassName": "pool"}, {"Value": 2, "Name": "tree", "Color": [0, 0, 255]}]}
        >>> for info in parse_classes(emd, "model.emd"):
        ...     print(info)
        ClassInfo(value=1, name='pool', color=(0, 168, 132))
        ClassInfo(value=2, name='tree', color=(0, 0, 255))
    """
    entries = emd.get("Classes")
    if not isinstance(entries, list):
        raise LabelFormatError(
            f"{path}: key 'Classes' must be a list of {{Value, Name, Color}}, found "
            f"{type(entries).__name__}. Re-export the training data or fix the file."
        )
    classes = []
    for index, entry in enumerate(entries):
        value = entry.get("Value", entry.get("ClassValue")) if isinstance(entry, dict) else None
        name = entry.get("Name", entry.get("ClassName")) if isinstance(entry, dict) else None
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError  # 1.5 or True would silently become another class value
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            raise LabelFormatError(
                f"{path}: Classes[{index}] has Value {value!r}; it must be an integer "
                "(key 'Value' or 'ClassValue')."
            ) from None
        if name is None or str(name).strip() == "":
            name = str(value)
        color = entry.get("Color")
        if not (isinstance(color, list) and len(color) >= 3):
            color = default_color(value)
        classes.append(ClassInfo(value, str(name), tuple(int(c) for c in color[:3])))
    return classes


def esri_dataset_type(root: str | Path) -> str | None:
    """The ``MetaDataMode`` of an Esri export, or None when the folder is not one.

    A folder is an Esri export when all three of ``esri_model_definition.emd``,
    ``map.txt`` and ``esri_accumulated_stats.json`` exist (arcgis.learn's rule). The mode is
    read from the stats file first, then from the EMD.

    Args:
        root: the folder.

    Returns:
        The ``MetaDataMode`` (e.g. ``"PASCAL_VOC_rectangles"``), or None when a file is missing
        or neither file names a mode.

    Raises:
        LabelFormatError: one of the JSON files is not a valid JSON object.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> print(esri_dataset_type(root))
        None
        >>> write_json(root / STATS_FILE, {"MetaDataMode": "KITTI_rectangles"})
        >>> write_json(root / EMD_FILE, {})
        >>> write_map_txt(root, [])
        >>> esri_dataset_type(root)
        'KITTI_rectangles'
    """
    root = Path(root)
    if not all((root / name).exists() for name in (EMD_FILE, MAP_FILE, STATS_FILE)):
        return None
    for name in (STATS_FILE, EMD_FILE):
        mode = read_json(root / name).get("MetaDataMode")
        if mode:
            return str(mode)
    return None


def write_map_txt(root: str | Path, pairs: Iterable[tuple[str, str]]) -> None:
    """Writes ``map.txt``: ``images\\<chip> labels\\<label>`` a line, Windows separators.

    Args:
        root: the export folder; ``map.txt`` in it is replaced.
        pairs: ``(image file name, label file name)`` per chip.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> write_map_txt(root, [("000000000.tif", "000000000.xml")])
        >>> (root / MAP_FILE).read_text()
        'images\\\\000000000.tif labels\\\\000000000.xml\\n'
    """
    (Path(root) / MAP_FILE).write_text("".join(_map_line(image, label) for image, label in pairs))


def _map_line(image: str, label: str) -> str:
    return f"images\\{image} labels\\{label}\n"


def read_map_txt(root: str | Path) -> list[tuple[str, str]]:
    """Reads ``map.txt`` into ``(image file name, label file name)`` pairs.

    Folders are dropped whatever their separator (``\\`` or ``/``); lines with fewer than two
    fields are skipped.

    Args:
        root: the export folder holding ``map.txt``.

    Returns:
        ``(image file name, label file name)`` per line, in file order.

    Raises:
        FileNotFoundError: the folder has no ``map.txt``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> write_map_txt(root, [("000000000.tif", "000000000.xml")])
        >>> read_map_txt(root)
        [('000000000.tif', '000000000.xml')]
    """
    pairs = []
    for line in (Path(root) / MAP_FILE).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            pairs.append((PureWindowsPath(parts[0]).name, PureWindowsPath(parts[1]).name))
    return pairs
