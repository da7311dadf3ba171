"""Label files of one chip: PASCAL VOC, KITTI, COCO and YOLO readers, VOC and KITTI writers.

Every reader returns :class:`ChipLabels`: boxes as ``Tensor[N, 4]`` float32 in
``(xmin, ymin, xmax, ymax)`` chip pixels (pixel *edges*: a box covering pixel
column 0 only is ``xmin=0, xmax=1``) and the class token exactly as the file
writes it (a number such as ``"1"`` from an Esri export, or a name). Turning
tokens into classes is the caller's job, because it depends on the data
folder's class mapping.

Each reader raises :class:`~geolearn.errors.LabelFormatError` naming the file,
the object and the bad value when a file cannot be trusted; an empty file is a
background chip, not an error.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from geolearn.errors import LabelFormatError

__all__ = [
    "ChipLabels",
    "read_voc",
    "read_kitti",
    "read_yolo",
    "read_yolo_class_names",
    "read_coco",
    "write_voc",
    "write_kitti",
    "clip_to_chip",
]


@dataclass(frozen=True)
class ChipLabels:
    """The objects of one chip.

    ``len(labels)`` is the number of objects; a background chip has none.

    Attributes:
        chip_boxes: ``Tensor[N, 4]`` float32, ``(xmin, ymin, xmax, ymax)`` in chip pixels.
        classes: the N class tokens as written in the label file.

    Raises:
        ValueError: ``chip_boxes`` is not of shape ``(len(classes), 4)``.

    Examples:
        >>> labels = ChipLabels.from_lists([[10, 20, 30, 40]], ["1"])
        >>> len(labels), labels.chip_boxes, labels.classes
        (1, tensor([[10., 20., 30., 40.]]), ('1',))
        >>> len(ChipLabels.empty())
        0
    """

    chip_boxes: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.chip_boxes.shape != (len(self.classes), 4):
            raise ValueError(
                f"chip_boxes has shape {tuple(self.chip_boxes.shape)} but there are "
                f"{len(self.classes)} classes; expected ({len(self.classes)}, 4)"
            )

    @classmethod
    def from_lists(cls, boxes: Sequence[Sequence[float]], classes: Sequence[str]) -> "ChipLabels":
        """Builds labels from plain lists of xyxy boxes and class tokens.

        Args:
            boxes: N ``[xmin, ymin, xmax, ymax]`` boxes in chip pixels (an empty list is fine).
            classes: N class tokens; each is turned into ``str``.

        Returns:
            The labels, boxes as float32.

        Raises:
            ValueError: the numbers of boxes and classes differ.
        """
        chip_boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return cls(chip_boxes, tuple(str(c) for c in classes))

    @classmethod
    def empty(cls) -> "ChipLabels":
        """A background chip: no objects.

        Returns:
            Labels with ``chip_boxes`` of shape ``(0, 4)`` and no classes.
        """
        return cls(torch.zeros((0, 4), dtype=torch.float32), ())

    def __len__(self) -> int:
        return len(self.classes)


def _check_box(path: Path, where: str, box: Sequence[float]) -> None:
    """Raises when a box is not finite or has no area; ``where`` names it ("object 3", "line 4")."""
    xmin, ymin, xmax, ymax = box
    if not all(math.isfinite(v) for v in box):
        raise LabelFormatError(
            f"{path}: {where} has a non-finite coordinate {list(box)}; "
            "fix or remove that object, or re-export the chips."
        )
    if xmin >= xmax or ymin >= ymax:
        raise LabelFormatError(
            f"{path}: {where} has an empty or inverted box "
            f"(xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}); a box needs "
            "xmin < xmax and ymin < ymax. Fix or remove that object, or re-export the chips."
        )


def _is_blank(path: Path) -> bool:
    return path.stat().st_size == 0 or not path.read_text(errors="replace").strip()


def read_voc(path: str | Path) -> ChipLabels:
    """Reads a PASCAL VOC XML file.

    Only ``object/name`` and ``object/bndbox/{xmin, ymin, xmax, ymax}`` are used
    (floats, pixels), as in arcgis.learn. An empty file or one without objects is
    a background chip.

    Args:
        path: the ``.xml`` file.

    Returns:
        The chip's labels.

    Raises:
        LabelFormatError: malformed XML, a root element other than ``<annotation>`` (another
            XML dialect, such as CVAT's), an object without name or box, a
            non-numeric or non-finite coordinate, or a box with ``xmin >= xmax`` /
            ``ymin >= ymax``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> xml = Path(tempfile.mkdtemp()) / "000000001.xml"
        >>> _ = xml.write_text(
        ...     "<annotation><object><name>1</name><bndbox><xmin>10</xmin><ymin>20</ymin>"
        ...     "<xmax>30.5</xmax><ymax>40</ymax></bndbox></object></annotation>"
        ... )
        >>> labels = read_voc(xml)
        >>> labels.chip_boxes, labels.classes
        (tensor([[10.0000, 20.0000, 30.5000, 40.0000]]), ('1',))
    """
    path = Path(path)
    if _is_blank(path):
        return ChipLabels.empty()
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise LabelFormatError(
            f"{path}: not valid PASCAL VOC XML ({err}). Fix the file, delete it together "
            "with its chip, or re-export the chips."
        ) from None
    if root.tag != "annotation":  # CVAT's <annotations>, COCO-as-XML, ...: their objects would read as none
        raise LabelFormatError(
            f"{path}: the root element is <{root.tag}>, not PASCAL VOC's <annotation>, so its objects "
            "cannot be read. Convert the labels to PASCAL VOC (one <annotation> file per chip; CVAT "
            "exports it as 'PASCAL VOC'), or re-export the chips."
        )
    boxes, classes = [], []
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        if not name or bndbox is None:
            missing = "<name>" if not name else "<bndbox>"
            raise LabelFormatError(
                f"{path}: object {index} ({name or 'no name'!r}) lacks a {missing}; every "
                "<object> needs both <name> and <bndbox>. Fix or remove that object."
            )
        box = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = bndbox.findtext(tag)
            try:
                box.append(float(text))
            except (TypeError, ValueError):
                raise LabelFormatError(
                    f"{path}: object {index} ({name!r}) has <{tag}> {text!r} in <bndbox>; "
                    "xmin, ymin, xmax and ymax must be numbers (pixels). Fix or remove that object."
                ) from None
        _check_box(path, f"object {index}", box)
        boxes.append(box)
        classes.append(name)
    return ChipLabels.from_lists(boxes, classes)


def _text_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line of a text label file."""
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        fields = line.split()
        if fields:
            yield lineno, fields


def read_kitti(path: str | Path) -> ChipLabels:
    """Reads a KITTI label file: one object a line, whitespace-separated.

    Fields: class, truncated, occluded, alpha, xmin, ymin, xmax, ymax, then seven
    3-D fields that detection ignores (they may be missing). The class may be a
    number or text; negative or fractional values in the other fields parse (arcgis.learn
    chokes on both).

    Args:
        path: the ``.txt`` file.

    Returns:
        The chip's labels.

    Raises:
        LabelFormatError: a line with fewer than 8 fields, a non-numeric or non-finite box
            field, or an empty/inverted box.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> txt = Path(tempfile.mkdtemp()) / "000000001.txt"
        >>> _ = txt.write_text("pool 0.00 0 0.00 10.00 20.00 30.00 40.00\\n")
        >>> labels = read_kitti(txt)
        >>> labels.chip_boxes, labels.classes
        (tensor([[10., 20., 30., 40.]]), ('pool',))
    """
    path = Path(path)
    boxes, classes = [], []
    for lineno, fields in _text_rows(path):
        if len(fields) < 8:
            raise LabelFormatError(
                f"{path}: line {lineno} has {len(fields)} fields, KITTI needs at least 8 "
                "(class truncated occluded alpha xmin ymin xmax ymax ...). Fix that line."
            )
        try:
            box = [float(v) for v in fields[4:8]]
        except ValueError:
            raise LabelFormatError(
                f"{path}: line {lineno} has a non-numeric box {fields[4:8]}; fields 5-8 "
                "must be xmin ymin xmax ymax in pixels. Fix that line."
            ) from None
        _check_box(path, f"line {lineno}", box)
        boxes.append(box)
        classes.append(fields[0])
    return ChipLabels.from_lists(boxes, classes)


def read_yolo(path: str | Path, image_width: int, image_height: int) -> ChipLabels:
    """Reads a YOLO label file: ``class cx cy w h`` a line, normalised to [0, 1].

    Args:
        path: the ``.txt`` file.
        image_width: chip width in pixels, to undo the normalisation.
        image_height: chip height in pixels.

    Returns:
        The chip's labels, boxes xyxy in chip pixels; class tokens are the class indices as
        written. Boxes are not clipped to the chip.

    Raises:
        LabelFormatError: a line that is not five numbers, or a box with no area or a
            non-finite coordinate.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> txt = Path(tempfile.mkdtemp()) / "000000001.txt"
        >>> _ = txt.write_text("0 0.5 0.5 0.25 0.5\\n")
        >>> labels = read_yolo(txt, image_width=200, image_height=100)
        >>> labels.chip_boxes, labels.classes
        (tensor([[ 75.,  25., 125.,  75.]]), ('0',))
    """
    path = Path(path)
    boxes, classes = [], []
    for lineno, fields in _text_rows(path):
        try:
            cx, cy, w, h = (float(v) for v in fields[1:5])
            if len(fields) != 5:
                raise ValueError
        except ValueError:
            raise LabelFormatError(
                f"{path}: line {lineno} is {' '.join(fields)!r}; YOLO needs five numbers "
                "'class cx cy w h' normalised to [0, 1]. Fix that line."
            ) from None
        box = [
            (cx - w / 2) * image_width,
            (cy - h / 2) * image_height,
            (cx + w / 2) * image_width,
            (cy + h / 2) * image_height,
        ]
        _check_box(path, f"line {lineno}", box)
        boxes.append(box)
        classes.append(fields[0])
    return ChipLabels.from_lists(boxes, classes)


def read_yolo_class_names(root: str | Path) -> dict[str, str] | None:
    """Class names of a YOLO folder, from ``classes.txt`` or ``data.yaml``/``dataset.yaml``.

    ``classes.txt`` (one name a line, blank lines skipped) wins over the YAML files; in
    those, ``names`` may be a list or an ``{index: name}`` mapping.

    Args:
        root: the YOLO data folder.

    Returns:
        ``{index token: name}``, or None when the folder names no classes.

    Raises:
        LabelFormatError: a YAML file that does not parse, or whose ``names`` is neither a list
            nor a mapping.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "classes.txt").write_text("pool\\ntree\\n")
        >>> read_yolo_class_names(root)
        {'0': 'pool', '1': 'tree'}
    """
    root = Path(root)
    classes_txt = root / "classes.txt"
    if classes_txt.exists():
        names = [n.strip() for n in classes_txt.read_text().splitlines() if n.strip()]
        return {str(i): name for i, name in enumerate(names)}
    for yaml_name in ("data.yaml", "dataset.yaml"):
        yaml_path = root / yaml_name
        if yaml_path.exists():
            import yaml  # fastai depends on PyYAML

            try:
                content = yaml.safe_load(yaml_path.read_text()) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                raise LabelFormatError(
                    f"{yaml_path}: not valid YAML ({' '.join(str(err).split())}). Fix the file "
                    "(it needs 'names: [name, ...]'), or delete it and list the class names in classes.txt."
                ) from None
            names = content.get("names") if isinstance(content, dict) else None
            if isinstance(names, dict):
                return {str(k): str(v) for k, v in names.items()}
            if isinstance(names, list):
                return {str(i): str(v) for i, v in enumerate(names)}
            if not isinstance(content, dict) or names is not None:
                raise LabelFormatError(
                    f"{yaml_path}: expected a mapping with 'names' as a list or an {{index: name}} mapping, "
                    f"found {type(names if isinstance(content, dict) else content).__name__}. Fix the file, "
                    "or delete it and list the class names in classes.txt."
                )
    return None


def read_coco(path: str | Path) -> tuple[dict[str, ChipLabels], dict[str, str]]:
    """Reads a COCO detection file (``labels.json``).

    Args:
        path: the JSON file with ``images``, ``annotations`` and ``categories``.

    Returns:
        ``({image file name: labels}, {category id token: category name})``. Images
        without annotations are background chips. Class tokens are category ids.

    Raises:
        LabelFormatError: invalid JSON (UTF-8, -16 and -32 are read), missing keys, or a bad ``bbox`` (COCO's
            ``[x, y, width, height]`` in pixels, converted here to xyxy).

    Examples:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "labels.json"
        >>> _ = path.write_text(json.dumps({
        ...     "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        ...     "annotations": [{"image_id": 1, "category_id": 3, "bbox": [10, 20, 5, 5]}],
        ...     "categories": [{"id": 3, "name": "pool"}],
        ... }))
        >>> labels, names = read_coco(path)
        >>> labels["a.png"].chip_boxes, len(labels["b.png"]), names
        (tensor([[10., 20., 15., 25.]]), 0, {'3': 'pool'})
    """
    path = Path(path)
    try:
        # Bytes, not text: json detects UTF-8, -16 and -32 (with or without a byte-order mark) itself.
        coco = json.loads(path.read_bytes())
        images = {_coco_id(img["id"]): _coco_text(img["file_name"]) for img in _coco_list(coco, "images")}
        categories = {str(_coco_id(cat["id"])): str(cat["name"]) for cat in _coco_list(coco, "categories")}
        annotations = _coco_list(coco, "annotations") if "annotations" in coco else []
    except UnicodeDecodeError as err:
        raise LabelFormatError(
            f"{path}: not text in UTF-8, UTF-16 or UTF-32 ({err.reason} at byte {err.start}); "
            "save it as UTF-8 JSON."
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise LabelFormatError(
            f"{path}: not a COCO detection file ({type(err).__name__}: {err}); it needs "
            "'images' (id, file_name), 'annotations' and 'categories' (id, name)."
        ) from None
    per_image: dict[str, tuple[list, list]] = {name: ([], []) for name in images.values()}
    for index, ann in enumerate(annotations):
        try:
            bbox = ann["bbox"]
            if not isinstance(bbox, list) or not all(type(v) in (int, float) for v in bbox):
                raise TypeError  # a string would iterate as digits, a bool count as 0 or 1
            x, y, w, h = (float(v) for v in bbox)
            file_name = images[_coco_id(ann["image_id"])]
            category = str(_coco_id(ann["category_id"]))
        except (KeyError, TypeError, ValueError):
            raise LabelFormatError(
                f"{path}: annotation {index} needs image_id (of a listed image), "
                "category_id and bbox [x, y, width, height]. Fix that annotation."
            ) from None
        box = [x, y, x + w, y + h]
        _check_box(path, f"annotation {index}", box)
        per_image[file_name][0].append(box)
        per_image[file_name][1].append(category)
    labels = {name: ChipLabels.from_lists(b, c) for name, (b, c) in per_image.items()}
    return labels, categories


def _coco_list(coco: object, key: str) -> list[dict]:
    """``coco[key]``, which must be a list of objects (TypeError otherwise, KeyError when missing)."""
    if not isinstance(coco, dict):
        raise TypeError(f"the file holds a JSON {type(coco).__name__}, not an object")
    value = coco[key]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError(f"'{key}' must be a list of objects")
    return value


def _coco_id(value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"an id must be a number or text, not {value!r}")
    return value


def _coco_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a file_name must be text, not {value!r}")
    return value


def write_voc(
    path: str | Path,
    labels: ChipLabels,
    *,
    image_name: str,
    width: int,
    height: int,
    depth: int,
) -> None:
    """Writes a PASCAL VOC XML file the way ArcGIS's export does.

    Args:
        path: the ``.xml`` file to write.
        labels: boxes in chip pixels and their class tokens (an export writes class values).
        image_name: the chip's file name, for ``<filename>``.
        width: chip width in pixels.
        height: chip height in pixels.
        depth: number of bands.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> xml = Path(tempfile.mkdtemp()) / "000000001.xml"
        >>> labels = ChipLabels.from_lists([[10, 20, 30, 40]], ["1"])
        >>> write_voc(xml, labels, image_name="000000001.tif", width=256, height=256, depth=3)
        >>> back = read_voc(xml)
        >>> back.chip_boxes, back.classes
        (tensor([[10., 20., 30., 40.]]), ('1',))
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", depth)):
        ET.SubElement(size, tag).text = str(value)
    for box, token in zip(labels.chip_boxes.tolist(), labels.classes):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = token
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = f"{value:.2f}"
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8")


def write_kitti(path: str | Path, labels: ChipLabels) -> None:
    """Writes a KITTI label file: 15 fields a line, the 3-D ones zero.

    Coordinates are written with two decimals (pixels); a chip without objects gives an
    empty file.

    Args:
        path: the ``.txt`` file to write.
        labels: boxes in chip pixels and their class tokens.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> txt = Path(tempfile.mkdtemp()) / "000000001.txt"
        >>> write_kitti(txt, ChipLabels.from_lists([[10, 20, 30, 40]], ["1"]))
        >>> txt.read_text()
        '1 0.00 0 0.00 10.00 20.00 30.00 40.00 0.00 0.00 0.00 0.00 0.00 0.00 0.00\\n'
    """
    lines = [
        f"{token} 0.00 0 0.00 {xmin:.2f} {ymin:.2f} {xmax:.2f} {ymax:.2f} "
        "0.00 0.00 0.00 0.00 0.00 0.00 0.00"
        for (xmin, ymin, xmax, ymax), token in zip(labels.chip_boxes.tolist(), labels.classes)
    ]
    Path(path).write_text("".join(line + "\n" for line in lines))


def clip_to_chip(labels: ChipLabels, width: int, height: int) -> tuple[ChipLabels, int, int]:
    """Clips boxes to the chip and drops boxes that lie wholly outside it.

    Args:
        labels: boxes in chip pixels.
        width: chip width in pixels.
        height: chip height in pixels.

    Returns:
        ``(clipped labels, number of boxes clipped, number of boxes dropped)``.

    Examples:
        >>> labels = ChipLabels.from_lists([[-5, 10, 20, 30], [300, 0, 310, 5]], ["1", "2"])
        >>> clipped, n_clipped, n_dropped = clip_to_chip(labels, width=256, height=256)
        >>> clipped.chip_boxes, clipped.classes, n_clipped, n_dropped
        (tensor([[ 0., 10., 20., 30.]]), ('1',), 1, 1)
    """
    boxes = labels.chip_boxes
    clipped = boxes.clone()
    clipped[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = (clipped != boxes).any(dim=1)
    n_dropped = int((~keep).sum())
    n_clipped = int((changed & keep).sum())
    kept_classes = tuple(c for c, k in zip(labels.classes, keep.tolist()) if k)
    return ChipLabels(clipped[keep], kept_classes), n_clipped, n_dropped

