"""Tests of the seeded synthetic aerial-scene generator (small scenes, in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import Affine

from geolearn.sample import CLASSES, SceneFiles, make_scene

SIZE = 512
SEED = 8  # a 512 px scene with ~10 pools and ~40 trees


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    return make_scene(tmp_path_factory.mktemp("scene"), SIZE, seed=SEED)


@pytest.fixture(scope="module")
def pixels(scene: SceneFiles) -> np.ndarray:
    with rasterio.open(scene.raster) as src:
        return src.read()


@pytest.fixture(scope="module")
def labels(scene: SceneFiles) -> gpd.GeoDataFrame:
    return gpd.read_file(scene.labels)


def test_files_are_named_after_the_scene(tmp_path: Path) -> None:
    files = make_scene(tmp_path / "new", 128, seed=1, name="tiny")
    assert files == SceneFiles(tmp_path / "new/tiny.tif", tmp_path / "new/tiny_labels.gpkg",
                               tmp_path / "new/tiny_labels_4326.gpkg")
    assert all(p.is_file() for p in (files.raster, files.labels, files.labels_4326))
    empty = make_scene(tmp_path / "empty", 64, seed=0)  # too small for any object: empty label files
    for path in (empty.labels, empty.labels_4326):
        info = pyogrio.read_info(path)
        assert info["features"] == 0 and info["geometry_type"] == "Polygon"
        assert list(info["fields"]) == ["Classvalue", "Classname"]
        assert list(info["dtypes"]) == ["int32", "object"]


def test_raster_georeferencing_and_layout(scene: SceneFiles) -> None:
    with rasterio.open(scene.raster) as src:
        assert src.driver == "GTiff"
        assert (src.width, src.height, src.count) == (SIZE, SIZE, 3)
        assert src.dtypes == ("uint8",) * 3
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)
        assert src.transform == Affine(0.3, 0.0, 500000.0, 0.0, -0.3, 4650000.0)
        assert src.nodata == 0
        assert src.block_shapes == [(256, 256)] * 3
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == "2"
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue"]


def test_other_georeferencing_is_honoured(tmp_path: Path) -> None:
    files = make_scene(tmp_path, 96, seed=3, crs="EPSG:3857", pixel_size=0.5, origin=(1000.0, 2000.0),
                       nodata_margin=False)
    with rasterio.open(files.raster) as src:
        assert src.crs == rasterio.crs.CRS.from_epsg(3857)
        assert src.transform == Affine(0.5, 0.0, 1000.0, 0.0, -0.5, 2000.0)
    assert gpd.read_file(files.labels).crs == rasterio.crs.CRS.from_epsg(3857)


def test_labels_in_both_files(scene: SceneFiles, labels: gpd.GeoDataFrame) -> None:
    wgs84 = gpd.read_file(scene.labels_4326)
    assert labels.crs.to_epsg() == 32633
    assert wgs84.crs.to_epsg() == 4326
    for frame in (labels, wgs84):
        assert {"Classvalue", "Classname", "geometry"} <= set(frame.columns)
        assert set(frame.geom_type) == {"Polygon"}
        assert frame.is_valid.all()
    assert len(labels) == len(wgs84)
    assert (labels.Classvalue.to_numpy() == wgs84.Classvalue.to_numpy()).all()
    assert set(labels.Classvalue) == {1, 2}  # both classes present in this scene
    assert (labels.Classname == labels.Classvalue.map(CLASSES)).all()
    assert (labels.Classvalue == 1).sum() >= 3 and (labels.Classvalue == 2).sum() >= 10


def test_labels_4326_project_back_onto_the_originals(scene: SceneFiles, labels: gpd.GeoDataFrame) -> None:
    back = gpd.read_file(scene.labels_4326).to_crs(labels.crs)
    a = shapely.get_coordinates(labels.geometry.values)
    b = shapely.get_coordinates(back.geometry.values)
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 1e-5  # metres


def test_labels_are_in_the_raster_and_sized_like_the_objects(labels: gpd.GeoDataFrame) -> None:
    left, top = 500000.0, 4650000.0
    b = labels.geometry.bounds
    assert (b.minx >= left).all() and (b.maxx <= left + SIZE * 0.3).all()
    assert (b.miny >= top - SIZE * 0.3).all() and (b.maxy <= top).all()
    extent_px = np.maximum(b.maxx - b.minx, b.maxy - b.miny) / 0.3
    pools, trees = extent_px[labels.Classvalue == 1], extent_px[labels.Classvalue == 2]
    assert pools.min() >= 12 and pools.max() <= 60
    assert trees.min() >= 8 and trees.max() <= 45


def test_same_seed_same_scene_other_seed_other_scene(tmp_path: Path, scene: SceneFiles, pixels: np.ndarray,
                                                     labels: gpd.GeoDataFrame) -> None:
    again = make_scene(tmp_path / "again", SIZE, seed=SEED)
    with rasterio.open(again.raster) as src:
        assert np.array_equal(src.read(), pixels)
    relabels = gpd.read_file(again.labels)
    assert list(relabels.Classvalue) == list(labels.Classvalue)
    assert shapely.equals_exact(relabels.geometry.values, labels.geometry.values, tolerance=0).all()
    other = make_scene(tmp_path / "other", SIZE, seed=SEED + 1)
    with rasterio.open(other.raster) as src:
        assert not np.array_equal(src.read(), pixels)


def test_nodata_margin_is_exactly_zero_and_valid_pixels_are_not(pixels: np.ndarray, scene: SceneFiles,
                                                                 labels: gpd.GeoDataFrame) -> None:
    nodata = (pixels == 0).all(axis=0)
    valid = (pixels >= 1).all(axis=0)
    assert (nodata | valid).all()  # no pixel is 0 in some bands only
    # an irregular margin all around: the raster's edges are nodata, the centre is valid
    assert nodata[0].all() and nodata[-1].all() and nodata[:, 0].all() and nodata[:, -1].all()
    assert valid[SIZE // 4 : -SIZE // 4, SIZE // 4 : -SIZE // 4].all()
    assert 0.7 < valid.mean() < 0.95
    with rasterio.open(scene.raster) as src:
        assert np.array_equal(src.dataset_mask() > 0, valid)
        under = rasterize(labels.geometry, out_shape=nodata.shape, transform=src.transform, all_touched=True)
    assert valid[under > 0].all()  # every object lies inside the valid footprint


def _masks(geom, transform, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels inside a polygon and in a ring 1-4 px around it."""
    px = transform.a
    inside = rasterize([geom], out_shape=shape, transform=transform).astype(bool)
    outer = rasterize([geom.buffer(4 * px)], out_shape=shape, transform=transform).astype(bool)
    inner = rasterize([geom.buffer(1 * px)], out_shape=shape, transform=transform).astype(bool)
    return inside, outer & ~inner


