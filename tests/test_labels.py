"""Tests of geolearn.data.labels: VOC, KITTI, YOLO and COCO readers, writers, clipping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geolearn.data.labels import (
    ChipLabels,
    clip_to_chip,
    read_coco,
    read_kitti,
    read_voc,
    read_yolo,
    read_yolo_class_names,
    write_kitti,
    write_voc,
)
from geolearn.errors import LabelFormatError


def _boxes(labels: ChipLabels) -> list[list[float]]:
    return labels.chip_boxes.tolist()


def _voc_xml(*objects: str) -> str:
    return (
        "<annotation><filename>000000000.tif</filename>"
        "<size><width>64</width><height>48</height><depth>3</depth></size>"
        + "".join(objects)
        + "</annotation>"
    )


def _voc_object(name: str, xmin: str, ymin: str, xmax: str, ymax: str) -> str:
    return (
        f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
        "</bndbox></object>"
    )


# --------------------------------------------------------------------------- VOC


def test_read_voc_numeric_classes_as_an_export_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "000000000.xml"
    path.write_text(
        _voc_xml(_voc_object("1", "10", "20", "30", "40"), _voc_object("2", "0", "0", "64", "48"))
    )
    labels = read_voc(path)
    assert labels.classes == ("1", "2")
    assert labels.chip_boxes.dtype == torch.float32
    assert _boxes(labels) == [[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 64.0, 48.0]]
    assert len(labels) == 2


def test_read_voc_text_classes_and_float_coordinates(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(
        _voc_xml(
            _voc_object(" car ", "1.5", "2.25", "10.75", "20.5"),
            _voc_object("tree", "0.0", "3", "4.5", "7.125"),
        )
    )
    labels = read_voc(path)
    assert labels.classes == ("car", "tree")  # surrounding whitespace stripped
    assert _boxes(labels) == [[1.5, 2.25, 10.75, 20.5], [0.0, 3.0, 4.5, 7.125]]


def test_read_voc_empty_file_is_a_background_chip(tmp_path: Path) -> None:
    empty = tmp_path / "empty.xml"
    empty.write_text("")
    blank = tmp_path / "blank.xml"
    blank.write_text("  \n\n ")
    for path in (empty, blank):
        labels = read_voc(path)
        assert len(labels) == 0
        assert labels.chip_boxes.shape == (0, 4)
        assert labels.classes == ()


def test_read_voc_without_objects_is_a_background_chip(tmp_path: Path) -> None:
    path = tmp_path / "background.xml"
    path.write_text(_voc_xml())
    labels = read_voc(path)
    assert labels.chip_boxes.shape == (0, 4)
    assert labels.classes == ()


def test_read_voc_malformed_xml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.xml"
    path.write_text("<annotation><object><name>1</name></annotation")
    with pytest.raises(LabelFormatError, match=r"broken\.xml: not valid PASCAL VOC XML"):
        read_voc(path)


def test_read_voc_refuses_cvat_xml_instead_of_reading_an_empty_chip(tmp_path: Path) -> None:
    path = tmp_path / "000000001.xml"
    path.write_text(  # CVAT for images 1.1: boxes in <image><box>, no <object>
        '<annotations><version>1.1</version><image id="0" name="000000001.png" width="64" height="64">'
        '<box label="tree" xtl="1" ytl="2" xbr="10" ybr="12" occluded="0"/></image></annotations>'
    )
    with pytest.raises(LabelFormatError, match=r"000000001\.xml: the root element is <annotations>, not PASCAL VOC's <annotation>"):
        read_voc(path)


def test_read_voc_missing_bndbox_names_the_file_and_object(tmp_path: Path) -> None:
    path = tmp_path / "nobox.xml"
    path.write_text(_voc_xml("<object><name>car</name></object>"))
    with pytest.raises(LabelFormatError, match=r"nobox\.xml: object 0 \('car'\) lacks a <bndbox>"):
        read_voc(path)


def test_read_voc_missing_name_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "noname.xml"
    path.write_text(
        _voc_xml(
            _voc_object("1", "1", "1", "5", "5"),
            "<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox>"
            "</object>",
        )
    )
    with pytest.raises(LabelFormatError, match=r"noname\.xml: object 1 .*lacks a <name>"):
        read_voc(path)


def test_read_voc_non_numeric_coordinate_names_file_tag_and_value(tmp_path: Path) -> None:
    path = tmp_path / "text.xml"
    path.write_text(_voc_xml(_voc_object("car", "1", "2", "abc", "8")))
    with pytest.raises(LabelFormatError, match=r"text\.xml: object 0 \('car'\) has <xmax> 'abc'"):
        read_voc(path)


def test_read_voc_missing_coordinate_names_the_tag(tmp_path: Path) -> None:
    path = tmp_path / "short.xml"
    path.write_text(
        _voc_xml(
            "<object><name>car</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
            "</bndbox></object>"
        )
    )
    with pytest.raises(LabelFormatError, match=r"short\.xml: object 0 \('car'\) has <ymax> None"):
        read_voc(path)


@pytest.mark.parametrize(
    ("xmin", "ymin", "xmax", "ymax", "message"),
    [
        ("30", "2", "10", "8", r"xmin=30, ymin=2, xmax=10, ymax=8"),  # xmin > xmax
        ("10", "2", "10", "8", r"xmin=10, ymin=2, xmax=10, ymax=8"),  # xmin == xmax
        ("1", "9", "10", "9", r"xmin=1, ymin=9, xmax=10, ymax=9"),  # ymin == ymax
    ],
)
def test_read_voc_empty_or_inverted_box_names_file_and_values(
    tmp_path: Path, xmin: str, ymin: str, xmax: str, ymax: str, message: str
) -> None:
    path = tmp_path / "inverted.xml"
    path.write_text(_voc_xml(_voc_object("car", xmin, ymin, xmax, ymax)))
    with pytest.raises(LabelFormatError, match=r"inverted\.xml: object 0 has an empty or inverted box"):
        read_voc(path)
    with pytest.raises(LabelFormatError, match=message):
        read_voc(path)


def test_read_voc_non_finite_coordinate_raises(tmp_path: Path) -> None:
    path = tmp_path / "nan.xml"
    path.write_text(_voc_xml(_voc_object("car", "nan", "1", "5", "5")))
    with pytest.raises(LabelFormatError, match=r"nan\.xml: object 0 has a non-finite coordinate"):
        read_voc(path)


# --------------------------------------------------------------------------- KITTI


def test_read_kitti_fifteen_fields_text_and_numeric_classes(tmp_path: Path) -> None:
    path = tmp_path / "000000001.txt"
    path.write_text(
        "1 0.00 0 0.00 10.00 20.00 30.00 40.00 0.00 0.00 0.00 0.00 0.00 0.00 0.00\n"
        "car 0.5 1 -1.57 1.5 2.5 3.5 4.5 1.2 1.6 3.9 -2.1 1.4 8.4 -1.6\n"
    )
    labels = read_kitti(path)
    assert labels.classes == ("1", "car")
    assert _boxes(labels) == [[10.0, 20.0, 30.0, 40.0], [1.5, 2.5, 3.5, 4.5]]


def test_read_kitti_negative_truncated_and_alpha_parse(tmp_path: Path) -> None:
    # arcgis.learn chokes on negative fields; only fields 5-8 (the box) matter.
    path = tmp_path / "neg.txt"
    path.write_text("Pedestrian -1 -1 -10 0 0 5 6 -1 -1 -1 -1000 -1000 -1000 -10\n")
    labels = read_kitti(path)
    assert labels.classes == ("Pedestrian",)
    assert _boxes(labels) == [[0.0, 0.0, 5.0, 6.0]]


def test_read_kitti_extra_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "blank_lines.txt"
    path.write_text(
        "\n\n2 0 0 0 1 1 2 2 0 0 0 0 0 0 0\n   \n\n3 0 0 0 4 4 8 9 0 0 0 0 0 0 0\n\n\n"
    )
    labels = read_kitti(path)
    assert labels.classes == ("2", "3")
    assert _boxes(labels) == [[1.0, 1.0, 2.0, 2.0], [4.0, 4.0, 8.0, 9.0]]


def test_read_kitti_empty_file_is_a_background_chip(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("")
    labels = read_kitti(path)
    assert labels.chip_boxes.shape == (0, 4)
    assert labels.classes == ()


def test_read_kitti_eight_fields_are_enough(tmp_path: Path) -> None:
    path = tmp_path / "eight.txt"
    path.write_text("1 0 0 0 1 2 3 4\n")
    assert _boxes(read_kitti(path)) == [[1.0, 2.0, 3.0, 4.0]]


def test_read_kitti_too_few_fields_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "few.txt"
    # the bad line is line 3 of the file (after a good line and a blank line)
    path.write_text("1 0 0 0 1 1 2 2 0 0 0 0 0 0 0\n\n1 0 0 0 1 1 2\n")
    with pytest.raises(LabelFormatError, match=r"few\.txt: line 3 has 7 fields, KITTI needs at least 8"):
        read_kitti(path)


def test_read_kitti_non_numeric_box_names_file_and_values(tmp_path: Path) -> None:
    path = tmp_path / "text_box.txt"
    path.write_text("car 0 0 0 1 x 2 2 0 0 0 0 0 0 0\n")
    with pytest.raises(
        LabelFormatError, match=r"text_box\.txt: line 1 has a non-numeric box \['1', 'x', '2', '2'\]"
    ):
        read_kitti(path)


def test_read_kitti_inverted_box_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "inv.txt"
    path.write_text("\n1 0 0 0 5 1 2 2 0 0 0 0 0 0 0\n")
    with pytest.raises(LabelFormatError, match=r"inv\.txt: line 2 has an empty or inverted box"):
        read_kitti(path)


# --------------------------------------------------------------------------- YOLO


def test_read_yolo_normalised_to_pixels_on_a_non_square_chip(tmp_path: Path) -> None:
    path = tmp_path / "000000002.txt"
    path.write_text("0 0.5 0.5 0.25 0.5\n\n1 0.1 0.2 0.2 0.1\n")
    labels = read_yolo(path, image_width=200, image_height=100)
    # box 0: cx=100, cy=50, w=50, h=50   -> (75, 25, 125, 75)
    # box 1: cx=20,  cy=20, w=40, h=10   -> (0, 15, 40, 25)
    assert labels.classes == ("0", "1")
    assert labels.chip_boxes.dtype == torch.float32
    torch.testing.assert_close(
        labels.chip_boxes,
        torch.tensor([[75.0, 25.0, 125.0, 75.0], [0.0, 15.0, 40.0, 25.0]]),
    )


def test_read_yolo_empty_file_is_a_background_chip(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n")
    assert read_yolo(path, 10, 10).chip_boxes.shape == (0, 4)


@pytest.mark.parametrize("line", ["0 0.5 0.5 0.2", "0 0.5 0.5 0.2 0.2 9", "0 a 0.5 0.2 0.2"])
def test_read_yolo_bad_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(LabelFormatError, match=rf"bad\.txt: line 2 is '{line}'; YOLO needs five numbers"):
        read_yolo(path, 10, 10)


def test_read_yolo_zero_area_box_raises(tmp_path: Path) -> None:
    path = tmp_path / "flat.txt"
    path.write_text("0 0.5 0.5 0.0 0.2\n")
    with pytest.raises(LabelFormatError, match=r"flat\.txt: line 1 has an empty or inverted box"):
        read_yolo(path, 10, 10)


def test_read_yolo_class_names_from_classes_txt(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("car\n\ntruck\n  boat \n")
    assert read_yolo_class_names(tmp_path) == {"0": "car", "1": "truck", "2": "boat"}


def test_read_yolo_class_names_from_data_yaml_list(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("train: images\nnc: 2\nnames: [car, truck]\n")
    assert read_yolo_class_names(tmp_path) == {"0": "car", "1": "truck"}


def test_read_yolo_class_names_from_data_yaml_dict(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("names:\n  0: car\n  3: truck\n")
    assert read_yolo_class_names(tmp_path) == {"0": "car", "3": "truck"}


def test_read_yolo_class_names_from_dataset_yaml_and_none(tmp_path: Path) -> None:
    assert read_yolo_class_names(tmp_path) is None
    (tmp_path / "dataset.yaml").write_text("names:\n  - plane\n")
    assert read_yolo_class_names(tmp_path) == {"0": "plane"}


@pytest.mark.parametrize("text, found", [
    ("names: [pool, tree\n", "not valid YAML"),                  # unclosed flow sequence
    ("names:\n  - pool\n - tree\n", "not valid YAML"),          # bad indentation
    ("- pool\n- tree\n", "expected a mapping with 'names'.*found list"),
    ("names: pool\n", "expected a mapping with 'names'.*found str"),
])
def test_read_yolo_class_names_from_a_malformed_data_yaml_names_the_file(tmp_path: Path, text: str, found: str) -> None:
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(LabelFormatError, match=rf"data\.yaml: {found}.*classes\.txt"):
        read_yolo_class_names(tmp_path)


def test_read_yolo_class_names_classes_txt_wins_over_yaml(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("from_txt\n")
    (tmp_path / "data.yaml").write_text("names: [from_yaml]\n")
    assert read_yolo_class_names(tmp_path) == {"0": "from_txt"}


# --------------------------------------------------------------------------- COCO

_COCO = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        {"id": 7, "file_name": "empty.png", "width": 64, "height": 48},
    ],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 5, 8], "area": 40, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 5, "bbox": [0.5, 1.25, 2.5, 3.75], "area": 9.375, "iscrowd": 0},
        {"id": 12, "image_id": 2, "category_id": 3, "bbox": [30, 0, 34, 48], "area": 1632, "iscrowd": 0},
    ],
    "categories": [{"id": 3, "name": "car"}, {"id": 5, "name": "truck"}],
}


def _write_coco(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(content))
    return path


def test_read_coco_xywh_to_xyxy_and_categories(tmp_path: Path) -> None:
    labels, categories = read_coco(_write_coco(tmp_path, _COCO))
    assert categories == {"3": "car", "5": "truck"}
    assert set(labels) == {"a.png", "b.png", "empty.png"}
    assert labels["a.png"].classes == ("3", "5")
    assert _boxes(labels["a.png"]) == [[10.0, 20.0, 15.0, 28.0], [0.5, 1.25, 3.0, 5.0]]
    assert labels["b.png"].classes == ("3",)
    assert _boxes(labels["b.png"]) == [[30.0, 0.0, 64.0, 48.0]]


def test_read_coco_image_without_annotations_is_background(tmp_path: Path) -> None:
    labels, _ = read_coco(_write_coco(tmp_path, _COCO))
    assert labels["empty.png"].chip_boxes.shape == (0, 4)
    assert labels["empty.png"].classes == ()
    # a file without an "annotations" key at all: every image is background
    no_annotations = {k: v for k, v in _COCO.items() if k != "annotations"}
    labels, _ = read_coco(_write_coco(tmp_path, no_annotations))
    assert all(len(chip) == 0 for chip in labels.values())


def test_read_coco_boxes_agree_with_pycocotools(tmp_path: Path) -> None:
    coco_api = pytest.importorskip("pycocotools.coco")
    path = _write_coco(tmp_path, _COCO)
    labels, _ = read_coco(path)
    reference = coco_api.COCO(str(path))
    for image in reference.loadImgs(reference.getImgIds()):
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[image["id"]]))
        expected = [[x, y, x + w, y + h] for x, y, w, h in (ann["bbox"] for ann in anns)]
        expected_classes = tuple(str(ann["category_id"]) for ann in anns)
        chip = labels[image["file_name"]]
        assert chip.classes == expected_classes
        torch.testing.assert_close(chip.chip_boxes, torch.tensor(expected, dtype=torch.float32).reshape(-1, 4))


def test_read_coco_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text("{not json")
    with pytest.raises(LabelFormatError, match=r"labels\.json: not a COCO detection file \(JSONDecodeError"):
        read_coco(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_read_coco_in_utf16_utf32_or_with_a_bom_reads_as_utf8(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(_COCO), encoding=encoding)  # Windows tools write UTF-16 with a BOM
    labels, categories = read_coco(path)
    assert categories == {"3": "car", "5": "truck"}
    assert _boxes(labels["a.png"]) == [[10.0, 20.0, 15.0, 28.0], [0.5, 1.25, 3.0, 5.0]]


def test_read_coco_in_an_unknown_encoding_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_bytes(json.dumps({"images": [{"id": 1, "file_name": "é.png"}]}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(LabelFormatError, match=r"labels\.json: not text in UTF-8, UTF-16 or UTF-32 .*save it as UTF-8"):
        read_coco(path)


@pytest.mark.parametrize("change, found", [
    ({"annotations": None}, "'annotations' must be a list of objects"),
    ({"images": [{"id": 1, "file_name": ["a.png"]}]}, "a file_name must be text"),
    ({"annotations": [{"image_id": 1, "category_id": 3, "bbox": "1234"}]}, "annotation 0 needs"),  # was read digit by digit
])
def test_read_coco_with_values_of_the_wrong_type_names_the_file(tmp_path: Path, change: dict, found: str) -> None:
    path = _write_coco(tmp_path, {**_COCO, **change})
    with pytest.raises(LabelFormatError, match=rf"labels\.json: .*{found}"):
        read_coco(path)


def test_read_coco_missing_key_names_the_key(tmp_path: Path) -> None:
    path = _write_coco(tmp_path, {"images": [], "annotations": []})
    with pytest.raises(LabelFormatError, match=r"labels\.json: not a COCO detection file \(KeyError: 'categories'"):
        read_coco(path)


def test_read_coco_bad_annotation_names_its_index(tmp_path: Path) -> None:
    content = json.loads(json.dumps(_COCO))
    content["annotations"][1]["image_id"] = 99  # not a listed image
    with pytest.raises(LabelFormatError, match=r"labels\.json: annotation 1 needs image_id"):
        read_coco(_write_coco(tmp_path, content))
    content = json.loads(json.dumps(_COCO))
    content["annotations"][2]["bbox"] = [1, 2, 3]
    with pytest.raises(LabelFormatError, match=r"annotation 2 needs .*bbox"):
        read_coco(_write_coco(tmp_path, content))
    content = json.loads(json.dumps(_COCO))
    content["annotations"][0]["bbox"] = [1, 2, 0, 3]  # zero width
    with pytest.raises(LabelFormatError, match=r"annotation 0 has an empty or inverted box"):
        read_coco(_write_coco(tmp_path, content))


# --------------------------------------------------------------------------- writers


def test_write_voc_round_trip(tmp_path: Path) -> None:
    original = ChipLabels.from_lists(
        [[1.5, 2.25, 10.75, 20.0], [0.0, 0.0, 64.0, 48.0]], ["1", "road & rail"]
    )
    path = tmp_path / "000000003.xml"
    write_voc(path, original, image_name="000000003.tif", width=64, height=48, depth=3)
    back = read_voc(path)
    assert back.classes == original.classes
    torch.testing.assert_close(back.chip_boxes, original.chip_boxes)
    text = path.read_text()
    assert "<filename>000000003.tif</filename>" in text
    assert "<width>64</width>" in text and "<height>48</height>" in text and "<depth>3</depth>" in text


def test_write_voc_background_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bg.xml"
    write_voc(path, ChipLabels.empty(), image_name="bg.tif", width=8, height=8, depth=1)
    assert read_voc(path).chip_boxes.shape == (0, 4)


def test_write_kitti_round_trip(tmp_path: Path) -> None:
    original = ChipLabels.from_lists([[1.5, 2.25, 10.75, 20.0], [3.0, 4.0, 5.0, 6.0]], ["2", "car"])
    path = tmp_path / "000000004.txt"
    write_kitti(path, original)
    lines = path.read_text().splitlines()
    assert [len(line.split()) for line in lines] == [15, 15]
    assert lines[0] == "2 0.00 0 0.00 1.50 2.25 10.75 20.00 0.00 0.00 0.00 0.00 0.00 0.00 0.00"
    back = read_kitti(path)
    assert back.classes == original.classes
    torch.testing.assert_close(back.chip_boxes, original.chip_boxes)


def test_write_kitti_background_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bg.txt"
    write_kitti(path, ChipLabels.empty())
    assert path.read_text() == ""
    assert read_kitti(path).chip_boxes.shape == (0, 4)


# --------------------------------------------------------------------------- clip_to_chip


def test_clip_to_chip_hand_computed() -> None:
    labels = ChipLabels.from_lists(
        [
            [2, 3, 8, 9],  # inside: unchanged
            [-5, 2, 4, 6],  # crosses the left edge -> (0, 2, 4, 6)
            [15, 10, 25, 30],  # crosses right and bottom of a 20x16 chip -> (15, 10, 20, 16)
            [-10, -10, -2, 5],  # wholly left: dropped
            [21, 1, 30, 5],  # wholly right: dropped
            [0, 0, 20, 16],  # exactly the chip: unchanged
            [5, 16, 9, 20],  # touches the bottom edge from outside: zero height, dropped
        ],
        ["a", "b", "c", "d", "e", "f", "g"],
    )
    clipped, n_clipped, n_dropped = clip_to_chip(labels, width=20, height=16)
    assert (n_clipped, n_dropped) == (2, 3)
    assert clipped.classes == ("a", "b", "c", "f")
    assert _boxes(clipped) == [[2, 3, 8, 9], [0, 2, 4, 6], [15, 10, 20, 16], [0, 0, 20, 16]]
    # the input is not modified
    assert _boxes(labels)[1] == [-5, 2, 4, 6]


def test_clip_to_chip_background_chip() -> None:
    clipped, n_clipped, n_dropped = clip_to_chip(ChipLabels.empty(), width=8, height=8)
    assert clipped.chip_boxes.shape == (0, 4)
    assert (n_clipped, n_dropped) == (0, 0)


# --------------------------------------------------------------------------- ChipLabels


def test_chip_labels_shape_validation() -> None:
    with pytest.raises(ValueError, match=r"chip_boxes has shape \(2, 4\) but there are 1 classes; expected \(1, 4\)"):
        ChipLabels(torch.zeros((2, 4)), ("a",))
    with pytest.raises(ValueError, match=r"chip_boxes has shape \(1, 5\)"):
        ChipLabels(torch.zeros((1, 5)), ("a",))
    with pytest.raises(ValueError, match=r"chip_boxes has shape \(4,\)"):
        ChipLabels(torch.zeros(4), ("a",))


def test_chip_labels_from_lists_and_empty() -> None:
    labels = ChipLabels.from_lists([[1, 2, 3, 4]], [7])
    assert labels.classes == ("7",)  # tokens become strings
    assert labels.chip_boxes.dtype == torch.float32
    assert labels.chip_boxes.shape == (1, 4)
    assert ChipLabels.from_lists([], []).chip_boxes.shape == (0, 4)
    assert len(ChipLabels.empty()) == 0
