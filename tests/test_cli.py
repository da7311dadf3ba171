"""The geolearn command."""

from __future__ import annotations

import json
import re
import shutil

import geopandas as gpd
import pytest

from geolearn.cli import main
from geolearn.sample import make_scene


def test_demo_exports_prepares_and_draws(tmp_path, capsys):
    scene = make_scene(tmp_path / "scene", size=1280, seed=5, name="sample_scene")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--sample-data", str(scene.raster.parent), "--epochs", "0"]) == 0
    assert (out / "chips" / "esri_model_definition.emd").exists()
    assert (out / "show_batch.png").stat().st_size > 10_000
    assert "classes ['background', 'pool', 'tree']" in capsys.readouterr().out


@pytest.mark.slow  # trains for an epoch, saves, predicts and detects: minutes on 2 cores
def test_demo_runs_the_whole_workflow(tmp_path, capsys):
    scene = make_scene(tmp_path / "scene", size=1280, seed=5, name="sample_scene")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--sample-data", str(scene.raster.parent), "--epochs", "0"]) == 0
    capsys.readouterr()
    # Running it again reuses its own output folder; this time it trains briefly too.
    assert main(["demo", "--out", str(out), "--sample-data", str(scene.raster.parent),
                 "--epochs", "1", "--lr-find-batches", "5"]) == 0
    assert (out / "lr_find.png").exists() and (out / "losses.png").exists()
    assert (out / "model" / "sample_model" / "sample_model.dlpk").exists()
    assert (out / "predict_held_back.png").exists()
    printed = capsys.readouterr().out
    assert "AP@0.5: " in printed and "train_loss" in printed and "found " in printed
    # it ends by detecting over the whole scene: a GeoPackage in the scene's CRS and an overview
    detections = gpd.read_file(out / "detections.gpkg")
    assert detections.crs == "EPSG:32633" and {"Class", "Confidence"} <= set(detections.columns)
    assert (out / "detections.png").stat().st_size > 10_000
    assert "7/7 model.detect_objects() over the whole scene" in printed
    # each step says when it started, so that a user sees where the minutes go
    assert re.search(r"^\[ *\d+:\d\d\] 4/7 fit\(1\) \.\.\.$", printed, re.MULTILINE)
    assert re.search(r"^\[ *\d+:\d\d\] done$", printed, re.MULTILINE)


def test_demo_needs_a_scene_large_enough_to_hold_back_a_part(tmp_path):
    scene = make_scene(tmp_path / "scene", size=512, seed=5, name="sample_scene")
    with pytest.raises(SystemExit, match="the demo needs at least 1024 x 1024 px"):
        main(["demo", "--out", str(tmp_path / "o"), "--sample-data", str(scene.raster.parent)])


def test_demo_reports_a_missing_sample_folder(tmp_path):
    with pytest.raises(SystemExit, match="holds no sample_scene.tif"):
        main(["demo", "--out", str(tmp_path / "o"), "--sample-data", str(tmp_path)])


def test_bad_data_exits_with_a_message_not_a_traceback(tmp_path, capsys):
    scene = make_scene(tmp_path / "scene", size=1280, seed=5, name="sample_scene")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(scene.raster, elsewhere / scene.raster.name)
    labels = gpd.read_file(scene.labels)
    labels.geometry = labels.translate(xoff=1e6)  # labels of another place
    labels.to_file(elsewhere / scene.labels.name, driver="GPKG")
    assert main(["demo", "--out", str(tmp_path / "o"), "--sample-data", str(elsewhere)]) == 2
    assert "geolearn demo: error:" in capsys.readouterr().err


