"""The geolearn command."""

from __future__ import annotations

import shutil

import geopandas as gpd
import pytest

from geolearn.cli import main
from geolearn.data.synthetic import make_scene


def test_demo_exports_prepares_and_draws(tmp_path, capsys):
    scene = make_scene(tmp_path / "scene", size=1280, seed=5, name="sample_scene")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--sample-data", str(scene.raster.parent), "--epochs", "0"]) == 0
    assert (out / "chips" / "esri_model_definition.emd").exists()
    assert (out / "show_batch.png").stat().st_size > 10_000
    assert "classes ['background', 'pool', 'tree']" in capsys.readouterr().out
    # Running it again reuses its own output folder; this time it trains briefly too.
    assert main(["demo", "--out", str(out), "--sample-data", str(scene.raster.parent),
                 "--epochs", "1", "--lr-find-batches", "5"]) == 0
    assert (out / "lr_find.png").exists() and (out / "losses.png").exists()
    assert (out / "model" / "sample_model" / "sample_model.dlpk").exists()
    assert (out / "predict_held_back.png").exists()
    printed = capsys.readouterr().out
    assert "AP@0.5: " in printed and "train_loss" in printed and "found " in printed


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
