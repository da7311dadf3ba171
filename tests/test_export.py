"""export_training_data: boxes pinned to hand-computed pixels, chips, metadata files, refusals.

Every raster and label set is built here, in tmp_path, with a real CRS. The UTM test
raster is 64 x 64 px of 0.5 m whose top-left corner is (500000, 6000000) in
EPSG:32633, so pixel edge (col, row) is map (500000 + col / 2, 6000000 - row / 2).
With 32 px tiles and strides its four windows, row-major, start at pixel
(0, 0), (32, 0), (0, 32), (32, 32).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.windows import Window

from geolearn import prepare_data
from geolearn.data.esri import default_color, read_map_txt
from geolearn.data.export import export_training_data
from geolearn.data.labels import read_kitti, read_voc
from geolearn.errors import (
    BandMismatchError,
    CRSMismatchError,
    GeolearnWarning,
    LabelFormatError,
    NoChipsError,
    NoOverlapError,
    OutputExistsError,
)

UTM = "EPSG:32633"
X0, Y0, RES = 500_000.0, 6_000_000.0, 0.5
UTM_TRANSFORM = from_origin(X0, Y0, RES, RES)
WINDOWS = [Window(0, 0, 32, 32), Window(32, 0, 32, 32), Window(0, 32, 32, 32), Window(32, 32, 32, 32)]

# Pixel cols 40.5..50, rows 20..30 of the raster: in window 1, at chip pixels (8.5, 20, 18, 30).
POOL = (500_020.25, 5_999_985.0, 500_025.0, 5_999_990.0)
POOL_CHIP_BOX = [8.5, 20.0, 18.0, 30.0]
# Pixel cols 2..6, rows 50..60: in window 2, at chip pixels (2, 18, 6, 28).
TREE = (500_001.0, 5_999_970.0, 500_003.0, 5_999_975.0)
TREE_CHIP_BOX = [2.0, 18.0, 6.0, 28.0]


def write_raster(path: Path, *, width: int = 64, height: int = 64, crs: str | None = UTM,
                 transform: Affine | None = UTM_TRANSFORM, count: int = 3, dtype: str = "uint8",
                 nodata: float | None = None, pixels: np.ndarray | None = None, driver: str = "GTiff",
                 seed: int = 0) -> Path:
    """A raster of seeded noise in 1..high (never 0, which tests use as nodata)."""
    if pixels is None:
        high = 255 if dtype == "uint8" else 4000
        pixels = np.random.default_rng(seed).integers(1, high, (count, height, width)).astype(dtype)
    profile = {"driver": driver, "width": pixels.shape[2], "height": pixels.shape[1],
               "count": pixels.shape[0], "dtype": pixels.dtype}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)
    return path


def samples(boxes, values, *, crs: str | None = UTM, names=None, field: str = "Classvalue") -> gpd.GeoDataFrame:
    """Training samples as ArcGIS's schema has them: Classvalue (+ Classname) and polygons."""
    data = {field: values}
    if names is not None:
        data["Classname"] = names
    return gpd.GeoDataFrame(data, geometry=[shapely.box(*b) for b in boxes], crs=crs)


def export(tmp_path: Path, raster: Path, labels, **kwargs) -> Path:
    kwargs = {"tile_size": 32, "stride_size": 32, "output_location": tmp_path / "out",
              "progress": False, **kwargs}
    return export_training_data(raster, labels, **kwargs)


def chip_boxes(root: Path, stem: str) -> list[list[float]]:
    return read_voc(root / "labels" / f"{stem}.xml").chip_boxes.tolist()


@pytest.fixture
def utm_raster(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "scene.tif")


@pytest.fixture
def pool_and_tree() -> gpd.GeoDataFrame:
    return samples([POOL, TREE], [1, 2], names=["pool", "tree"])


# ----------------------------------------------------------------------------- boxes


def test_boxes_land_at_hand_computed_pixels_with_background_chips(tmp_path, utm_raster, pool_and_tree):
    root = export(tmp_path, utm_raster, pool_and_tree, output_nofeature_tiles=True)

    assert root == tmp_path / "out"
    stems = [f"{i:09d}" for i in range(4)]
    assert read_map_txt(root) == [(f"{s}.tif", f"{s}.xml") for s in stems]
    assert (root / "map.txt").read_text().splitlines()[1] == r"images\000000001.tif labels\000000001.xml"
    assert chip_boxes(root, stems[0]) == []  # background chip: a label file without objects
    assert chip_boxes(root, stems[1]) == [POOL_CHIP_BOX]
    assert chip_boxes(root, stems[2]) == [TREE_CHIP_BOX]
    assert chip_boxes(root, stems[3]) == []
    assert read_voc(root / "labels" / "000000001.xml").classes == ("1",)  # the class Value, as ArcGIS


