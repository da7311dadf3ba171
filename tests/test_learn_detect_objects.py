"""RetinaNet.detect_objects: a whole raster in, georeferenced polygons out.

The network is replaced by a stub whose outputs are exactly what a perfect RetinaNet would give
for bright squares: the best-matching anchor of each bright region fires, with the box deltas
that decode to the region's pixel edges. Everything else — windows, normalisation, reading,
seams, nodata, decoding, georeferencing, writing — is the real pipeline, so an object painted at
known map coordinates must come back at those coordinates.
"""

from __future__ import annotations


import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from scipy import ndimage
from torch import nn
from torchvision.ops import box_iou

import geolearn
from geolearn import RetinaNet
from geolearn.errors import BandMismatchError, OutputExistsError
from geolearn.models.boxes import cthw_to_xyxy, encode, xyxy_to_cthw

CHIP = 64  # tiny_data's chip size; default padding 8 → windows overlap by 16, stride 48
LOGIT = 10.0  # a firing anchor's logit: score sigmoid(10) = 0.99995


class BrightSquareNetwork(nn.Module):
    """Stands in for the RetinaNet network: per chip, every 4-connected region of band 0 above
    ``threshold`` (a normalised value) lights the anchor that fits it best, class 2 when band 1 is
    bright too, with deltas that decode to the region's pixel edges."""

    def __init__(self, anchors: torch.Tensor, chip_size: int, n_classes: int, threshold: float) -> None:
        super().__init__()
        self.anchors = anchors
        self.anchors_xyxy = cthw_to_xyxy(anchors)
        self.chip_size = chip_size
        self.n_classes = n_classes
        self.threshold = threshold
        self.weight = nn.Parameter(torch.zeros(1))  # a parameter, so the model has a device
        self.crops_seen = 0
        self.sizes_seen: set[tuple[int, int]] = set()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.crops_seen += len(images)
        self.sizes_seen.add(tuple(images.shape[-2:]))
        batch, anchors = len(images), len(self.anchors)
        logits = torch.full((batch, anchors, self.n_classes), -LOGIT)
        deltas = torch.zeros(batch, anchors, 4)
        for i, image in enumerate(images.float().numpy()):
            regions, _ = ndimage.label(image[0] > self.threshold)
            for rows, cols in ndimage.find_objects(regions):
                chip_box = torch.tensor([[cols.start, rows.start, cols.stop, rows.stop]], dtype=torch.float32)
                unit_box = chip_box * 2 / self.chip_size - 1
                best = int(box_iou(unit_box, self.anchors_xyxy).argmax())
                label = 1 if image[1, rows.start, cols.start] > self.threshold else 0
                logits[i, best, label] = LOGIT
                deltas[i, best] = encode(xyxy_to_cthw(unit_box)[0], self.anchors[best])
        return [logits, deltas]


@pytest.fixture
def model(tiny_data) -> RetinaNet:
    detector = RetinaNet(tiny_data, backbone="resnet18", pretrained=False)
    # Raw 128 in band 0, normalised as the model normalises: the stub's line between dark and bright.
    threshold = float(detector.config.normalization.normalize(torch.full((3, 1, 1), 128.0))[0, 0, 0])
    detector.model = BrightSquareNetwork(detector.anchors, CHIP, len(tiny_data.classes) - 1, threshold)
    return detector


def write_raster(path: Path, pixels: np.ndarray, transform, crs: str, nodata=None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                       count=pixels.shape[0], dtype=pixels.dtype, crs=crs, transform=transform,
                       nodata=nodata, tiled=True, blockxsize=32, blockysize=32) as dst:
        dst.write(pixels)
    return path


def dark(height: int, width: int, bands: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 80, (bands, height, width)).astype(np.uint8)


def paint(pixels: np.ndarray, col0: int, row0: int, col1: int, row1: int, tree: bool = False) -> None:
    pixels[0, row0:row1, col0:col1] = 230
    if tree:
        pixels[1, row0:row1, col0:col1] = 230


