"""Detection over a raster on disk, with a stub detector that finds bright squares painted at known pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from scipy import ndimage

from geolearn.errors import BandMismatchError
from geolearn.inference.raster import RasterDetections, detect_raster
from geolearn.inference.runner import detect_windows
from geolearn.models.postprocess import Detections

TRANSFORM = from_origin(400000.0, 5000000.0, 0.25, 0.25)
CHIP = 64
OVERLAP = 16  # stride 48


def write_raster(path: Path, pixels: np.ndarray, *, nodata=None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                       count=pixels.shape[0], dtype=pixels.dtype, crs="EPSG:32633", transform=TRANSFORM,
                       nodata=nodata, tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(pixels)
    return path


def scene(height: int, width: int, boxes, seed: int = 0) -> np.ndarray:
    """A dark noisy 3-band uint8 image with each xyxy pixel box painted bright (class 2 boxes also in band 1)."""
    pixels = np.random.default_rng(seed).integers(0, 60, (3, height, width)).astype(np.uint8)
    for x1, y1, x2, y2, *label in boxes:
        pixels[0, y1:y2, x1:x2] = 200
        if label and label[0] == 2:
            pixels[1, y1:y2, x1:x2] = 200
    return pixels


def to_input(raw: torch.Tensor) -> torch.Tensor:
    return raw.float() / 255


class BrightSquares:
    """A stub detector: every 4-connected bright region of band 0 is an object, its box the region's
    pixel edges in chip pixels (cut at the chip edge like a real detector's); class 2 where band 1 is
    bright too. Counts the crops it is given."""

    def __init__(self) -> None:
        self.crops_seen = 0

    def __call__(self, crops: torch.Tensor) -> list[Detections]:
        assert crops.is_contiguous(memory_format=torch.channels_last) and crops.dtype == torch.float32
        self.crops_seen += len(crops)
        results = []
        for crop in crops.numpy():
            regions, _ = ndimage.label(crop[0] > 0.5)
            boxes, labels = [], []
            for rows, cols in ndimage.find_objects(regions):
                boxes.append([cols.start, rows.start, cols.stop, rows.stop])
                labels.append(2 if crop[1, rows.start, cols.start] > 0.5 else 1)
            results.append(Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                      torch.tensor(labels, dtype=torch.int64), torch.full((len(boxes),), 0.9)))
        return results


class FixedBox:
    """A stub detector that reports the same chip box in every crop: a box wherever it is asked."""

    def __init__(self, chip_box) -> None:
        self.chip_box = torch.tensor([chip_box], dtype=torch.float32)
        self.crops_seen = 0

    def __call__(self, crops: torch.Tensor) -> list[Detections]:
        self.crops_seen += len(crops)
        return [Detections(self.chip_box, torch.tensor([1]), torch.tensor([0.8])) for _ in crops]


def run(path: Path, detector, **kwargs) -> RasterDetections:
    options = dict(chip_size=CHIP, overlap=OVERLAP, to_input=to_input, batch_size=4)
    options.update(kwargs)
    return detect_raster(detector, path, **options)


def rows(boxes: torch.Tensor) -> list[list[float]]:
    return sorted(boxes.tolist())


# 160 × 112 px: windows at x = 0, 48, 96 and y = 0, 48 (chip 64, stride 48), no remainder.
SEAM_OBJECTS = [
    (42, 10, 54, 20),  # across the seam x = 48..64 (window 0 sees it whole, window 1 cut)
    (90, 44, 101, 55),  # across a corner of four windows
    (150, 100, 160, 112),  # on the raster's right and bottom border
    (5, 70, 20, 80, 2),  # class 2, inside one window column
]


def test_objects_on_seams_corners_and_the_border_are_found_once_and_whole(tmp_path):
    path = write_raster(tmp_path / "r.tif", scene(112, 160, SEAM_OBJECTS))
    detector = BrightSquares()
    found = run(path, detector)
    assert rows(found.raster_boxes) == rows(torch.tensor([b[:4] for b in SEAM_OBJECTS], dtype=torch.float32))
    by_box = dict(zip(map(tuple, found.raster_boxes.tolist()), found.labels.tolist()))
    assert by_box[(5.0, 70.0, 20.0, 80.0)] == 2 and by_box[(42.0, 10.0, 54.0, 20.0)] == 1
    assert found.raster_boxes.dtype == torch.float32
    assert found.windows_run == 6 and found.windows_skipped == 0 and detector.crops_seen == 6
    assert (found.width, found.height) == (160, 112)
    assert found.transform == TRANSFORM and found.crs.to_epsg() == 32633


def test_without_the_seam_filter_the_cut_piece_is_reported_too(tmp_path):
    path = write_raster(tmp_path / "r.tif", scene(112, 160, SEAM_OBJECTS[:1]))
    found = run(path, BrightSquares(), edge_tolerance=None)
    # window x = 48 sees columns 48..54 only: IoU 60/120 = 0.5 with the whole box, so NMS at 0.1
    # suppresses the piece and NMS at 0.6 keeps it
    assert rows(found.raster_boxes) == [[42.0, 10.0, 54.0, 20.0]]
    found = run(path, BrightSquares(), edge_tolerance=None, nms_overlap=0.6)
    assert rows(found.raster_boxes) == [[42.0, 10.0, 54.0, 20.0], [48.0, 10.0, 54.0, 20.0]]


@pytest.mark.parametrize("merge", ["nms", "greedy"])
def test_same_detections_as_the_in_memory_path(tmp_path, merge):
    rng = np.random.default_rng(7)
    corners = rng.integers(0, 190, (40, 2))
    sizes = rng.integers(3, 40, (40, 2))
    boxes = [(int(x), int(y), int(min(x + w, 200)), int(min(y + h, 170))) for (x, y), (w, h) in zip(corners, sizes)]
    pixels = scene(170, 200, boxes, seed=3)
    path = write_raster(tmp_path / "r.tif", pixels)
    on_disk = run(path, BrightSquares(), merge=merge, batch_size=3)
    in_memory = detect_windows(BrightSquares(), to_input(torch.from_numpy(pixels)), CHIP, overlap=OVERLAP,
                               batch_size=5, merge=merge)
    assert len(on_disk.raster_boxes) > 10
    assert torch.equal(on_disk.raster_boxes, in_memory.image_boxes)
    assert torch.equal(on_disk.labels, in_memory.labels) and torch.equal(on_disk.scores, in_memory.scores)


def nodata_scene() -> np.ndarray:
    """208 × 112 px (windows at x = 0, 48, 96, 144; y = 0, 48); columns 0..70 nodata (value 250, bright)."""
    pixels = scene(112, 208, [(100, 20, 110, 30), (60, 80, 80, 95)])
    pixels[:, :, :70] = 250
    return pixels


def test_nodata_areas_produce_nothing_and_cost_no_inference(tmp_path):
    path = write_raster(tmp_path / "r.tif", nodata_scene(), nodata=250)
    detector = BrightSquares()
    found = run(path, detector)
    # Windows at x = 0 (columns 0..64) lie wholly in nodata: two of eight, never run. The bright
    # nodata would be one huge object in every other window were it fed as it is. The object at
    # columns 60..80 is half in nodata: only its valid part, columns 70..80, is seen.
    assert found.windows_skipped == 2 and found.windows_run == 6 and detector.crops_seen == 6
    assert rows(found.raster_boxes) == [[70.0, 80.0, 80.0, 95.0], [100.0, 20.0, 110.0, 30.0]]


def test_boxes_centred_on_nodata_are_dropped(tmp_path):
    path = write_raster(tmp_path / "r.tif", nodata_scene(), nodata=250)
    detector = FixedBox([20.0, 20.0, 40.0, 40.0])  # centre at chip pixel (30, 30)
    found = run(path, detector)
    with rasterio.open(path) as src:
        valid = src.dataset_mask() > 0
        expected = []
        for y0 in (0, 48):
            for x0 in (0, 48, 96, 144):
                if valid[y0 + 30, x0 + 30]:
                    expected.append([x0 + 20.0, y0 + 20.0, x0 + 40.0, y0 + 40.0])
    assert len(expected) == 6  # x0 = 48: centre column 78, valid; x0 = 0: invalid
    assert rows(found.raster_boxes) == sorted(expected)
    assert detector.crops_seen == 6


def test_everything_nodata_gives_no_detections_and_runs_nothing(tmp_path):
    pixels = np.full((3, 80, 90), 250, dtype=np.uint8)
    path = write_raster(tmp_path / "r.tif", pixels, nodata=250)
    detector = BrightSquares()
    found = run(path, detector)
    assert found.raster_boxes.shape == (0, 4) and found.labels.shape == (0,) and found.scores.shape == (0,)
    assert detector.crops_seen == 0 and found.windows_run == 0 and found.windows_skipped == 4


def test_raster_smaller_than_the_chip(tmp_path):
    objects = [(30, 5, 40, 15), (2, 20, 9, 30)]  # the first touches the right border
    path = write_raster(tmp_path / "small.tif", scene(30, 40, objects))
    detector = BrightSquares()
    found = run(path, detector)
    assert rows(found.raster_boxes) == rows(torch.tensor(objects, dtype=torch.float32))
    assert found.windows_run == 1 and detector.crops_seen == 1 and (found.width, found.height) == (40, 30)


def test_boxes_past_the_raster_edge_are_clipped(tmp_path):
    path = write_raster(tmp_path / "small.tif", scene(30, 40, []))
    found = run(path, FixedBox([30.0, 25.0, 50.0, 45.0]))  # reaches past column 40 and row 30
    assert found.raster_boxes.tolist() == [[30.0, 25.0, 40.0, 30.0]]
    found = run(path, FixedBox([45.0, 5.0, 60.0, 20.0]))  # wholly past the raster: centre invalid
    assert len(found.raster_boxes) == 0


def test_band_selection_and_mismatch(tmp_path):
    pixels = scene(64, 64, [(10, 10, 20, 20)])
    four = np.concatenate([pixels[[1, 2]], pixels[[0]], pixels[[2]]])  # band 2 holds the bright band
    path = write_raster(tmp_path / "four.tif", four)
    found = run(path, BrightSquares(), bands=[2, 0, 1], n_bands=3)
    assert found.raster_boxes.tolist() == [[10.0, 10.0, 20.0, 20.0]]
    with pytest.raises(BandMismatchError, match=r"four\.tif: its 4 bands do not fit a model that takes 3 bands"):
        run(path, BrightSquares(), n_bands=3)


def test_progress_bar_where_watched_and_bad_arguments(tmp_path, capsys, monkeypatch):
    import geolearn.inference.raster as raster_detection

    path = write_raster(tmp_path / "r.tif", scene(112, 160, SEAM_OBJECTS))
    found = run(path, BrightSquares(), progress=True)
    assert len(found.raster_boxes) == 4
    assert capsys.readouterr().out == ""  # stdout is not a terminal: no bar
    monkeypatch.setattr(raster_detection, "watched", lambda: True)  # a notebook or a terminal
    assert len(run(path, BrightSquares(), progress=True).raster_boxes) == 4
    assert "100.00% [" in capsys.readouterr().out  # fastprogress's bar, run to its end
    with pytest.raises(ValueError, match="merge='union'"):
        run(path, BrightSquares(), merge="union")
    with pytest.raises(ValueError, match="batch_size=0"):
        run(path, BrightSquares(), batch_size=0)
    with pytest.raises(ValueError, match="overlap=64"):
        run(path, BrightSquares(), overlap=64)
