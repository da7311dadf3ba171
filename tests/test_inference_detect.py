"""geolearn.detect_objects over one raster, several tiles, globs and mixed CRSs (stub and real models)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from detect_stubs import (
    CRS,
    OBJECTS,
    PIXEL,
    TILE,
    BrightSquares,
    FixedDetections,
    map_box,
    write_tiles,
)
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import box

import geolearn
from geolearn.errors import (
    CRSMismatchError,
    GeolearnError,
    InputNotFoundError,
    InvalidArgumentError,
    OutputExistsError,
)
from geolearn.inference.detect import (
    detect_objects,
    parse_model_arguments,
    resolve_rasters,
)


@pytest.fixture
def tiles(tmp_path):
    return write_tiles(tmp_path / "tiles")


def rounded_bounds(frame):
    return sorted(tuple(round(v, 6) for v in g.bounds) for g in frame.geometry)


# ----------------------------------------------------------------------------- arguments

def test_model_arguments_accept_arcgis_strings_and_python_values():
    parsed = parse_model_arguments({"padding": "32", "threshold": "0.4", "nms_overlap": 0.2, "batch_size": 4.0,
                                    "exclude_pad_detections": "False", "merge": "greedy"})
    assert parsed == {"padding": 32, "threshold": 0.4, "nms_overlap": 0.2, "batch_size": 4,
                      "exclude_pad_detections": False, "merge": "greedy"}
    assert parse_model_arguments(None) == {}
    assert parse_model_arguments({"padding": "None"}) == {"padding": None}


def test_unknown_model_arguments_are_named_with_the_close_match():
    with pytest.raises(InvalidArgumentError, match=r"unknown keys 'treshold' \(did you mean 'threshold'\?\), "
                                                   r"'tile_size'.*; geolearn's RetinaNet takes padding, threshold"):
        parse_model_arguments({"treshold": 0.3, "tile_size": 256})


def test_bad_model_argument_values_name_key_and_value():
    with pytest.raises(InvalidArgumentError, match=r"model_arguments\['batch_size'\] = '4.5' is not valid"):
        parse_model_arguments({"batch_size": "4.5"})
    with pytest.raises(InvalidArgumentError, match=r"model_arguments\['exclude_pad_detections'\] = 'maybe'"):
        parse_model_arguments({"exclude_pad_detections": "maybe"})
    with pytest.raises(TypeError, match="must be a dict"):
        parse_model_arguments([("threshold", 0.5)])


def test_resolve_rasters_takes_files_folders_globs_and_lists(tiles, tmp_path):
    folder = tiles[0].parent
    (folder / "notes.txt").write_text("not a raster")
    assert resolve_rasters(folder) == [p.resolve() for p in tiles]
    assert resolve_rasters(str(folder / "tile_*_1.tif")) == [tiles[1].resolve(), tiles[3].resolve()]
    assert resolve_rasters([tiles[2], str(folder / "tile_0_*.tif"), tiles[2]]) == [
        tiles[2].resolve(), tiles[0].resolve(), tiles[1].resolve()]
    with pytest.raises(InputNotFoundError, match="matches no file"):
        resolve_rasters(str(folder / "*.jp2"))
    with pytest.raises(InputNotFoundError, match="no such file or folder"):
        resolve_rasters(tmp_path / "missing.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="holds no raster"):
        resolve_rasters(tmp_path / "empty")
    with pytest.raises(InputNotFoundError, match="empty list"):
        resolve_rasters([])


# ----------------------------------------------------------------------------- tiles and seams

def test_objects_cut_by_tile_seams_are_reported_once_at_their_map_coordinates(tiles):
    found = detect_objects(tiles, BrightSquares(), progress=False)
    assert found.crs == CRS
    assert list(found.columns) == ["Class", "Confidence", "geometry"]
    assert len(found) == len(OBJECTS)
    expected = sorted(tuple(round(v, 6) for v in map_box(*xyxy)) for xyxy, _ in OBJECTS.values())
    assert rounded_bounds(found) == expected
    by_box = {tuple(round(v, 6) for v in g.bounds): c for g, c in zip(found.geometry, found.Class)}
    for xyxy, name in OBJECTS.values():
        assert by_box[tuple(round(v, 6) for v in map_box(*xyxy))] == name
    assert np.allclose(found.Confidence, 90.0)


def test_one_vrt_mosaic_of_the_tiles_is_one_raster(tiles, tmp_path):
    vrt = write_vrt(tmp_path / "mosaic.vrt", tiles)
    stub = BrightSquares()
    found = detect_objects(vrt, stub, progress=False)
    assert stub.calls == [vrt.resolve()]
    expected = sorted(tuple(round(v, 6) for v in map_box(*xyxy)) for xyxy, _ in OBJECTS.values())
    assert rounded_bounds(found) == expected


def write_vrt(path: Path, tiles: list[Path]) -> Path:
    """A VRT mosaic of the 2 x 2 tiles, written by hand (no GDAL Python bindings needed)."""
    sources = []
    for tile in tiles:
        row, col = (int(v) for v in tile.stem.split("_")[1:])
        sources.append((tile, col * TILE, row * TILE))
    bands = []
    for band in (1, 2, 3):
        entries = "".join(
            f"""<SimpleSource><SourceFilename relativeToVRT="0">{tile}</SourceFilename><SourceBand>{band}</SourceBand>