# (crs, upper-left corner, pixel width, pixel height): two CRSs, and non-square pixels.
GRIDS = {
    "utm33n": ("EPSG:32633", (500000.0, 4000000.0), 0.3, 0.3),
    "web-mercator": ("EPSG:3857", (-8238000.0, 4970000.0), 0.5, 0.5),
    "non-square": ("EPSG:32633", (712000.0, 5400000.0), 0.25, 0.75),
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_an_object_at_known_map_coordinates_is_found_there(model, tmp_path, grid):
    crs, (west, north), xres, yres = GRIDS[grid]
    transform = from_origin(west, north, xres, yres)
    # The object, in map coordinates: 4.5 m east and 27 m south of the corner, 20 × 10 pixels.
    xmin, ymax = west + 150 * xres, north - 90 * yres
    xmax, ymin = xmin + 20 * xres, ymax - 10 * yres
    pixels = dark(150, 200)
    # Its pixels, found from the map coordinates by hand: column (x - west) / xres, row (north - y) / yres.
    paint(pixels, round((xmin - west) / xres), round((north - ymax) / yres),
          round((xmax - west) / xres), round((north - ymin) / yres))
    path = write_raster(tmp_path / f"{grid}.tif", pixels, transform, crs)
    found = model.detect_objects(path, progress=False)
    assert len(found) == 1
    assert found.crs == rasterio.crs.CRS.from_string(crs)
    assert found["Class"].tolist() == ["pool"]
    bounds = found.geometry.iloc[0].bounds
    # Within a hundredth of a pixel (the criterion is one pixel; float32 decoding is far better).
    assert bounds == pytest.approx((xmin, ymin, xmax, ymax), abs=0.01 * min(xres, yres))
    assert found.geometry.iloc[0].area == pytest.approx(20 * xres * 10 * yres, rel=1e-4)


def test_test_time_augmentation_finds_an_oblong_object_at_its_map_coordinates(model, tmp_path):
    """Each window runs in 8 orientations and the boxes come back in the window's frame: a 20 × 6
    pixel object on non-square pixels is found where it is, once, not turned."""
    crs, (west, north), xres, yres = GRIDS["non-square"]
    pixels = dark(150, 200)
    paint(pixels, 120, 40, 140, 46)
    path = write_raster(tmp_path / "oblong.tif", pixels, from_origin(west, north, xres, yres), crs)
    model.model.crops_seen = 0
    plain = model.detect_objects(path, progress=False)
    windows = model.model.crops_seen
    found = model.detect_objects(path, progress=False, test_time_augmentation=True)
    assert model.model.crops_seen - windows == 8 * windows
    assert len(found) == len(plain) == 1
    expected = (west + 120 * xres, north - 46 * yres, west + 140 * xres, north - 40 * yres)
    assert found.geometry.iloc[0].bounds == pytest.approx(expected, abs=0.01 * xres)
    assert found["Confidence"].iloc[0] == pytest.approx(plain["Confidence"].iloc[0], abs=1e-3)


def test_an_object_on_a_window_seam_is_reported_once_whole(model, tmp_path):
    transform = from_origin(500000.0, 4000000.0, 0.5, 0.5)
    pixels = dark(112, 160)  # windows at x = 0, 48, 96 and y = 0, 48
    paint(pixels, 42, 10, 54, 20)  # across the seam x = 48..64
    paint(pixels, 90, 44, 101, 55, tree=True)  # across the corner of four windows
    path = write_raster(tmp_path / "seams.tif", pixels, transform, "EPSG:32633")
    found = model.detect_objects(path, progress=False)
    assert model.model.crops_seen == 6
    assert sorted(found["Class"]) == ["pool", "tree"]
    boxes = sorted(geom.bounds for geom in found.geometry)
    expected = sorted([(500000 + 42 * 0.5, 4000000 - 20 * 0.5, 500000 + 54 * 0.5, 4000000 - 10 * 0.5),
                       (500000 + 90 * 0.5, 4000000 - 55 * 0.5, 500000 + 101 * 0.5, 4000000 - 44 * 0.5)])
    for got, want in zip(boxes, expected):
        assert got == pytest.approx(want, abs=0.005)

    # With the pieces cut by the window edges kept and NMS at 0.6, each object also comes as a piece:
    # pool [48, 10, 54, 20] (IoU 60/120 = 0.5 with the whole box), tree [96, 44, 101, 55] (IoU 55/121);
    # the tree's other pieces overlap a kept box by IoU 77/121 and 35/55, above 0.6. The seam filter
    # is what makes each object once.
    cut = model.detect_objects(path, progress=False, exclude_pad_detections=False, nms_overlap=0.6)
    assert len(cut) == 4


def test_nodata_produces_nothing_and_costs_no_inference(model, tmp_path):
    transform = from_origin(500000.0, 4000000.0, 0.5, 0.5)
    pixels = dark(112, 208)  # windows at x = 0, 48, 96, 144 and y = 0, 48: eight windows
    paint(pixels, 120, 20, 130, 30)
    pixels[:, :, :70] = 255  # nodata, and bright: were it fed as it is, it would be one big object
    path = write_raster(tmp_path / "nodata.tif", pixels, transform, "EPSG:32633", nodata=255)
    found = model.detect_objects(path, progress=False)
    assert model.model.crops_seen == 6  # the two windows at x = 0 (columns 0..63) are all nodata
    assert len(found) == 1
    assert found.geometry.iloc[0].bounds == pytest.approx((500060.0, 3999985.0, 500065.0, 3999990.0), abs=0.005)


def test_the_geopackage_opens_with_the_raster_crs_and_the_fields(model, tmp_path):
    transform = from_origin(-8238000.0, 4970000.0, 0.5, 0.5)
    pixels = dark(100, 100)
    paint(pixels, 10, 10, 30, 25)
    paint(pixels, 60, 70, 75, 90, tree=True)
    path = write_raster(tmp_path / "scene.tif", pixels, transform, "EPSG:3857")
    out = tmp_path / "out" / "detections.gpkg"
    frame = model.detect_objects(path, out, progress=False)
    info = pyogrio.read_info(out)
    assert info["driver"] == "GPKG" and info["geometry_type"] == "Polygon" and info["features"] == 2
    assert list(info["fields"]) == ["Class", "Confidence"]
    assert rasterio.crs.CRS.from_user_input(info["crs"]) == rasterio.crs.CRS.from_epsg(3857)
    back = gpd.read_file(out)
    assert back.crs.to_epsg() == 3857
    assert sorted(back["Class"]) == ["pool", "tree"]
    expected_confidence = 100 * torch.sigmoid(torch.tensor(LOGIT)).item()
    assert back["Confidence"].tolist() == pytest.approx([expected_confidence] * 2, abs=1e-3)
    assert back.geometry.iloc[0].equals_exact(frame.geometry.iloc[0], 1e-6)


def test_an_existing_output_is_refused_before_any_inference(model, tmp_path):
    path = write_raster(tmp_path / "scene.tif", dark(64, 64), from_origin(0, 64, 1, 1), "EPSG:32633")
    out = tmp_path / "taken.geojson"
    out.write_text("the user's file")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        model.detect_objects(path, out, progress=False)
    assert model.model.crops_seen == 0 and out.read_text() == "the user's file"
    model.detect_objects(path, out, progress=False, overwrite=True)
    assert pyogrio.read_info(out)["driver"] == "GeoJSON"


def test_band_mismatch_and_band_selection(model, tmp_path):
    transform = from_origin(500000.0, 4000000.0, 1.0, 1.0)
    two = write_raster(tmp_path / "two.tif", dark(64, 64, bands=2), transform, "EPSG:32633")
    with pytest.raises(BandMismatchError, match=r"two\.tif: its 2 bands do not fit a model that takes 3 bands"):
        model.detect_objects(two, progress=False)
    pixels = dark(64, 64, bands=4)
    paint(pixels, 5, 5, 15, 15)
    four = write_raster(tmp_path / "four.tif", pixels[[3, 0, 1, 2]], transform, "EPSG:32633")
    with pytest.raises(BandMismatchError, match="4 bands"):
        model.detect_objects(four, progress=False)
    found = model.detect_objects(four, bands=[1, 2, 3], progress=False)
    assert found.geometry.iloc[0].bounds == pytest.approx((500005.0, 3999985.0, 500015.0, 3999995.0), abs=0.005)


def test_arguments_mode_and_memory_format(model, tmp_path):
    path = write_raster(tmp_path / "scene.tif", dark(64, 64), from_origin(0, 64, 1, 1), "EPSG:32633")
    with pytest.raises(ValueError, match=r"padding=32.*\[0, 31\]"):
        model.detect_objects(path, padding=32, progress=False)
    with pytest.raises(ValueError, match="suffix"):
        model.detect_objects(path, tmp_path / "out.txt", progress=False)
    model.model.train()
    empty = model.detect_objects(path, padding=0, progress=True)
    assert model.model.training
    assert len(empty) == 0 and list(empty.columns) == ["Class", "Confidence", "geometry"]
    assert empty.crs.to_epsg() == 32633


def test_a_model_trained_on_enlarged_chips_sees_the_raster_enlarged_alike(model, tmp_path):
    # Trained with resize_to: chips twice their exported side, so objects twice as large. Windows
    # of 32 raster pixels are enlarged to the network's 64; padding 8 network px = 4 raster px.
    model._config = model.config.replace(zoom=2.0)
    west, north = 500000.0, 4000000.0
    pixels = dark(60, 80)
    paint(pixels, 20, 10, 30, 16)  # 10 × 6 px; enlarged bilinearly, 128 is crossed at the same edges
    path = write_raster(tmp_path / "zoomed.tif", pixels, from_origin(west, north, 0.5, 0.5), "EPSG:32633")
    found = model.detect_objects(path, progress=False)
    assert model.model.sizes_seen == {(64, 64)}
    assert model.model.crops_seen == 9  # columns 0, 24, 48 and rows 0, 24, 28 (the last flush with the edge)
    assert len(found) == 1
    expected = (west + 10.0, north - 8.0, west + 15.0, north - 5.0)  # columns 20..30, rows 10..16 at 0.5 m
    assert found.geometry.iloc[0].bounds == pytest.approx(expected, abs=0.005)
    # predict enlarges the image alike and returns boxes in its pixels: [xmin, ymin, width, height]
    boxes, labels, _ = model.predict(pixels.transpose(1, 2, 0))
    assert labels == ["pool"] and boxes[0] == pytest.approx([20.0, 10.0, 10.0, 6.0], abs=1e-3)


def test_with_the_real_network(tiny_data, tmp_path):
    detector = RetinaNet(tiny_data, backbone="resnet18", pretrained=False)
    pixels = dark(100, 120)
    paint(pixels, 10, 10, 30, 30)
    path = write_raster(tmp_path / "scene.tif", pixels, from_origin(500000.0, 4000000.0, 0.5, 0.5), "EPSG:32633")
    detector.model.train()
    found = detector.detect_objects(path, threshold=0.0, progress=False)  # random weights: every box counts
    assert detector.model.training
    assert all(p.is_contiguous() for p in detector.model.parameters())  # memory format restored
    assert len(found) > 0 and found.crs.to_epsg() == 32633
    west, south, east, north = found.total_bounds
    assert west >= 500000.0 and east <= 500060.0 and south >= 3999950.0 and north <= 4000000.0
    assert found["Confidence"].is_monotonic_decreasing
    assert set(found["Class"]) <= {"pool", "tree"}


def test_prediction_from_a_saved_package_never_imports_fastai(tiny_data, tmp_path):
    # fastai costs about 100 MiB and seconds of start-up that inference (Dask workers above all) never needs.
    folder = RetinaNet(tiny_data, backbone="resnet18", pretrained=False).save(tmp_path / "m", compute_metrics=False)
    raster = write_raster(tmp_path / "scene.tif", dark(100, 120), from_origin(500000.0, 4000000.0, 0.5, 0.5),
                          "EPSG:32633")
    script = f"""
import sys
import numpy as np
import geolearn
from geolearn.learn.retinanet import RetinaNet

model = RetinaNet.from_model({str(folder)!r})
model.detect_objects({str(raster)!r}, progress=True)
model.predict(np.zeros((80, 90, 3), np.uint8))
geolearn.detect_objects({str(raster)!r}, {str(folder)!r})
print(sorted(name for name in sys.modules if name.split(".")[0] == "fastai"))
"""
    root = str(Path(geolearn.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