def test_pools_are_drawn_where_labelled(scene: SceneFiles, pixels: np.ndarray, labels: gpd.GeoDataFrame) -> None:
    with rasterio.open(scene.raster) as src:
        transform = src.transform
    img = pixels.astype(np.float64)
    blueness = img[2] - img[0]
    water = (blueness > 25) & (img[1] - img[0] > 25)
    pools = labels[labels.Classvalue == 1]
    for geom in pools.geometry:
        inside, ring = _masks(geom, transform, blueness.shape)
        assert blueness[inside].mean() > blueness[ring].mean() + 30
        # the drawn water fills the label: its extent equals the polygon's bounding box within 1 px
        xmin, ymin, xmax, ymax = geom.bounds
        col0, row0 = (xmin - transform.c) / transform.a, (ymax - transform.f) / transform.e
        col1, row1 = (xmax - transform.c) / transform.a, (ymin - transform.f) / transform.e
        r0, c0 = int(row0) - 3, int(col0) - 3
        win = water[r0 : int(row1) + 4, c0 : int(col1) + 4]
        rows, cols = np.nonzero(win.any(axis=1))[0], np.nonzero(win.any(axis=0))[0]
        drawn = np.array([c0 + cols[0], r0 + rows[0], c0 + cols[-1] + 1, r0 + rows[-1] + 1])
        assert np.abs(drawn - np.array([col0, row0, col1, row1])).max() <= 1.0


def test_trees_are_drawn_where_labelled(scene: SceneFiles, pixels: np.ndarray, labels: gpd.GeoDataFrame) -> None:
    with rasterio.open(scene.raster) as src:
        transform = src.transform
    img = pixels.astype(np.float64)
    brightness = img.sum(axis=0)
    trees = labels[labels.Classvalue == 2]
    index = labels.sindex
    darker = greener = checked = 0
    for geom in trees.geometry:
        if len(index.query(geom.buffer(6 * transform.a), predicate="intersects")) > 1:
            continue  # crowns in a cluster overlap each other
        inside, ring = _masks(geom, transform, brightness.shape)
        checked += 1
        darker += brightness[inside].mean() < np.median(brightness[ring])
        greener += img[1][inside].mean() > max(img[0][inside].mean(), img[2][inside].mean())
    assert checked >= 5
    assert darker >= 0.8 * checked and greener >= 0.8 * checked


def test_multispectral_uint16_without_margin(tmp_path: Path) -> None:
    files = make_scene(tmp_path, 256, seed=5, bands=4, dtype="uint16", nodata_margin=False, name="ms")
    with rasterio.open(files.raster) as src:
        assert src.count == 4 and src.dtypes == ("uint16",) * 4
        assert src.descriptions == ("red", "green", "blue", "nir")
        assert src.nodata == 0 and src.block_shapes == [(256, 256)] * 4
        assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        ms = src.read().astype(np.float64)
        transform = src.transform
    assert ms.min() >= 1 and ms.max() <= 10000  # no nodata margin: every pixel valid
    assert ms.max() > 2000  # a reflectance-like range, not 8-bit values
    lab = gpd.read_file(files.labels)
    for value, sign in ((1, -1), (2, 1)):  # pools dark in NIR, trees bright in NIR
        for geom in lab[lab.Classvalue == value].geometry[:5]:
            inside = rasterize([geom], out_shape=ms.shape[1:], transform=transform).astype(bool)
            nir, red = ms[3][inside].mean(), ms[0][inside].mean()
            assert sign * (nir - red) > 0


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_scene(tmp_path, 256, bands=2)
    with pytest.raises(ValueError):
        make_scene(tmp_path, 256, dtype="float32")
    with pytest.raises(ValueError):
        make_scene(tmp_path, 16)