<SrcRect xOff="0" yOff="0" xSize="{TILE}" ySize="{TILE}"/><DstRect xOff="{x}" yOff="{y}" xSize="{TILE}" ySize="{TILE}"/>
</SimpleSource>"""
            for tile, x, y in sources)
        bands.append(f'<VRTRasterBand dataType="Byte" band="{band}">{entries}</VRTRasterBand>')
    with rasterio.open(tiles[0]) as src:
        crs_wkt, transform = src.crs.to_wkt(), src.transform
    geo = ", ".join(str(v) for v in (transform.c, transform.a, 0.0, transform.f, 0.0, transform.e))
    path.write_text(f'<VRTDataset rasterXSize="{2 * TILE}" rasterYSize="{2 * TILE}"><SRS>{crs_wkt}</SRS>'
                    f'<GeoTransform>{geo}</GeoTransform>{"".join(bands)}</VRTDataset>')
    return path


def test_fields_are_renamed_and_a_name_without_suffix_is_a_geopackage(tiles, tmp_path):
    out = tmp_path / "out" / "trees"
    found = detect_objects(tiles, BrightSquares(), output_name=out, confidence_score_field="Score",
                           class_value_field="ClassName", progress=False)
    assert list(found.columns) == ["ClassName", "Score", "geometry"]
    written = out.with_suffix(".gpkg")
    info = pyogrio.read_info(written)
    assert info["driver"] == "GPKG" and list(info["fields"]) == ["ClassName", "Score"]
    back = gpd.read_file(written, engine="pyogrio")
    assert back.crs == CRS and len(back) == len(OBJECTS)


def test_an_existing_output_is_refused_before_any_detection(tiles, tmp_path):
    out = tmp_path / "found.geojson"
    out.write_text("{}")
    stub = BrightSquares()
    with pytest.raises(OutputExistsError, match="found.geojson already exists"):
        detect_objects(tiles, stub, output_name=out, progress=False)
    assert stub.calls == []
    detect_objects(tiles, stub, output_name=out, overwrite=True, progress=False)
    assert len(gpd.read_file(out)) == len(OBJECTS)


def test_bad_output_suffix_and_field_names_are_argument_errors(tiles, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"output_name: .*found.xyz.*suffix '.xyz'"):
        detect_objects(tiles, BrightSquares(), output_name=tmp_path / "found.xyz")
    with pytest.raises(InvalidArgumentError, match="both 'Class'"):
        detect_objects(tiles, BrightSquares(), confidence_score_field="Class")
    with pytest.raises(InvalidArgumentError, match=r"max_overlap_ratio=2 must be"):
        detect_objects(tiles, BrightSquares(), max_overlap_ratio=2)
    with pytest.raises(TypeError, match="model must be a RetinaNet or the path"):
        detect_objects(tiles, object())
    with pytest.raises(InputNotFoundError, match="model .*nothing.dlpk: no such file"):
        detect_objects(tiles, tmp_path / "nothing.dlpk")


def test_the_model_receives_the_model_arguments(tiles):
    seen = []

    class Recorder(BrightSquares):
        def detect_objects(self, raster, out_path=None, **kwargs):
            seen.append(kwargs)
            return super().detect_objects(raster, out_path, **kwargs)

    detect_objects(tiles[:1], Recorder(), {"threshold": "0.3", "padding": 8}, progress=False)
    assert seen == [{"threshold": 0.3, "padding": 8, "progress": False}]


def test_a_detector_without_out_path_is_called_with_what_was_given(tiles):
    seen = []

    class RasterOnly(BrightSquares):
        def detect_objects(self, raster, **kwargs):  # no out_path: geolearn passes only what was given
            seen.append(kwargs)
            return super().detect_objects(raster, **kwargs)

    assert len(detect_objects(tiles[:1], RasterOnly(), progress=False)) > 0
    assert seen == [{"progress": False}]


# ----------------------------------------------------------------------------- final NMS and CRSs

def fixed(rows, crs=CRS):
    geoms, classes, scores = zip(*rows)
    return gpd.GeoDataFrame({"Class": list(classes), "Confidence": list(scores)}, geometry=list(geoms), crs=crs)


def test_run_nms_and_max_overlap_ratio_are_arcgis_final_suppression(tiles):
    x, y = 500000.0, 4649990.0  # inside tile_0_0
    # IoU of the two trees: 1 / 3
    frames = {tiles[0].name: fixed([(box(x, y, x + 2, y + 2), "tree", 60.0), (box(x + 1, y, x + 3, y + 2), "tree", 90.0),
                                    (box(x + 1, y, x + 3, y + 2), "pool", 50.0)])}
    model = FixedDetections(frames)
    assert len(detect_objects(tiles[:1], model, run_nms=False, progress=False)) == 3
    assert sorted(detect_objects(tiles[:1], model, progress=False).Confidence) == [50.0, 90.0]
    assert len(detect_objects(tiles[:1], model, max_overlap_ratio=0.5, progress=False)) == 3
    merged = detect_objects(tiles[:1], model, {"class_agnostic": True}, progress=False)
    assert merged.Confidence.tolist() == [90.0]


def write_raster(path: Path, crs, transform, size=TILE) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs,
                       transform=transform) as dst:
        dst.write(np.full((3, size, size), 20, dtype=np.uint8))
    return path


def test_rasters_in_another_crs_are_reprojected_to_the_first_one(tiles, tmp_path, caplog):
    # A second raster in ETRS89-LAEA (EPSG:3035) with one detection at known coordinates.
    to_laea = Transformer.from_crs(CRS, "EPSG:3035", always_xy=True)
    x0, y0 = to_laea.transform(500100.0, 4649900.0)
    other = write_raster(tmp_path / "laea.tif", "EPSG:3035", from_origin(x0, y0, PIXEL, PIXEL))
    obj = box(x0 + 10, y0 - 10, x0 + 14, y0 - 6)
    model = FixedDetections({tiles[0].name: fixed([(box(500001, 4649991, 500003, 4649993), "tree", 70.0)]),
                             "laea.tif": fixed([(obj, "pool", 80.0)], crs="EPSG:3035")})
    with caplog.at_level("INFO", logger="geolearn.inference.detect"):
        found = detect_objects([tiles[0], other], model, progress=False)
    assert "from EPSG:3035 to EPSG:32633" in caplog.text
    assert found.crs == CRS and len(found) == 2
    back = Transformer.from_crs("EPSG:3035", CRS, always_xy=True).transform(*obj.centroid.coords[0])
    centre = found.geometry[found.Class == "pool"].iloc[0].centroid
    assert abs(centre.x - back[0]) < PIXEL and abs(centre.y - back[1]) < PIXEL


def test_rasters_with_and_without_a_crs_cannot_share_a_layer(tiles, tmp_path):
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        bare = write_raster(tmp_path / "bare.tif", None, from_origin(0, 64, 1, 1))
    with pytest.raises(CRSMismatchError, match="bare.tif has no CRS while .*tile_0_0.tif is in EPSG:32633"):
        detect_objects([tiles[0], bare], BrightSquares(), progress=False)


def test_detect_objects_is_public_and_needs_no_dask(tiles, tmp_path):
    assert geolearn.detect_objects is detect_objects
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from detect_stubs import BrightSquares
        from geolearn import detect_objects
        found = detect_objects({[str(p) for p in tiles]!r}, BrightSquares(), progress=False)
        assert len(found) == 4, found
        loaded = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path,
                   env={"PYTHONPATH": str(Path(geolearn.__file__).parents[1]), "PATH": "/usr/bin:/bin"})


def test_errors_are_geolearn_errors_for_the_cli(tmp_path):
    with pytest.raises(GeolearnError):
        detect_objects(tmp_path / "missing.tif", BrightSquares())


# ----------------------------------------------------------------------------- a real saved model

@pytest.fixture(scope="module")
def saved_model(tiny_data, tmp_path_factory):
    from detect_stubs import save_untrained_model

    return save_untrained_model(tiny_data, tmp_path_factory.mktemp("model") / "untrained")


def test_a_saved_model_package_detects_over_the_tiles(saved_model, tiles, tmp_path):
    from detect_stubs import UNTRAINED_THRESHOLD

    arguments = {"threshold": UNTRAINED_THRESHOLD, "batch_size": 2}
    found = detect_objects(tiles, saved_model / "untrained.dlpk", arguments, output_name=tmp_path / "found.gpkg",
                           max_overlap_ratio=0.5, progress=False)
    assert len(found) > 0 and found.crs == CRS
    assert list(found.columns) == ["Class", "Confidence", "geometry"]
    assert set(found.Class) <= {"pool", "tree"}
    assert ((found.Confidence > 0) & (found.Confidence <= 100)).all()
    mosaic = box(*map_box(0, 0, 2 * TILE, 2 * TILE))
    assert all(mosaic.buffer(1e-6).contains(g) for g in found.geometry)
    back = gpd.read_file(tmp_path / "found.gpkg")
    assert back.crs == CRS and len(back) == len(found)
    # the model object and its package give the same features
    from geolearn import RetinaNet

    again = detect_objects(tiles, RetinaNet.from_model(saved_model), arguments, max_overlap_ratio=0.5, progress=False)
    assert rounded_bounds(again) == rounded_bounds(found)
