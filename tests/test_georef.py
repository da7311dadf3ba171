"""Georeferencing: raster-pixel boxes → map polygons through the affine, and the GIS layers written."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import torch
from affine import Affine

from geolearn.data.georef import boxes_to_polygons, detections_frame, polygons_to_boxes, write_features
from geolearn.errors import OutputExistsError

NORTH_UP = Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4000000.0)  # 2 m pixels, UTM-like


def vertex_set(polygon: shapely.Polygon) -> set[tuple[float, float]]:
    return {(round(x, 9), round(y, 9)) for x, y in polygon.exterior.coords}


def test_north_up_box_edges_hand_computed():
    # Columns 10..30 are x = 500000 + 2·10 .. 500000 + 2·30; rows 20..40 are y = 4e6 - 2·20 .. 4e6 - 2·40.
    polygon = boxes_to_polygons(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), NORTH_UP)[0]
    assert vertex_set(polygon) == {(500020.0, 3999960.0), (500060.0, 3999960.0),
                                   (500060.0, 3999920.0), (500020.0, 3999920.0)}
    assert polygon.area == pytest.approx(40.0 * 40.0)
    assert polygon.exterior.is_ccw


def test_fractional_boxes_are_not_rounded_or_shifted_by_half_a_pixel():
    polygon = boxes_to_polygons(torch.tensor([[0.25, 0.5, 1.75, 3.125]]), NORTH_UP)[0]
    assert polygon.bounds == (500000.5, 4000000.0 - 6.25, 500003.5, 3999999.0)


def test_non_square_pixels_hand_computed():
    transform = Affine(0.5, 0.0, 1000.0, 0.0, -0.25, 2000.0)  # 0.5 m wide, 0.25 m high
    polygon = boxes_to_polygons(torch.tensor([[4.0, 8.0, 12.0, 16.0]]), transform)[0]
    # x = 1000 + 0.5·4 .. 1000 + 0.5·12; y = 2000 - 0.25·16 .. 2000 - 0.25·8
    assert polygon.bounds == (1002.0, 1996.0, 1006.0, 1998.0)
    assert polygon.area == pytest.approx(4.0 * 2.0)


def test_rotated_affine_90_degrees_hand_computed():
    # X = -row + 100, Y = col + 200 (columns run north, rows run west).
    transform = Affine(0.0, -1.0, 100.0, 1.0, 0.0, 200.0)
    polygon = boxes_to_polygons(torch.tensor([[1.0, 2.0, 3.0, 5.0]]), transform)[0]
    # corners (col, row): (1, 2) → (98, 201), (3, 2) → (98, 203), (3, 5) → (95, 203), (1, 5) → (95, 201)
    assert vertex_set(polygon) == {(98.0, 201.0), (98.0, 203.0), (95.0, 203.0), (95.0, 201.0)}
    assert polygon.exterior.is_ccw


def test_rotated_affine_30_degrees_is_the_exact_quadrilateral():
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    transform = Affine(2 * c, -2 * s, 300000.0, -2 * s, -2 * c, 5000000.0)  # 2 m pixels, grid turned 30°
    polygon = boxes_to_polygons(torch.tensor([[10.0, 4.0, 16.0, 7.0]]), transform)[0]
    expected = set()
    for col, row in [(10, 4), (16, 4), (16, 7), (10, 7)]:
        expected.add((round(2 * c * col - 2 * s * row + 300000.0, 9), round(-2 * s * col - 2 * c * row + 5000000.0, 9)))
    assert vertex_set(polygon) == expected
    assert polygon.area == pytest.approx(6 * 2 * 3 * 2)  # 6 × 3 pixels of 4 m²


@pytest.mark.parametrize("transform", [
    NORTH_UP,
    Affine(0.3, 0.0, 712345.67, 0.0, -0.6, 5432109.87),
    Affine(0.0, -1.0, 100.0, 1.0, 0.0, 200.0),
    Affine.translation(-8.2e6, 5.1e6) @ Affine.rotation(17) @ Affine.scale(0.15, -0.15),
    Affine(1e-5, 0.0, 13.4, 0.0, -1e-5, 52.5),  # degrees
])
def test_pixel_to_map_to_pixel_round_trip(transform):
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 20000, (200, 2))
    size = rng.uniform(0.01, 300, (200, 2))
    raster_boxes = torch.tensor(np.concatenate([corner, corner + size], axis=1), dtype=torch.float32)
    back = polygons_to_boxes(boxes_to_polygons(raster_boxes, transform), transform)
    torch.testing.assert_close(back, raster_boxes.double(), atol=1e-4, rtol=0)


def test_empty_boxes():
    assert len(boxes_to_polygons(torch.zeros(0, 4), NORTH_UP)) == 0
    assert polygons_to_boxes([], NORTH_UP).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        boxes_to_polygons(torch.zeros(3), NORTH_UP)


def frame() -> gpd.GeoDataFrame:
    return detections_frame(
        torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0], [50.0, 50.0, 60.5, 52.0]]),
        torch.tensor([1, 2, 1]),
        torch.tensor([0.625, 0.875, 0.5]),
        ["background", "pool", "tree"],
        NORTH_UP,
        "EPSG:32633",
    )


def test_detections_frame_best_first_with_class_names_and_percent_confidence():
    found = frame()
    assert list(found.columns) == ["Class", "Confidence", "geometry"]
    assert found["Class"].tolist() == ["tree", "pool", "pool"]
    assert found["Confidence"].tolist() == [87.5, 62.5, 50.0]
    assert found["Confidence"].dtype == np.float64
    assert found.crs.to_epsg() == 32633
    assert found.geometry[0].bounds == (500000.0, 3999990.0, 500010.0, 4000000.0)
    assert found.geometry[1].bounds == (500020.0, 3999920.0, 500060.0, 3999960.0)


def test_detections_frame_field_names_and_empty():
    empty = detections_frame(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0),
                             ["background", "pool"], NORTH_UP, "EPSG:3857", class_field="Label",
                             confidence_field="Score")
    assert list(empty.columns) == ["Label", "Score", "geometry"] and len(empty) == 0
    assert empty.crs.to_epsg() == 3857


def test_detections_frame_refuses_labels_without_names():
    with pytest.raises(ValueError, match="background"):
        detections_frame(torch.zeros(1, 4), torch.tensor([3]), torch.tensor([0.9]), ["background", "pool"],
                         NORTH_UP, "EPSG:32633")


@pytest.mark.parametrize("name, driver", [("out.gpkg", "GPKG"), ("out.geojson", "GeoJSON"),
                                          ("out.json", "GeoJSON"), ("out.shp", "ESRI Shapefile")])
def test_each_driver_writes_what_geopandas_and_pyogrio_read_back(tmp_path, name, driver):
    found = frame()
    path = write_features(found, tmp_path / name)
    assert path == tmp_path / name
    info = pyogrio.read_info(path)
    assert info["driver"] == driver
    assert list(info["fields"]) == ["Class", "Confidence"]
    assert info["geometry_type"] == "Polygon"
    back = gpd.read_file(path, engine="pyogrio")
    assert back.crs.to_epsg() == 32633
    assert back["Class"].tolist() == ["tree", "pool", "pool"]
    assert back["Confidence"].tolist() == [87.5, 62.5, 50.0]
    for written, read in zip(found.geometry, back.geometry):
        assert read.bounds == pytest.approx(written.bounds, abs=1e-6)


def test_empty_layer_is_still_a_polygon_layer(tmp_path):
    path = write_features(frame().iloc[:0], tmp_path / "none.gpkg")
    info = pyogrio.read_info(path)
    assert info["features"] == 0 and info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == ["Class", "Confidence"]


def test_geoparquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = write_features(frame(), tmp_path / "out.parquet")
    back = gpd.read_parquet(path)
    assert back.crs.to_epsg() == 32633 and back["Class"].tolist() == ["tree", "pool", "pool"]


def test_explicit_driver_wins_over_the_suffix(tmp_path):
    path = write_features(frame(), tmp_path / "layer.dat", driver="GeoJSON")
    assert pyogrio.read_info(path)["driver"] == "GeoJSON"


def test_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "out.gpkg"
    path.write_bytes(b"the user's own file")
    with pytest.raises(OutputExistsError, match=r"out\.gpkg.*overwrite=True"):
        write_features(frame(), path)
    assert path.read_bytes() == b"the user's own file"
    write_features(frame(), path, overwrite=True)
    assert len(gpd.read_file(path)) == 3
    write_features(frame().iloc[:1], path, overwrite=True)  # replaced, not appended to
    assert len(gpd.read_file(path)) == 1


def test_overwriting_a_shapefile_replaces_its_companion_files(tmp_path):
    path = write_features(frame(), tmp_path / "out.shp")
    with pytest.raises(OutputExistsError):
        write_features(frame(), path)
    write_features(frame().iloc[:2], path, overwrite=True)
    assert len(gpd.read_file(path)) == 2 and gpd.read_file(path).crs.to_epsg() == 32633


def test_unknown_suffix_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv.*\.gpkg.*driver="):
        write_features(frame(), tmp_path / "out.csv")
