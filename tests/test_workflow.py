"""The ground floor end to end: a generated scene → export_training_data → prepare_data."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
import torch
from matplotlib.figure import Figure

from geolearn import export_training_data, prepare_data
from geolearn.data.boxes import unit_to_pixel
from geolearn.sample import make_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), size=768, seed=3, name="sample_scene")


def test_export_then_prepare_with_defaults(small_scene, tmp_path):
    out = export_training_data(str(small_scene.raster), str(small_scene.labels_4326), output_location=str(tmp_path / "chips"),
                               progress=False)
    data = prepare_data(out)
    names = sorted(set(gpd.read_file(small_scene.labels)["Classname"]))
    assert data.classes == ["background", *names]
    assert data.c == len(names) + 1
    assert data.chip_size == 224
    assert len(data.train_ds) > len(data.valid_ds) > 0
    images, unit_boxes, labels = (t.as_subclass(torch.Tensor) for t in data.valid.one_batch())
    assert images.shape[1:] == (3, 224, 224)
    boxes = unit_to_pixel(unit_boxes[labels > 0], 224, 224)
    assert len(boxes) > 0 and boxes.min() >= 0 and boxes.max() <= 224
    assert isinstance(data.show_batch(rows=2), Figure)


@pytest.mark.slow
def test_bundled_sample_scene(tmp_path):
    """The bundled scene exports and prepares with the arcgis.learn defaults (a few minutes)."""
    raster = REPO / "sample_data" / "sample_scene.tif"
    labels = REPO / "sample_data" / "sample_scene_labels.gpkg"
    out = export_training_data(str(raster), str(labels), output_location=str(tmp_path / "chips"), progress=False)
    data = prepare_data(out)
    assert data.classes == ["background", "pool", "tree"]
