"""Streaming windowed reads: the pixels of a direct read, nodata skipped, edges padded, a reader thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rasterio.transform import from_origin
from rasterio.windows import Window

from geolearn.data.raster_windows import WindowReader, read_raster_info, select_bands
from geolearn.errors import BandMismatchError, ImageReadError

TRANSFORM = from_origin(500000.0, 4000000.0, 0.5, 0.5)


def write_raster(path: Path, pixels: np.ndarray, *, nodata=None, tiled: bool = False, mask=None) -> Path:
    """A GeoTIFF of ``[C, H, W]`` pixels: tiled in 16 px blocks, or striped (one row per strip)."""
    profile = dict(driver="GTiff", width=pixels.shape[2], height=pixels.shape[1], count=pixels.shape[0],
                   dtype=pixels.dtype, crs="EPSG:32633", transform=TRANSFORM, nodata=nodata)
    profile.update(tiled=True, blockxsize=16, blockysize=16) if tiled else profile.update(tiled=False, blockysize=1)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)
    return path


def random_pixels(bands: int, height: int, width: int, seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    high = 250 if dtype == "uint8" else 60000
    return np.random.default_rng(seed).integers(1, high, (bands, height, width)).astype(dtype)


def direct(path: Path, col: int, row: int, size: int, bands=None) -> np.ndarray:
    """The window read straight from the file: the part on the raster, zeros past it."""
    with rasterio.open(path) as src:
        out = np.zeros((len(bands) if bands else src.count, size, size), dtype=np.int64)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + size, src.width), min(row + size, src.height)
        part = src.read([b + 1 for b in bands] if bands else None, window=Window(c0, r0, c1 - c0, r1 - r0))
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = part
    return out


def read_all(reader: WindowReader) -> list:
    return list(reader)


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
def test_batches_hold_the_pixels_of_a_direct_read(tmp_path, tiled):
    path = write_raster(tmp_path / "r.tif", random_pixels(3, 50, 70), tiled=tiled)
    windows = [(0, 0, 24), (20, 0, 24), (46, 0, 24), (0, 26, 24), (20, 26, 24), (46, 26, 24), (13, 7, 24)]
    reader = WindowReader(path, windows, batch_size=3)
    batches = read_all(reader)
    assert [len(b.window_index) for b in batches] == [3, 3, 1]
    assert torch.cat([b.window_index for b in batches]).tolist() == list(range(7))
    assert [b.windows_done for b in batches] == [3, 6, 7]
    for batch in batches:
        assert batch.pixels.shape[1:] == (3, 24, 24) and batch.pixels.dtype == torch.uint8
        assert batch.valid.all()
        for index, pixels in zip(batch.window_index.tolist(), batch.pixels):
            assert np.array_equal(pixels.numpy(), direct(path, *windows[index]))
    assert reader.windows_read == 7 and reader.windows_skipped == 0 and len(reader) == 7


def test_windows_past_the_edge_are_zero_and_invalid_there(tmp_path):
    path = write_raster(tmp_path / "r.tif", random_pixels(2, 30, 40), tiled=True)
    windows = [(30, 20, 16), (-4, -6, 16)]
    (batch,) = read_all(WindowReader(path, windows, batch_size=4))
    for pixels, valid, (col, row, size) in zip(batch.pixels, batch.valid, windows):
        assert np.array_equal(pixels.numpy(), direct(path, col, row, size))
        expected = np.zeros((size, size), dtype=bool)
        expected[max(-row, 0) : 30 - row, max(-col, 0) : 40 - col] = True
        assert np.array_equal(valid.numpy(), expected)
    assert batch.valid[0].sum() == 10 * 10  # columns 30..39, rows 20..29
    assert batch.valid[1].sum() == 12 * 10  # columns 0..11, rows 0..9


def test_raster_smaller_than_the_window(tmp_path):
    pixels = random_pixels(3, 20, 30)
    path = write_raster(tmp_path / "small.tif", pixels)
    (batch,) = read_all(WindowReader(path, [(0, 0, 64)]))
    assert batch.pixels.shape == (1, 3, 64, 64)
    assert np.array_equal(batch.pixels[0, :, :20, :30].numpy(), pixels)
    assert (batch.pixels[0, :, 20:] == 0).all() and (batch.pixels[0, :, :, 30:] == 0).all()
    assert batch.valid[0, :20, :30].all() and batch.valid[0].sum() == 20 * 30


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
def test_nodata_windows_are_skipped_and_nodata_pixels_zeroed(tmp_path, tiled):
    pixels = random_pixels(3, 64, 64, dtype="uint8")
    pixels[:, :, 32:] = 255  # the right half is nodata — bright, so that leaving it would be seen
    pixels[:, 40:, :8] = 255  # and a patch on the left
    path = write_raster(tmp_path / "r.tif", pixels, nodata=255, tiled=tiled)
    windows = [(0, 0, 16), (32, 0, 16), (48, 48, 16), (24, 32, 16), (0, 32, 16), (40, 56, 16)]
    reader = WindowReader(path, windows, batch_size=2)
    batches = read_all(reader)
    returned = torch.cat([b.window_index for b in batches]).tolist()
    assert returned == [0, 3, 4]  # windows 1, 2 and 5 lie wholly in nodata (5 reaches past the raster too)
    assert reader.windows_skipped == 3 and reader.windows_read == 3
    with rasterio.open(path) as src:
        for batch in batches:
            for index, batch_pixels, valid in zip(batch.window_index.tolist(), batch.pixels, batch.valid):
                col, row, size = windows[index]
                mask = src.dataset_mask(window=Window(col, row, size, size)) > 0
                assert np.array_equal(valid.numpy(), mask)
                raw = src.read(window=Window(col, row, size, size))
                assert np.array_equal(batch_pixels.numpy(), np.where(mask, raw, 0))
    window_3 = batches[0].pixels[1]  # (24, 32): columns 32.. are nodata
    assert (window_3[:, :, 8:] == 0).all() and (window_3[:, :, :8] > 0).all()


def test_an_internal_mask_band_marks_invalid_pixels(tmp_path):
    pixels = random_pixels(3, 32, 32)
    mask = np.ones((32, 32), dtype=bool)
    mask[:16] = False
    path = write_raster(tmp_path / "masked.tif", pixels, tiled=True, mask=mask)
    reader = WindowReader(path, [(0, 0, 16), (0, 16, 16), (8, 8, 16)])
    batches = read_all(reader)
    assert torch.cat([b.window_index for b in batches]).tolist() == [1, 2]
    (batch,) = batches
    assert batch.valid[0].all()
    assert not batch.valid[1, :8].any() and batch.valid[1, 8:].all()
    assert (batch.pixels[1, :, :8] == 0).all()
    assert np.array_equal(batch.pixels[1, :, 8:].numpy(), pixels[:, 16:24, 8:24])


def test_float_raster_with_nan_nodata_and_uint16(tmp_path):
    values = np.random.default_rng(3).random((1, 20, 20)).astype("float32")
    values[0, :5] = np.nan
    path = write_raster(tmp_path / "f.tif", values, nodata=float("nan"))
    (batch,) = read_all(WindowReader(path, [(0, 0, 20)]))
    assert batch.pixels.dtype == torch.float32 and not batch.pixels.isnan().any()
    assert not batch.valid[0, :5].any() and batch.valid[0, 5:].all()
    assert (batch.pixels[0, 0, :5] == 0).all()

    wide = random_pixels(2, 20, 20, dtype="uint16")
    path16 = write_raster(tmp_path / "u16.tif", wide)
    (batch16,) = read_all(WindowReader(path16, [(0, 0, 20)]))
    assert batch16.pixels.dtype == torch.int32  # torch has no arithmetic for uint16
    assert np.array_equal(batch16.pixels[0].numpy(), wide.astype(np.int32))


def test_band_selection_in_the_order_asked(tmp_path):
    pixels = random_pixels(4, 24, 24)
    path = write_raster(tmp_path / "r.tif", pixels)
    (batch,) = read_all(WindowReader(path, [(4, 4, 16)], bands=[3, 0]))
    assert np.array_equal(batch.pixels[0].numpy(), pixels[[3, 0], 4:20, 4:20])


def test_band_mismatch_names_the_file_the_counts_and_the_fix(tmp_path):
    path = write_raster(tmp_path / "four.tif", random_pixels(4, 16, 16))
    with pytest.raises(BandMismatchError, match=r"four\.tif has 4 bands.*\[5\].*0-based"):
        WindowReader(path, [(0, 0, 16)], bands=[0, 5])
    with pytest.raises(BandMismatchError, match=r"four\.tif: its 4 bands do not fit a model that takes 3 bands.*bands="):
        WindowReader(path, [(0, 0, 16)], n_bands=3)
    assert select_bands(read_raster_info(path), [2, 1, 0], n_bands=3) == [2, 1, 0]
    with pytest.raises(BandMismatchError, match="no band"):
        select_bands(read_raster_info(path), [])


def test_missing_file_is_an_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="nothing.tif"):
        WindowReader(tmp_path / "nothing.tif", [(0, 0, 16)])


def test_cog_and_vrt_inputs(tmp_path):
    pixels = random_pixels(3, 40, 40, seed=5)
    source = write_raster(tmp_path / "source.tif", pixels, tiled=True)
    cog = tmp_path / "cog.tif"
    vrt = tmp_path / "mosaic.vrt"
    rasterio.shutil.copy(source, cog, driver="COG", blocksize=16)
    rasterio.shutil.copy(source, vrt, driver="VRT")
    for path in (cog, vrt):
        (batch,) = read_all(WindowReader(path, [(5, 7, 32), (20, 20, 32)]))
        assert np.array_equal(batch.pixels[0].numpy(), pixels[:, 7:39, 5:37])
        assert np.array_equal(batch.pixels[1, :, :20, :20].numpy(), pixels[:, 20:, 20:])


def test_reads_are_windows_never_the_whole_raster(tmp_path, monkeypatch):
    path = write_raster(tmp_path / "r.tif", random_pixels(3, 64, 64), tiled=True, nodata=0)
    seen = []
    real_read, real_masks = DatasetReader.read, DatasetReader.read_masks

    def read(self, indexes=None, **kwargs):
        seen.append(kwargs.get("window"))
        return real_read(self, indexes, **kwargs)

    def read_masks(self, indexes=None, **kwargs):
        seen.append(kwargs.get("window"))
        return real_masks(self, indexes, **kwargs)

    monkeypatch.setattr(DatasetReader, "read", read)
    monkeypatch.setattr(DatasetReader, "read_masks", read_masks)
    read_all(WindowReader(path, [(0, 0, 16), (48, 48, 16), (56, 56, 16)]))
    assert seen and all(w is not None and w.width <= 16 and w.height <= 16 for w in seen)


def test_errors_in_the_reader_thread_reach_the_consumer(tmp_path, monkeypatch):
    path = write_raster(tmp_path / "r.tif", random_pixels(1, 64, 64), tiled=True)
    real_read = DatasetReader.read
    calls = []

    def failing_read(self, indexes=None, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise RasterioIOError("tile 3: TIFFReadEncodedTile failed")
        return real_read(self, indexes, **kwargs)

    monkeypatch.setattr(DatasetReader, "read", failing_read)
    windows = [(x, 0, 16) for x in range(0, 64, 16)]
    reader = WindowReader(path, windows, batch_size=1)
    batches = []
    with pytest.raises(ImageReadError, match=r"r\.tif: reading failed.*TIFFReadEncodedTile"):
        for batch in reader:
            batches.append(batch)
    assert len(batches) == 2

    def broken(self, indexes=None, **kwargs):
        raise KeyError("not an I/O error")

    monkeypatch.setattr(DatasetReader, "read", broken)
    with pytest.raises(KeyError, match="not an I/O error"):
        read_all(WindowReader(path, windows))


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "geolearn-window-reader"]


def test_the_thread_stops_when_the_consumer_stops_early(tmp_path):
    path = write_raster(tmp_path / "r.tif", random_pixels(1, 128, 128), tiled=True)
    windows = [(x, y, 16) for y in range(0, 128, 8) for x in range(0, 128, 8)]
    reader = WindowReader(path, windows, batch_size=1, prefetch=1)
    iterator = iter(reader)
    first = next(iterator)
    assert first.window_index.tolist() == [0]
    assert len(reader_threads()) == 1  # reading ahead, blocked on the full queue
    iterator.close()  # what a for loop's break does once the generator is dropped
    assert reader_threads() == []
    assert reader.windows_read == 1


def test_no_windows(tmp_path):
    path = write_raster(tmp_path / "r.tif", random_pixels(1, 16, 16))
    reader = WindowReader(path, [])
    assert read_all(reader) == [] and reader.windows_skipped == 0