def test_chips_without_objects_are_skipped_by_default(tmp_path, utm_raster, pool_and_tree):
    root = export(tmp_path, utm_raster, pool_and_tree)

    assert read_map_txt(root) == [("000000000.tif", "000000000.xml"), ("000000001.tif", "000000001.xml")]
    assert chip_boxes(root, "000000000") == [POOL_CHIP_BOX]
    assert chip_boxes(root, "000000001") == [TREE_CHIP_BOX]
    assert sorted(p.name for p in (root / "images").iterdir()) == ["000000000.tif", "000000001.tif"]


def test_arcgis_spelling_of_output_nofeature_tiles(tmp_path, utm_raster, pool_and_tree):
    root = export(tmp_path, utm_raster, pool_and_tree, output_nofeature_tiles="ALL_TILES")
    assert len(read_map_txt(root)) == 4


def test_non_square_pixels_in_web_mercator_and_flush_last_window(tmp_path):
    # 2 m x 3 m pixels; top-left (1 000 000, 2 000 000). Windows 32 x 16 px, stride 16:
    # columns 0, 16, 28 (flush with the 60 px edge), rows 0, 16, 24 (flush with 40 px).
    transform = from_origin(1_000_000, 2_000_000, 2, 3)
    raster = write_raster(tmp_path / "merc.tif", width=60, height=40, crs="EPSG:3857", transform=transform)
    # x 1000070..1000090 -> cols 35..45; y 1999985..1999970 -> rows 5..10: inside windows
    # (16, 0) and (28, 0) only.
    labels = samples([(1_000_070, 1_999_970, 1_000_090, 1_999_985)], [7], crs="EPSG:3857")

    root = export(tmp_path, raster, labels, tile_size={"x": 32, "y": 16}, stride_size={"x": 16, "y": 16})

    assert chip_boxes(root, "000000000") == [[19.0, 5.0, 29.0, 10.0]]
    assert chip_boxes(root, "000000001") == [[7.0, 5.0, 17.0, 10.0]]
    assert len(read_map_txt(root)) == 2
    with rasterio.open(root / "images" / "000000001.tif") as chip:
        assert (chip.width, chip.height) == (32, 16)
        assert chip.transform == Affine(2, 0, 1_000_056, 0, -3, 2_000_000)
    emd = json.loads((root / "esri_model_definition.emd").read_text())
    assert (emd["ImageWidth"], emd["ImageHeight"]) == (32, 16)
    assert emd["CellSize"] == {"x": 2.0, "y": 3.0, "spatialReference": {"wkid": 3857, "latestWkid": 3857}}


def test_labels_in_wgs84_land_on_the_same_pixels_as_in_utm(tmp_path, utm_raster, caplog):
    to_wgs84 = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    xmin, ymin, xmax, ymax = POOL
    corners = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)]
    pool_wgs84 = shapely.Polygon([to_wgs84.transform(x, y) for x, y in corners])
    labels = gpd.GeoDataFrame({"Classvalue": [1]}, geometry=[pool_wgs84], crs="EPSG:4326")
    caplog.set_level(logging.INFO, logger="geolearn.data.export")

    root = export(tmp_path, utm_raster, labels)

    [box] = chip_boxes(root, "000000000")
    np.testing.assert_allclose(box, POOL_CHIP_BOX, atol=0.011)  # VOC keeps 2 decimals
    assert "from EPSG:4326 (WGS 84) to the raster's CRS EPSG:32633" in caplog.text


