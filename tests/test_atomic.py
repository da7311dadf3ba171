"""geolearn.atomic: a file appears whole or not at all."""

from __future__ import annotations

import json

import pytest

from geolearn.atomic import atomic_write
from geolearn.data.esri import write_json


def test_the_file_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_write(target) as partial:
        partial.write_bytes(b"first half")
        assert not target.exists()
        assert partial.parent == tmp_path and partial.suffix == ".onnx" and partial.name.startswith(".")
    assert target.read_bytes() == b"first half"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "trees.gpkg"
    target.write_bytes(b"previous result")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(target) as partial:
            partial.write_bytes(b"half of the new")
            raise RuntimeError("killed half-way")
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["trees.gpkg"]


def test_write_json_that_cannot_serialise_keeps_the_previous_file(tmp_path):
    target = tmp_path / "esri_accumulated_stats.json"
    write_json(target, {"Num": 3})
    with pytest.raises(TypeError):
        write_json(target, {"Num": object()})
    assert json.loads(target.read_text()) == {"Num": 3}
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
