"""geolearn.viz figures that read rasters: the whole-scene overview of detections."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import rasterio
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from rasterio.transform import from_origin
from shapely.geometry import box

from geolearn.viz import plot_scene_detections


def write_scene(path, size=300, dtype="uint16", bands=4):
    pixels = (np.arange(size * size * bands) % 5000).reshape(bands, size, size).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype=dtype,
                       crs="EPSG:32633", transform=from_origin(500000, 4650000, 0.5, 0.5), nodata=0) as dst:
        dst.write(pixels)
    return path


def test_scene_overview_is_downsampled_and_draws_each_class(tmp_path):
    raster = write_scene(tmp_path / "scene.tif")
    found = gpd.GeoDataFrame({"Class": ["pool", "tree", "tree"], "Confidence": [90.0, 80.0, 70.0]},
                             geometry=[box(500010, 4649900, 500020, 4649910), box(500050, 4649950, 500055, 4649955),
                                       box(500060, 4649950, 500065, 4649955)], crs="EPSG:32633")
    figure = plot_scene_detections(raster, found.to_crs("EPSG:4326"), max_size=100)  # reprojected back
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    assert ax.images[0].get_array().shape == (100, 100, 3)  # read at 100 px, not 300
    assert ax.get_xlim() == (500000, 500150) and ax.get_ylim() == (4649850, 4650000)
    collections = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert [len(c.get_paths()) for c in collections] == [1, 2]
    assert abs(collections[0].get_paths()[0].vertices[:, 0].min() - 500010) < 1e-6
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pool (1)", "tree (2)"]
    assert "scene.tif: 3 detections" in ax.get_title()


def test_scene_overview_without_detections(tmp_path):
    raster = write_scene(tmp_path / "scene.tif", dtype="uint8", bands=1)
    empty = gpd.GeoDataFrame({"Class": [], "Confidence": []}, geometry=[], crs="EPSG:32633")
    figure = plot_scene_detections(raster, empty)
    assert figure.axes[0].images[0].get_array().shape == (300, 300, 3)
    assert figure.axes[0].get_legend() is None


def test_figures_show_in_jupyter_on_rank_0_only(monkeypatch):
    from types import SimpleNamespace

    import pytest
    import torch

    from geolearn.viz import show_figure

    IPython = pytest.importorskip("IPython")
    import IPython.display

    shown = []
    png = SimpleNamespace(lookup_by_type=lambda kind: None)  # a PNG formatter for Figures is registered
    shell = SimpleNamespace(display_formatter=SimpleNamespace(formatters={"image/png": png}))
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setattr(IPython.display, "display", shown.append)
    figure = Figure()
    show_figure(figure)
    assert shown == [figure]
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # rank 1 of a torchrun launch
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    show_figure(figure)
    assert shown == [figure]