def test_polygon_cut_by_a_chip_edge_is_clipped_then_filtered_by_overlap_ratio(tmp_path, utm_raster):
    # cols 20..36 (16 px wide), rows 4..12: 12 px (75 %) in window 0, 4 px (25 %) in window 1.
    labels = samples([(500_010, 5_999_994, 500_018, 5_999_998)], [1])

    root = export(tmp_path, utm_raster, labels)
    assert chip_boxes(root, "000000000") == [[20.0, 4.0, 32.0, 12.0]]
    assert chip_boxes(root, "000000001") == [[0.0, 4.0, 4.0, 12.0]]

    for ratio in (0.5, 0.75):  # 0.75 exactly still passes
        root = export(tmp_path, utm_raster, labels, min_polygon_overlap_ratio=ratio, overwrite=True)
        assert read_map_txt(root) == [("000000000.tif", "000000000.xml")]
        assert chip_boxes(root, "000000000") == [[20.0, 4.0, 32.0, 12.0]]

    with pytest.raises(NoChipsError, match="No chip was exported.*4 windows skipped \\(no feature\\)"):
        export(tmp_path, utm_raster, labels, min_polygon_overlap_ratio=0.8, overwrite=True)


def test_polygons_grazing_a_chip_leave_no_sliver_boxes(tmp_path, utm_raster):
    # cols 20..32.004: 0.004 px inside window 1, nothing to see there.
    labels = samples([(500_010, 5_999_994, 500_016.002, 5_999_998)], [1])
    root = export(tmp_path, utm_raster, labels)
    assert read_map_txt(root) == [("000000000.tif", "000000000.xml")]
    assert chip_boxes(root, "000000000") == [[20.0, 4.0, 32.0, 12.0]]


def test_rotated_raster_boxes_come_from_every_vertex(tmp_path):
    # A raster rotated by 30 degrees: a square of chip pixels (8, 4)..(16, 12) is a
    # rotated square on the map; its box must come back as exactly those pixels.
    transform = Affine.translation(X0, Y0) @ Affine.rotation(30) @ Affine.scale(RES, -RES)
    raster = write_raster(tmp_path / "rotated.tif", transform=transform)
    square = shapely.Polygon([transform @ (c, r) for c, r in [(8, 4), (16, 4), (16, 12), (8, 12)]])
    labels = gpd.GeoDataFrame({"Classvalue": [1]}, geometry=[square], crs=UTM)

    root = export(tmp_path, raster, labels)

    [box] = chip_boxes(root, "000000000")
    np.testing.assert_allclose(box, [8, 4, 16, 12], atol=1e-6)


