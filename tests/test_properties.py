"""Property-based tests (hypothesis): label readers, box conversions and the EMD reader.

Two kinds of property. Round trips: what a writer writes, its reader reads back (boxes within the
writer's two decimals). Robustness: whatever a file holds, a reader returns labels or raises its
own error naming the file (``LabelFormatError``, ``ModelDefinitionError``), never a raw exception
from deep inside a library, and never a box that is not finite or has no area.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops import box_convert

from geolearn.data.boxes import pixel_to_unit, unit_to_pixel
from geolearn.data.esri import ClassInfo
from geolearn.data.labels import (
    ChipLabels,
    read_coco,
    read_kitti,
    read_voc,
    read_yolo,
    read_yolo_class_names,
    write_kitti,
    write_voc,
)
from geolearn.data.normalization import Normalization
from geolearn.errors import LabelFormatError, ModelDefinitionError
from geolearn.learn.config import ModelConfig
from geolearn.learn.emd import read_emd
from geolearn.models.boxes import cthw_to_xyxy, xyxy_to_cthw

# Each example writes a file: keep the runs short, and a fresh folder per example (not tmp_path,
# which one test shares across all its examples).
PROFILE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

coordinates = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
sizes = st.floats(min_value=0.05, max_value=1e4, allow_nan=False, allow_infinity=False)
tokens = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
                 min_size=1, max_size=12)


@st.composite
def chip_labels(draw) -> ChipLabels:
    n = draw(st.integers(0, 6))
    boxes = []
    for _ in range(n):
        x, y, w, h = draw(coordinates), draw(coordinates), draw(sizes), draw(sizes)
        boxes.append([round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)])
    boxes = [b for b in boxes if b[0] < b[2] and b[1] < b[3]]  # rounding may close a tiny box
    return ChipLabels.from_lists(boxes, [draw(tokens) for _ in boxes])


def _file(name: str, content: str | bytes | None = None) -> Path:
    """A path in a fresh folder, holding ``content`` when given."""
    path = Path(tempfile.mkdtemp()) / name
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _well_formed(labels: ChipLabels) -> bool:
    boxes = labels.chip_boxes
    return bool(torch.isfinite(boxes).all() and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())


def _labels_or_own_error(read, path: Path) -> None:
    """``read(path)`` gives well-formed labels, or a LabelFormatError that names the file."""
    try:
        labels = read(path)
    except LabelFormatError as err:
        assert str(path) in str(err)
    else:
        assert _well_formed(labels)


# ----------------------------------------------------------------------------- round trips


@PROFILE
@given(chip_labels())
def test_voc_written_is_read_back(labels: ChipLabels) -> None:
    path = _file("000000001.xml")
    write_voc(path, labels, image_name="000000001.tif", width=256, height=256, depth=3)
    back = read_voc(path)
    assert back.classes == labels.classes
    torch.testing.assert_close(back.chip_boxes, labels.chip_boxes, atol=0.006, rtol=0)


@PROFILE
@given(chip_labels().filter(lambda labels: all(" " not in c for c in labels.classes)))
def test_kitti_written_is_read_back(labels: ChipLabels) -> None:
    path = _file("000000001.txt")
    write_kitti(path, labels)
    back = read_kitti(path)
    assert back.classes == labels.classes
    torch.testing.assert_close(back.chip_boxes, labels.chip_boxes, atol=0.006, rtol=0)


@PROFILE
@given(st.lists(st.tuples(st.integers(0, 9), st.floats(0, 1), st.floats(0, 1), st.floats(0.001, 1), st.floats(0.001, 1)),
                max_size=6),
       st.integers(1, 2048), st.integers(1, 2048))
def test_yolo_rows_are_read_as_pixel_boxes(rows, width: int, height: int) -> None:
    path = _file("000000001.txt")
    path.write_text("".join(f"{c} {cx!r} {cy!r} {w!r} {h!r}\n" for c, cx, cy, w, h in rows))
    labels = read_yolo(path, width, height)
    assert labels.classes == tuple(str(c) for c, *_ in rows)
    # by hand: centre and size scaled by the chip, then to corners
    expected = [[(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
                for _, cx, cy, w, h in rows]
    torch.testing.assert_close(labels.chip_boxes, torch.tensor(expected, dtype=torch.float32).reshape(-1, 4))


@PROFILE
@given(st.lists(st.tuples(coordinates, coordinates, sizes, sizes, st.integers(1, 5)), max_size=6))
def test_coco_xywh_boxes_are_read_as_xyxy(rows) -> None:
    path = _file("labels.json")
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.png"}],
        "annotations": [{"image_id": 7, "category_id": c, "bbox": [x, y, w, h]} for x, y, w, h, c in rows],
        "categories": [{"id": c, "name": f"class {c}"} for c in range(1, 6)],
    }))
    labels, names = read_coco(path)
    expected = box_convert(torch.tensor([r[:4] for r in rows], dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")
    torch.testing.assert_close(labels["a.png"].chip_boxes, expected.float())
    assert labels["a.png"].classes == tuple(str(r[4]) for r in rows) and names["3"] == "class 3"


# ----------------------------------------------------------------------------- readers on anything


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
coco_like = st.fixed_dictionaries({}, optional={
    "images": st.lists(st.fixed_dictionaries({}, optional={"id": json_values, "file_name": json_values}), max_size=3) | json_values,
    "annotations": st.lists(st.fixed_dictionaries({}, optional={
        "image_id": json_values, "category_id": json_values,
        "bbox": st.lists(st.floats() | st.integers(-5, 5) | st.text(max_size=3), max_size=5) | json_values,
    }), max_size=3) | json_values,
    "categories": st.lists(st.fixed_dictionaries({}, optional={"id": json_values, "name": json_values}), max_size=3) | json_values,
}) | json_values


@PROFILE
@given(coco_like)
def test_read_coco_on_any_json_gives_labels_or_its_own_error(content) -> None:
    path = _file("labels.json")
    path.write_text(json.dumps(content))
    _labels_or_own_error(_coco_as_one_chip, path)


def _coco_as_one_chip(path: Path) -> ChipLabels:
    """The labels of every image of a COCO file together."""
    chips = list(read_coco(path)[0].values())
    boxes = torch.cat([chip.chip_boxes for chip in chips]) if chips else torch.zeros((0, 4))
    return ChipLabels(boxes, tuple(c for chip in chips for c in chip.classes))


xml_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda root, objects: f"<{root}>{''.join(objects)}</{root}>",
              st.sampled_from(["annotation", "annotations", "doc"]),
              st.lists(st.builds(
                  lambda name, box: f"<object>{name}<bndbox>{''.join(box)}</bndbox></object>",
                  st.sampled_from(["", "<name>tree</name>", "<name> </name>"]),
                  st.lists(st.builds(lambda tag, value: f"<{tag}>{value}</{tag}>",
                                     st.sampled_from(["xmin", "ymin", "xmax", "ymax"]),
                                     st.sampled_from(["1", "5.5", "-3", "nan", "inf", "1e400", "x", ""])), max_size=5)),
                  max_size=3)),
)


@PROFILE
@given(xml_text | st.binary(max_size=200))
def test_read_voc_on_any_file_gives_labels_or_its_own_error(content) -> None:
    _labels_or_own_error(read_voc, _file("000000001.xml", content))


text_rows = st.lists(st.lists(st.sampled_from(["0", "1", "tree", "0.5", "-1", "nan", "inf", "1e400", "0.0", "x", "2"]),
                              max_size=16).map(" ".join), max_size=5).map("\n".join)


@PROFILE
@given(text_rows | st.binary(max_size=120))
def test_read_kitti_and_yolo_on_any_file_give_labels_or_their_own_error(content) -> None:
    path = _file("000000001.txt", content)
    _labels_or_own_error(read_kitti, path)
    _labels_or_own_error(lambda p: read_yolo(p, 64, 48), path)


@PROFILE
@given(st.text(max_size=120) | st.binary(max_size=120))
def test_read_yolo_class_names_on_any_data_yaml_gives_names_or_its_own_error(content) -> None:
    root = _file("data.yaml", content).parent
    try:
        names = read_yolo_class_names(root)
    except LabelFormatError as err:
        assert "data.yaml" in str(err)
    else:
        assert names is None or all(isinstance(k, str) and isinstance(v, str) for k, v in names.items())


# ----------------------------------------------------------------------------- box conversions


boxes_xyxy = st.lists(st.tuples(coordinates, coordinates, sizes, sizes), min_size=1, max_size=8).map(
    lambda rows: torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float64))


@PROFILE
@given(boxes_xyxy, st.integers(1, 4096), st.integers(1, 4096))
def test_pixel_and_unit_boxes_convert_both_ways(boxes, height: int, width: int) -> None:
    unit = pixel_to_unit(boxes, height, width)
    torch.testing.assert_close(unit_to_pixel(unit, height, width), boxes)
    # by hand: the chip's edges are -1 and +1
    torch.testing.assert_close(unit[:, 0], boxes[:, 0] / width * 2 - 1)
    torch.testing.assert_close(unit[:, 3], boxes[:, 3] / height * 2 - 1)


@PROFILE
@given(boxes_xyxy)
def test_cthw_is_torchvisions_cxcywh_with_axes_swapped(boxes) -> None:
    cthw = xyxy_to_cthw(boxes)
    cxcywh = box_convert(boxes, "xyxy", "cxcywh")
    torch.testing.assert_close(cthw, cxcywh[:, [1, 0, 3, 2]])
    torch.testing.assert_close(cthw_to_xyxy(cthw), boxes)


# ----------------------------------------------------------------------------- the EMD reader


def _valid_emd() -> dict:
    config = ModelConfig(class_infos=[ClassInfo(1, "pool", (0, 168, 132)), ClassInfo(2, "tree", (20, 90, 40))],
                         chip_size=256, normalization=Normalization.for_rgb8(), n_bands=3, extract_bands=[0, 1, 2],
                         backbone="resnet18")
    return config.to_emd("pools.pth")


VALID_EMD = _valid_emd()


@st.composite
def damaged_emds(draw) -> dict:
    """A valid EMD with a few top-level or geolearn-section keys deleted or given any JSON value."""
    emd = json.loads(json.dumps(VALID_EMD))
    for _ in range(draw(st.integers(1, 3))):
        section = emd
        if isinstance(emd.get("geolearn"), dict) and draw(st.booleans()):
            section = emd["geolearn"]
        if not section:
            break
        key = draw(st.sampled_from(sorted(section)))
        if draw(st.booleans()):
            del section[key]
        else:
            section[key] = draw(json_values)
    return emd


@PROFILE
@given(damaged_emds())
def test_read_emd_on_a_damaged_definition_gives_a_model_or_its_own_error(emd: dict) -> None:
    path = _file("pools.emd")
    path.write_text(json.dumps(emd))
    try:
        definition = read_emd(path, require_model_file=False)
    except ModelDefinitionError as err:
        assert "pools.emd" in str(err)
    else:
        config = definition.config
        assert config.chip_size > 0 and config.n_bands > 0 and config.class_infos
        assert all(math.isfinite(v) for v in config.normalization.mean + config.normalization.std)


def test_read_emd_reads_the_valid_definition_the_damaged_ones_start_from() -> None:
    path = _file("pools.emd")
    path.write_text(json.dumps(VALID_EMD))
    assert [c.name for c in read_emd(path, require_model_file=False).config.class_infos] == ["pool", "tree"]