def test_help_lists_demo(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out


# ----------------------------------------------------------------------------- export, train, detect

@pytest.mark.parametrize("command, words", [
    ("export", ["pixels", "PASCAL_VOC_rectangles", "OUT/images", "--overwrite"]),
    ("train", ["--epochs", "lr_find", ".dlpk", "resnet18"]),
    ("detect", ["Confidence", "--scheduler", "Dask", "GeoPackage", "max-overlap-ratio", "calibrated, else 0.5"]),
    ("export-onnx", ["normalised chips", "Deepness", "geolearn[onnx]", "--overwrite"]),
])
def test_each_command_explains_itself(command, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text


def test_export_train_detect_end_to_end(tmp_path, capsys):
    scene = make_scene(tmp_path / "scene", size=320, seed=3, name="scene")
    chips, model, found = tmp_path / "chips", tmp_path / "model", tmp_path / "found.gpkg"
    assert main(["export", str(scene.raster), str(scene.labels), str(chips), "--chip-size", "64",
                 "--stride", "64", "-q"]) == 0
    assert (chips / "esri_model_definition.emd").exists()
    assert "chips and their labels to" in capsys.readouterr().out
    # 64 px chips shown to the network at 96 px: the model records zoom 1.5 and detect applies it
    assert main(["train", str(chips), "--out", str(model), "--backbone", "resnet18", "--chip-size", "96",
                 "--resize-to", "96", "--batch-size", "4", "--epochs", "1", "--lr", "1e-3", "--no-pretrained",
                 "--val-split", "0.3", "--minutes", "5", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "saved the model to" in printed and "pool" in printed
    assert re.search(r"fit\(1, lr=1\.00e-03, time_budget=\d+\)", printed)  # 5 minutes, less what came before
    assert (model / "model.dlpk").exists()
    emd = json.loads((model / "model.emd").read_text())
    assert emd["ImageHeight"] == 96 and emd["resize_to"] == 96 and emd["geolearn"]["zoom"] == 1.5
    assert main(["detect", str(scene.raster), "--model", str(model / "model.dlpk"), "--out", str(found),
                 "--threshold", "0.05", "--max-overlap-ratio", "0.5", "-q"]) == 0
    assert "features (fields Class, Confidence)" in capsys.readouterr().out
    layer = gpd.read_file(found)
    assert layer.crs == "EPSG:32633" and {"Class", "Confidence"} <= set(layer.columns)
    # the layer is not replaced without --overwrite; training does not overwrite a model either
    assert main(["detect", str(scene.raster), "--model", str(model), "--out", str(found), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["train", str(chips), "--out", str(model), "--epochs", "1", "-q"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_bad_detect_input_exits_with_code_2_and_a_message(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "missing.tif"), "--model", str(tmp_path / "m.dlpk"),
                 "--out", str(tmp_path / "o.gpkg")]) == 2
    assert "geolearn detect: error: input_raster" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage errors
        main(["detect", "x.tif", "--model", "m.dlpk", "--out", "o.gpkg", "--threshold", "2"])
    assert exit_info.value.code == 2
    assert "must be between 0 and 1" in capsys.readouterr().err


def test_bad_export_and_train_input_exits_with_code_2(tmp_path, capsys):
    scene = make_scene(tmp_path / "scene", size=128, seed=3, name="scene")
    assert main(["export", str(scene.raster), str(tmp_path / "nothing.gpkg"), str(tmp_path / "chips"), "-q"]) == 2
    assert "geolearn export: error: LABELS " in capsys.readouterr().err
    (tmp_path / "notes.gpkg").write_text("not a GeoPackage")
    assert main(["export", str(scene.raster), str(tmp_path / "notes.gpkg"), str(tmp_path / "chips"), "-q"]) == 2
    message = capsys.readouterr().err
    assert "notes.gpkg: not a vector dataset GDAL can read" in message and "Traceback" not in message
    assert message.count("\n") == 1  # one line
    assert main(["export", str(scene.raster), str(scene.labels), str(tmp_path / "chips"), "--chip-size", "64",
                 "--classvalue-field", "Nope", "-q"]) == 2
    assert "Nope" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "no_chips"), "--out", str(tmp_path / "m"), "-q"]) == 2
    assert "geolearn train: error:" in capsys.readouterr().err