def test_pixel_to_map_to_pixel_round_trip(tmp_path, utm_raster, pool_and_tree):
    root = export(tmp_path, utm_raster, pool_and_tree, output_nofeature_tiles=True)

    [box] = chip_boxes(root, "000000001")
    with rasterio.open(root / "images" / "000000001.tif") as chip:
        xmin, ymax = chip.transform @ (box[0], box[1])  # pixel edges -> map
        xmax, ymin = chip.transform @ (box[2], box[3])
        back = [*(~chip.transform @ (xmin, ymax)), *(~chip.transform @ (xmax, ymin))]
    np.testing.assert_allclose([xmin, ymin, xmax, ymax], POOL, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back, box, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- chips


def test_geotiff_chips_carry_window_transform_crs_and_source_pixels(tmp_path, utm_raster, pool_and_tree):
    root = export(tmp_path, utm_raster, pool_and_tree, output_nofeature_tiles=True)

    with rasterio.open(utm_raster) as src:
        for index, window in enumerate(WINDOWS):
            with rasterio.open(root / "images" / f"{index:09d}.tif") as chip:
                assert chip.crs == src.crs
                assert chip.transform == src.window_transform(window)
                np.testing.assert_array_equal(chip.read(), src.read(window=window))
    with rasterio.open(root / "images" / "000000001.tif") as chip:
        assert chip.transform == Affine(0.5, 0, 500_016, 0, -0.5, 6_000_000)  # by hand


def test_nodata_only_chips_are_skipped(tmp_path, pool_and_tree):
    pixels = np.random.default_rng(1).integers(1, 255, (3, 64, 64)).astype("uint8")
    pixels[:, 32:, 32:] = 0  # window 3 is all nodata
    raster = write_raster(tmp_path / "holes.tif", pixels=pixels, nodata=0)

    root = export(tmp_path, raster, pool_and_tree, output_nofeature_tiles=True)

    assert len(read_map_txt(root)) == 3
    with rasterio.open(raster) as src, rasterio.open(root / "images" / "000000002.tif") as chip:
        np.testing.assert_array_equal(chip.read(), src.read(window=WINDOWS[2]))
    assert "1 windows skipped (nodata)" in (root / "stats.txt").read_text()


def test_raster_smaller_than_a_tile_gives_one_padded_chip(tmp_path):
    raster = write_raster(tmp_path / "small.tif", width=20, height=24, nodata=0)
    # cols 15..25 reach past the 20 px raster: the box stops at its edge.
    labels = samples([(500_007.5, 5_999_990, 500_012.5, 5_999_995)], [1])

    root = export(tmp_path, raster, labels)

    assert chip_boxes(root, "000000000") == [[15.0, 10.0, 20.0, 20.0]]
    with rasterio.open(raster) as src, rasterio.open(root / "images" / "000000000.tif") as chip:
        pixels = chip.read()
        assert pixels.shape == (3, 32, 32)
        np.testing.assert_array_equal(pixels[:, :24, :20], src.read())
        assert not pixels[:, 24:, :].any() and not pixels[:, :, 20:].any()  # padded with nodata
    state = json.loads((root / "esri_accumulated_stats.json").read_text())["BandStatsState"]
    assert [band["Num"] for band in state] == [20 * 24] * 3  # the padding is not counted


def test_kitti_labels(tmp_path, utm_raster, pool_and_tree):
    root = export(tmp_path, utm_raster, pool_and_tree, metadata_format="KITTI_rectangles",
                  output_nofeature_tiles=True, progress=True)

    assert read_map_txt(root)[1] == ("000000001.tif", "000000001.txt")
    assert (root / "labels" / "000000000.txt").read_text() == ""  # background chip
    line = (root / "labels" / "000000001.txt").read_text().split()
    assert len(line) == 15 and line[0] == "1"
    assert read_kitti(root / "labels" / "000000001.txt").chip_boxes.tolist() == [POOL_CHIP_BOX]
    assert json.loads((root / "esri_model_definition.emd").read_text())["MetaDataMode"] == "KITTI_rectangles"


@pytest.mark.parametrize(("chip_format", "suffix"), [("png", ".png"), ("JPEG", ".jpg")])
def test_png_and_jpeg_chips(tmp_path, utm_raster, pool_and_tree, chip_format, suffix):
    root = export(tmp_path, utm_raster, pool_and_tree, chip_format=chip_format)

    assert sorted(p.name for p in (root / "images").iterdir()) == [f"00000000{i}{suffix}" for i in (0, 1)]
    assert read_map_txt(root)[0] == (f"000000000{suffix}", "000000000.xml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(utm_raster) as src, rasterio.open(root / "images" / f"000000000{suffix}") as chip:
            pixels = chip.read()
            assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
            if suffix == ".png":  # lossless
                np.testing.assert_array_equal(pixels, src.read(window=WINDOWS[1]))
    assert chip_boxes(root, "000000000") == [POOL_CHIP_BOX]


def test_multispectral_uint16_exports_unchanged_to_tiff(tmp_path, pool_and_tree):
    raster = write_raster(tmp_path / "ms.tif", count=4, dtype="uint16")

    root = export(tmp_path, raster, pool_and_tree)

    with rasterio.open(raster) as src, rasterio.open(root / "images" / "000000000.tif") as chip:
        assert chip.count == 4 and chip.dtypes == ("uint16",) * 4
        np.testing.assert_array_equal(chip.read(), src.read(window=WINDOWS[1]))
    emd = json.loads((root / "esri_model_definition.emd").read_text())
    assert emd["ExtractBands"] == [0, 1, 2, 3]
    assert emd["InputRastersProps"] == {"RasterCount": 1, "BandNames": ["Band_1", "Band_2", "Band_3", "Band_4"]}
    assert read_voc(root / "labels" / "000000000.xml").chip_boxes.tolist() == [POOL_CHIP_BOX]


def test_jpeg_refuses_multispectral(tmp_path, pool_and_tree):
    raster = write_raster(tmp_path / "ms.tif", count=4, dtype="uint16")
    with pytest.raises(BandMismatchError, match="JPEG.*4 band\\(s\\) of uint16.*chip_format='TIFF'"):
        export(tmp_path, raster, pool_and_tree, chip_format="JPEG")
    assert not (tmp_path / "out").exists()


def test_mask_polygons_keep_only_the_chips_they_touch(tmp_path, utm_raster, pool_and_tree):
    mask = samples([(500_017, 5_999_985, 500_020, 5_999_990)], [0])  # inside window 1 only
    root = export(tmp_path, utm_raster, pool_and_tree, input_mask_polygons=mask, output_nofeature_tiles=True)
    assert read_map_txt(root) == [("000000000.tif", "000000000.xml")]
    assert chip_boxes(root, "000000000") == [POOL_CHIP_BOX]


def test_points_are_buffered_to_squares(tmp_path, utm_raster):
    # (500022.5, 5999987.5) is pixel (45, 25); 2 m = 4 px either side; window 1 starts at col 32.
    points = gpd.GeoDataFrame({"Classvalue": [3]}, geometry=[shapely.Point(500_022.5, 5_999_987.5)], crs=UTM)
    root = export(tmp_path, utm_raster, points, buffer_radius=2.0)
    assert chip_boxes(root, "000000000") == [[9.0, 21.0, 17.0, 29.0]]


# ----------------------------------------------------------------------------- metadata files


def test_emd_stats_and_map_contents(tmp_path):
    pixels = np.random.default_rng(2).integers(1, 255, (3, 64, 64)).astype("uint8")
    pixels[:, :5, :] = 0  # some nodata in the written chips: left out of the band statistics
    raster = write_raster(tmp_path / "scene.tif", pixels=pixels, nodata=0)
    labels = samples(
        [POOL, TREE, (500_002, 5_999_975, 500_012, 5_999_985), (400_000, 5_000_000, 400_010, 5_000_010)],
        [1, 2, 1, 5],
        names=["pool", "tree", "pool", "car"],  # the car lies off the raster: a class with no object
    )

    root = export(tmp_path, raster, labels, stride_size=16)

    pairs = read_map_txt(root)
    assert sorted(p.name for p in (root / "images").iterdir()) == [image for image, _ in pairs]
    per_chip = [read_voc(root / "labels" / label) for _, label in pairs]
    tokens = [token for labels in per_chip for token in labels.classes]
    emd = json.loads((root / "esri_model_definition.emd").read_text())
    stats = json.loads((root / "esri_accumulated_stats.json").read_text())
    features = stats["FeatureStats"]

    assert emd["MetaDataMode"] == stats["MetaDataMode"] == "PASCAL_VOC_rectangles"
    assert emd["ImageSpaceUsed"] == "MAP_SPACE"
    assert (emd["ImageWidth"], emd["ImageHeight"]) == (32, 32)
    assert emd["Classes"] == [
        {"Value": 1, "Name": "pool", "Color": list(default_color(1))},
        {"Value": 2, "Name": "tree", "Color": list(default_color(2))},
        {"Value": 5, "Name": "car", "Color": list(default_color(5))},
    ]
    assert emd["CellSize"] == emd["MinCellSize"] == {"x": 0.5, "y": 0.5, "spatialReference": {"wkid": 32633, "latestWkid": 32633}}
    assert emd["geolearn"]["tile_size"] == {"x": 32, "y": 32}
    assert emd["geolearn"]["stride_size"] == {"x": 16, "y": 16}
    assert emd["geolearn"]["chip_format"] == "TIFF"
    assert "UTM zone 33N" in emd["geolearn"]["crs_wkt"]

    assert stats["NumTiles"] == features["NumImagesTotal"] == len(pairs) == 8  # window (32, 32) holds no object
    assert (stats["NumBands"], stats["TileSizeX"], stats["TileSizeY"], stats["NumClasses"]) == (3, 32, 32, 3)
    assert features["NumFeaturesPerClass"] == [tokens.count("1"), tokens.count("2"), 0]
    assert features["NumFeaturesTotal"] == len(tokens)
    assert features["NumImagesPerClass"] == [
        sum("1" in labels.classes for labels in per_chip), sum("2" in labels.classes for labels in per_chip), 0
    ]
    counts = [len(labels) for labels in per_chip]
    assert features["NumFeaturesPerImage"] == {"Min": min(counts), "Max": max(counts), "Mean": np.mean(counts)}
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for labels in per_chip for b, t in
             zip(labels.chip_boxes.tolist(), labels.classes) if t == "2"]
    area_stats = features["FeatureAreaPerClass"][1]
    np.testing.assert_allclose([area_stats["Min"], area_stats["Max"], area_stats["Mean"]],
                               [min(areas), max(areas), np.mean(areas)], atol=0.01)

    # Band statistics: numpy's figures over the valid pixels of the chips written.
    valid_pixels = []
    for image, _ in pairs:
        with rasterio.open(root / "images" / image) as chip:
            valid = chip.dataset_mask() > 0
            valid_pixels.append(chip.read()[:, valid])
    valid_pixels = np.concatenate(valid_pixels, axis=1).astype(np.float64)
    state = stats["BandStatsState"]
    for band, values in zip(state, valid_pixels):
        assert band["Num"] == values.size
        assert (band["Min"], band["Max"]) == (values.min(), values.max())
        np.testing.assert_allclose(band["M1"], values.mean(), rtol=1e-12)
        np.testing.assert_allclose(band["M2"], ((values - values.mean()) ** 2).sum(), rtol=1e-9)
    np.testing.assert_allclose([b["StdDev"] for b in emd["AllTilesStats"]], valid_pixels.std(axis=1), rtol=1e-9)

    summary = (root / "stats.txt").read_text()
    assert "chips: 8" in summary and "pool" in summary


# ----------------------------------------------------------------------------- refusals


def test_missing_class_field_lists_the_columns(tmp_path, utm_raster):
    labels = samples([POOL], [1], field="class_id")
    expected = r"no field for the default field 'Classvalue'.*\['class_id'\].*classvalue_field="
    with pytest.raises(LabelFormatError, match=expected):
        export(tmp_path, utm_raster, labels)
    root = export(tmp_path, utm_raster, labels, classvalue_field="CLASS_ID")  # field names ignore case
    assert chip_boxes(root, "000000000") == [POOL_CHIP_BOX]


@pytest.mark.parametrize("values", [[1.5, 2], ["pool", "tree"], [1, None]])
def test_non_integer_class_values(tmp_path, utm_raster, values):
    labels = samples([POOL, TREE], values)
    with pytest.raises(LabelFormatError, match="field 'Classvalue' .* must hold integer class values"):
        export(tmp_path, utm_raster, labels)


def test_points_without_buffer_radius(tmp_path, utm_raster):
    points = gpd.GeoDataFrame({"Classvalue": [1]}, geometry=[shapely.Point(500_022.5, 5_999_987.5)], crs=UTM)
    with pytest.raises(LabelFormatError, match=r"1 features without area \(points\).*buffer_radius="):
        export(tmp_path, utm_raster, points)


def test_raster_without_crs_against_wgs84_labels(tmp_path):
    raster = write_raster(tmp_path / "photo.png", crs=None, driver="PNG")
    labels = samples([(15.0, 54.0, 15.001, 54.001)], [1], crs="EPSG:4326")
    expected = r"EPSG:4326 \(WGS 84\) but the raster .*photo.png has no CRS.*georeference"
    with pytest.raises(CRSMismatchError, match=expected):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            export(tmp_path, raster, labels)
    assert not (tmp_path / "out").exists()  # nothing written on a refused call


def test_raster_and_labels_without_crs_share_pixel_coordinates(tmp_path):
    # No georeferencing anywhere: rasterio's identity transform makes map = pixel coordinates
    # (y grows downwards).
    raster = write_raster(tmp_path / "photo.png", crs=None, driver="PNG")
    labels = samples([(40, 4, 48, 12)], [1], crs=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        root = export(tmp_path, raster, labels)
    assert chip_boxes(root, "000000000") == [[8.0, 4.0, 16.0, 12.0]]


def test_labels_without_crs_are_assumed_in_the_raster_crs(tmp_path, utm_raster):
    labels = samples([POOL], [1], crs=None)
    with pytest.warns(GeolearnWarning, match=r"has no CRS; assuming .*EPSG:32633"):
        root = export(tmp_path, utm_raster, labels)
    assert chip_boxes(root, "000000000") == [POOL_CHIP_BOX]


def test_null_and_empty_geometries_are_skipped_with_a_count(tmp_path, utm_raster):
    labels = gpd.GeoDataFrame({"Classvalue": [1, 1, 1]},
                              geometry=[shapely.box(*POOL), None, shapely.Polygon()], crs=UTM)
    with pytest.warns(GeolearnWarning, match="skipped 2 of 3 features with a null or empty geometry"):
        root = export(tmp_path, utm_raster, labels)
    assert chip_boxes(root, "000000000") == [POOL_CHIP_BOX]


def test_labels_that_miss_the_raster(tmp_path, utm_raster):
    labels = samples([(400_000, 5_000_000, 400_010, 5_000_010)], [1])
    with pytest.raises(NoOverlapError, match=r"does not overlap.*x 500000\.\.500032, y 5\.99997e\+06\.\.6e\+06.*"
                                             r"x 400000\.\.400010.*CRS is declared wrong"):
        export(tmp_path, utm_raster, labels)


def test_metres_tagged_as_wgs84_are_diagnosed(tmp_path, utm_raster):
    labels = samples([POOL], [1], crs="EPSG:4326")  # UTM metres declared as degrees
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeolearnWarning)
        with pytest.raises(NoOverlapError, match="CRS is declared wrong"):
            export(tmp_path, utm_raster, labels)


def test_existing_output_needs_overwrite(tmp_path, utm_raster, pool_and_tree):
    export(tmp_path, utm_raster, pool_and_tree)
    with pytest.raises(OutputExistsError, match=r"already holds an export \(images/, labels/, .*overwrite=True"):
        export(tmp_path, utm_raster, pool_and_tree)


def test_overwrite_removes_only_what_the_export_wrote(tmp_path, utm_raster, pool_and_tree):
    root = export(tmp_path, utm_raster, pool_and_tree, output_nofeature_tiles=True)  # 4 chips
    user_files = [root / "images" / "notes.txt", root / "labels" / "README.md", root / "keep.txt"]
    for path in user_files:
        path.write_text("mine")

    with pytest.warns(GeolearnWarning, match="2 other files in images/ and labels/ .* left in place"):
        export(tmp_path, utm_raster, pool_and_tree, overwrite=True)  # 2 chips

    assert all(path.read_text() == "mine" for path in user_files)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["000000000.tif", "000000001.tif", "notes.txt"]
    assert sorted(p.name for p in (root / "labels").iterdir()) == ["000000000.xml", "000000001.xml", "README.md"]
    assert len(read_map_txt(root)) == 2


def test_overwrite_refuses_to_replace_unlisted_chips(tmp_path, utm_raster, pool_and_tree):
    root = export(tmp_path, utm_raster, pool_and_tree)
    (root / "images" / "000000007.tif").write_bytes(b"not from this export")
    expected = "1 files named like chips .* not listed in the earlier export's map.txt"
    with pytest.raises(OutputExistsError, match=expected):
        export(tmp_path, utm_raster, pool_and_tree, overwrite=True)
    assert (root / "images" / "000000007.tif").read_bytes() == b"not from this export"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"chip_format": "MRF"}, NotImplementedError, "chip_format='MRF' is not supported"),
        ({"chip_format": "BMP"}, ValueError, "chip_format='BMP'.*'TIFF', 'PNG' or 'JPEG'"),
        ({"metadata_format": "RCNN_Masks"}, NotImplementedError, "'PASCAL_VOC_rectangles' or 'KITTI_rectangles'"),
        ({"rotation_angle": 90}, NotImplementedError, "rotation_angle=90 is not supported.*rotation_angle=0"),
        ({"reference_system": "PIXEL_SPACE"}, NotImplementedError, "reference_system='PIXEL_SPACE'"),
        ({"context": {"cellSize": 2}}, NotImplementedError, "context="),
        ({"blacken_around_feature": True}, NotImplementedError, "blacken_around_feature=True"),
        ({"process_all_raster_items": True}, NotImplementedError, "process_all_raster_items=True"),
        ({"additional_input_raster": "b.tif"}, NotImplementedError, "additional_input_raster="),
        ({"input_instance_data": "i.gpkg"}, NotImplementedError, "input_instance_data="),
        ({"output_location": None}, ValueError, "output_location is required"),
        ({"min_polygon_overlap_ratio": 1.5}, ValueError, r"must lie in \[0, 1\]"),
        ({"tile_size": {"x": 32}}, ValueError, "tile_size="),
        ({"output_nofeature_tiles": "SOME"}, ValueError, "ALL_TILES"),
        ({"buffer_radius": -1}, None, None),  # polygons need no buffer: ignored
    ],
)
def test_unsupported_and_bad_options(tmp_path, utm_raster, pool_and_tree, kwargs, error, match):
    if error is None:
        export(tmp_path, utm_raster, pool_and_tree, **kwargs)
        return
    with pytest.raises(error, match=match):
        export(tmp_path, utm_raster, pool_and_tree, **kwargs)
    assert not (tmp_path / "out").exists()


