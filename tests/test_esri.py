"""Tests of geolearn.data.esri: EMD classes, JSON files, dataset type, map.txt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geolearn.data.esri import (
    EMD_FILE,
    MAP_FILE,
    STATS_FILE,
    ClassInfo,
    default_color,
    esri_dataset_type,
    parse_classes,
    read_json,
    read_map_txt,
    write_json,
    write_map_txt,
)
from geolearn.errors import LabelFormatError

EMD = "export/esri_model_definition.emd"


# --------------------------------------------------------------------------- parse_classes


def test_parse_classes_value_name_color() -> None:
    emd = {
        "Classes": [
            {"Value": 1, "Name": "car", "Color": [255, 0, 0]},
            {"Value": 4, "Name": "boat", "Color": [0, 0, 255]},
        ]
    }
    assert parse_classes(emd, EMD) == [
        ClassInfo(1, "car", (255, 0, 0)),
        ClassInfo(4, "boat", (0, 0, 255)),
    ]


def test_parse_classes_older_class_value_and_class_name() -> None:
    emd = {"Classes": [{"ClassValue": 2, "ClassName": "tree", "Color": [0, 128, 0]}]}
    assert parse_classes(emd, EMD) == [ClassInfo(2, "tree", (0, 128, 0))]


def test_parse_classes_numeric_string_value_is_accepted() -> None:
    assert parse_classes({"Classes": [{"Value": "3", "Name": "x"}]}, EMD)[0].value == 3


def test_parse_classes_missing_color_gets_the_default() -> None:
    emd = {"Classes": [{"Value": 1, "Name": "car"}, {"Value": 2, "Name": "boat", "Color": [1, 2]}]}
    classes = parse_classes(emd, EMD)
    assert classes[0].color == default_color(1) == (0, 168, 132)
    assert classes[1].color == default_color(2) == (255, 170, 0)  # a 2-element colour is unusable


def test_parse_classes_color_keeps_rgb_of_rgba() -> None:
    emd = {"Classes": [{"Value": 1, "Name": "car", "Color": [10, 20, 30, 255]}]}
    assert parse_classes(emd, EMD)[0].color == (10, 20, 30)


def test_parse_classes_missing_name_is_the_value() -> None:
    emd = {"Classes": [{"Value": 5}, {"Value": 6, "Name": "  "}]}
    assert [c.name for c in parse_classes(emd, EMD)] == ["5", "6"]


@pytest.mark.parametrize("bad", ["car", None, 1.5, [1], True])
def test_parse_classes_bad_value_names_file_and_index(bad: object) -> None:
    emd = {"Classes": [{"Value": 1, "Name": "ok"}, {"Value": bad, "Name": "broken"}]}
    with pytest.raises(
        LabelFormatError,
        match=rf"esri_model_definition\.emd: Classes\[1\] has Value {__import__('re').escape(repr(bad))}",
    ):
        parse_classes(emd, EMD)


def test_parse_classes_entry_without_value_names_the_index() -> None:
    with pytest.raises(LabelFormatError, match=r"Classes\[0\] has Value None"):
        parse_classes({"Classes": [{"Name": "car"}]}, EMD)
    with pytest.raises(LabelFormatError, match=r"Classes\[0\] has Value None"):
        parse_classes({"Classes": ["car"]}, EMD)


def test_parse_classes_without_a_classes_list() -> None:
    with pytest.raises(LabelFormatError, match=r"esri_model_definition\.emd: key 'Classes' must be a list.*NoneType"):
        parse_classes({}, EMD)


def test_class_info_to_esri() -> None:
    assert ClassInfo(3, "car", (1, 2, 3)).to_esri() == {"Value": 3, "Name": "car", "Color": [1, 2, 3]}


def test_default_color_is_stable_and_cycles() -> None:
    assert default_color(1) == default_color(11)
    assert default_color(0) == default_color(10)
    assert len({default_color(v) for v in range(1, 11)}) == 10


# --------------------------------------------------------------------------- JSON files


def test_read_json_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "esri_accumulated_stats.json"
    path.write_text('{"NumBands": 3,')
    with pytest.raises(LabelFormatError, match=r"esri_accumulated_stats\.json: not valid JSON"):
        read_json(path)


def test_read_json_non_utf8_bytes_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.emd"
    path.write_bytes(b"\xff\xfe\x00\x81 not json")
    with pytest.raises(LabelFormatError, match=r"garbage\.emd: not valid JSON"):
        read_json(path)


def test_read_json_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(LabelFormatError, match=r"list\.json: expected a JSON object, found list"):
        read_json(path)


def test_read_json_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    # Windows tools often write UTF-8 with a BOM
    path = tmp_path / "bom.emd"
    path.write_bytes('{"MetaDataMode": "PASCAL_VOC_rectangles"}'.encode("utf-8-sig"))
    assert read_json(path) == {"MetaDataMode": "PASCAL_VOC_rectangles"}


def test_write_json_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "esri_normalization_stats.json"
    content = {"NumBands": 4, "BandStatsState": [{"Min": 0.0, "Max": 255.0, "M1": 1.5, "M2": 2.25, "Num": 9}]}
    write_json(path, content)
    assert read_json(path) == content
    # overwriting replaces the content
    write_json(path, {"NumBands": 1})
    assert read_json(path) == {"NumBands": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esri_normalization_stats.json"]


def test_write_json_failure_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})  # not serialisable
    assert read_json(path) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


# --------------------------------------------------------------------------- dataset type


def _write_export_files(root: Path, names: tuple[str, ...], mode: str = "KITTI_rectangles") -> None:
    for name in names:
        if name == MAP_FILE:
            (root / name).write_text("images\\000000000.tif labels\\000000000.txt\n")
        else:
            (root / name).write_text(json.dumps({"MetaDataMode": mode}))


@pytest.mark.parametrize(
    "present",
    [(), (EMD_FILE,), (MAP_FILE,), (STATS_FILE,), (EMD_FILE, MAP_FILE), (EMD_FILE, STATS_FILE), (MAP_FILE, STATS_FILE)],
)
def test_esri_dataset_type_is_none_unless_all_three_files_exist(tmp_path: Path, present: tuple[str, ...]) -> None:
    _write_export_files(tmp_path, present)
    assert esri_dataset_type(tmp_path) is None


@pytest.mark.parametrize("mode", ["PASCAL_VOC_rectangles", "KITTI_rectangles"])
def test_esri_dataset_type_is_the_metadata_mode(tmp_path: Path, mode: str) -> None:
    _write_export_files(tmp_path, (EMD_FILE, MAP_FILE, STATS_FILE), mode)
    assert esri_dataset_type(tmp_path) == mode
    assert esri_dataset_type(str(tmp_path)) == mode


def test_esri_dataset_type_falls_back_to_the_emd(tmp_path: Path) -> None:
    _write_export_files(tmp_path, (MAP_FILE,))
    (tmp_path / STATS_FILE).write_text(json.dumps({"NumBands": 3}))
    (tmp_path / EMD_FILE).write_text(json.dumps({"MetaDataMode": "PASCAL_VOC_rectangles"}))
    assert esri_dataset_type(tmp_path) == "PASCAL_VOC_rectangles"
    (tmp_path / EMD_FILE).write_text(json.dumps({"Classes": []}))
    assert esri_dataset_type(tmp_path) is None


# --------------------------------------------------------------------------- map.txt


def test_map_txt_round_trip_with_windows_separators(tmp_path: Path) -> None:
    pairs = [("000000000.tif", "000000000.xml"), ("000000001.tif", "000000001.xml")]
    write_map_txt(tmp_path, pairs)
    text = (tmp_path / MAP_FILE).read_text()
    assert text.splitlines() == [
        "images\\000000000.tif labels\\000000000.xml",
        "images\\000000001.tif labels\\000000001.xml",
    ]
    assert read_map_txt(tmp_path) == pairs


def test_read_map_txt_as_arcgis_writes_it(tmp_path: Path) -> None:
    # CRLF line ends, a blank line, and forward slashes from a hand-made file all read the same
    (tmp_path / MAP_FILE).write_bytes(
        b"images\\000000000.tif labels\\000000000.xml\r\n\r\nimages/000000002.png labels/000000002.txt\r\n"
    )
    assert read_map_txt(tmp_path) == [("000000000.tif", "000000000.xml"), ("000000002.png", "000000002.txt")]