def test_labels_from_a_geopackage(tmp_path, utm_raster, pool_and_tree):
    path = tmp_path / "labels.gpkg"
    pool_and_tree.to_file(path, driver="GPKG", engine="pyogrio")
    root = export(tmp_path, utm_raster, str(path))
    assert chip_boxes(root, "000000000") == [POOL_CHIP_BOX]
    assert json.loads((root / "esri_model_definition.emd").read_text())["Classes"][1]["Name"] == "tree"


def test_an_export_that_fails_leaves_the_earlier_one_whole(tmp_path, utm_raster, pool_and_tree, monkeypatch):
    import geolearn.data.export as export_module

    root = export(tmp_path, utm_raster, pool_and_tree, output_nofeature_tiles=True)  # 4 chips
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    real_write_chip = export_module._write_chip
    written = []

    def write_then_fail(path, *args):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real_write_chip(path, *args)

    monkeypatch.setattr(export_module, "_write_chip", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path, utm_raster, pool_and_tree, overwrite=True)
    monkeypatch.undo()
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert len(read_map_txt(root)) == 4

    export(tmp_path, utm_raster, pool_and_tree, overwrite=True)
    assert len(read_map_txt(root)) == 2


def test_a_swap_interrupted_at_any_rename_is_finished_by_prepare_data(tmp_path, utm_raster, pool_and_tree, monkeypatch):
    import geolearn.data.export_folder as export_folder

    real_replace = os.replace
    moves = []

    def counting(src, dst):
        if ".exporting-" in str(src) and ".exporting-" not in str(dst):  # out of staging, into place
            moves.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(export_folder.os, "replace", counting)
    export(tmp_path / "count", utm_raster, pool_and_tree)  # 2 chips: 2 images, 2 labels, 4 metadata files
    assert len(moves) == 8 and moves[-1] == "esri_model_definition.emd"
    for stop in range(len(moves)):
        root = export(tmp_path / f"stop{stop}", utm_raster, pool_and_tree, output_nofeature_tiles=True)  # 4 chips
        done = []

        def fail_at_stop(src, dst):
            if ".exporting-" in str(src) and ".exporting-" not in str(dst) and len(done) == stop:
                raise KeyboardInterrupt  # as a kill between two renames
            if ".exporting-" not in str(dst):
                done.append(dst)
            real_replace(src, dst)

        monkeypatch.setattr(export_folder.os, "replace", fail_at_stop)
        with pytest.raises(KeyboardInterrupt):
            export(tmp_path / f"stop{stop}", utm_raster, pool_and_tree, overwrite=True)
        monkeypatch.setattr(export_folder.os, "replace", real_replace)
        data = prepare_data(root, chip_size=32, val_split_pct=0.0)
        assert len(data.train_ds) == len(read_map_txt(root)) == 2, stop
        assert not list(root.glob(".exporting-*"))
        assert sorted(p.name for p in (root / "images").iterdir()) == ["000000000.tif", "000000001.tif"]


@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", 0), ("float32", -9999.0)])
def test_band_stats_of_other_data_types(tmp_path, pool_and_tree, dtype, nodata):
    pixels = (np.random.default_rng(3).random((2, 64, 64)) * 3000 + 1).astype(dtype)
    pixels[:, 20:30, 40:50] = nodata
    raster = write_raster(tmp_path / "scene.tif", pixels=pixels, nodata=nodata)

    root = export(tmp_path, raster, pool_and_tree)

    valid_pixels = []
    for image, _ in read_map_txt(root):
        with rasterio.open(root / "images" / image) as chip:
            assert chip.dtypes[0] == dtype
            valid_pixels.append(chip.read()[:, chip.dataset_mask() > 0])
    valid_pixels = np.concatenate(valid_pixels, axis=1).astype(np.float64)
    state = json.loads((root / "esri_accumulated_stats.json").read_text())["BandStatsState"]
    assert [band["Num"] for band in state] == [valid_pixels.shape[1]] * 2 == [2 * 32 * 32 - 100] * 2
    np.testing.assert_allclose([band["Min"] for band in state], valid_pixels.min(axis=1))
    np.testing.assert_allclose([band["Max"] for band in state], valid_pixels.max(axis=1))
    np.testing.assert_allclose([band["M1"] for band in state], valid_pixels.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose([band["M2"] for band in state], valid_pixels.var(axis=1) * valid_pixels.shape[1],
                               rtol=1e-9)
