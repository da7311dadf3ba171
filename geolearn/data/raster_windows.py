"""Streaming windowed reads of a raster of any size, ahead of inference.

Detection over a whole raster needs its pixels one window at a time, never all at once. A
:class:`WindowReader` reads square windows — in the order given, in batches — in a background
thread while the caller runs the network on the previous batch: GDAL releases the GIL while it
reads and decompresses, so disk and CPU work at the same time. A bounded queue (``prefetch``
batches) keeps memory flat whatever the raster's size: at most ``prefetch + 2`` batches exist at
once (queued, being filled, being used), plus GDAL's block cache, capped at two strips of windows
while reading (windows in row-major order, as :func:`~geolearn.data.tiling.axis_offsets` plans
them, decode each block once with that) unless ``GDAL_CACHEMAX`` is set.

Windows may reach past the raster (a raster smaller than a chip, or the last row of windows):
the part outside is zero and invalid. Validity comes from the dataset's masks (nodata values,
an internal or sidecar mask, an alpha band) via ``src.read_masks``; a pixel is valid when any of
the selected bands is. A window with no valid pixel is skipped before its pixels are read — it
is never returned, so it costs no inference — and counted. In the windows that are returned,
each band's invalid pixels are set to zero (nodata values such as -9999 or NaN never reach the
network).

The dataset is opened inside the reader thread (a rasterio dataset must not be shared between
threads); an error there is raised again in the caller, and the thread stops when the caller
stops iterating early. Tiled and striped GeoTIFFs, COGs and VRTs all work, as rasterio reads
them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import rasterio
import rasterio.env
import torch
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rasterio.windows import Window
from shapely.geometry import Polygon
from torch import Tensor

from geolearn.data.georef import pixel_footprint
from geolearn.data.images import open_image
from geolearn.errors import BandMismatchError, ImageReadError

__all__ = ["RasterInfo", "read_raster_info", "select_bands", "WindowBatch", "WindowReader"]

logger = logging.getLogger(__name__)

# numpy dtypes torch has no arithmetic for → the smallest signed type holding their values.
_TORCH_FRIENDLY = {np.dtype("uint16"): np.dtype("int32"), np.dtype("uint32"): np.dtype("int64")}
# Seconds between checks of the stop flag while the queue is full or empty.
_POLL_S = 0.1


@dataclass(frozen=True)
class RasterInfo:
    """What a raster's header says.

    Attributes:
        path: the raster file.
        width: width in pixels.
        height: height in pixels.
        count: number of bands.
        dtype: numpy dtype name of the bands (the first band's).
        transform: affine, raster pixels (edges) → map coordinates.
        crs: the coordinate reference system, or None.
        nodata: the nodata value, or None.

    Examples:
        See :func:`read_raster_info`, which returns it.
    """

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    transform: Affine
    crs: Any
    nodata: float | None

    @property
    def footprint(self) -> Polygon:
        """The raster's extent in its own CRS: the affine applied to the pixel grid's four corners
        (exact for rotated rasters too)."""
        return pixel_footprint(self.transform, self.width, self.height)


def read_raster_info(path: str | Path) -> RasterInfo:
    """Reads a raster's header (no pixels).

    Args:
        path: the raster (anything rasterio opens).

    Returns:
        Its size, bands, dtype, affine transform, CRS and nodata value.

    Raises:
        ImageReadError: the file cannot be opened as a raster.

    Examples:
        >>> import tempfile
        >>> from geolearn.sample import make_scene
        >>> info = read_raster_info(make_scene(tempfile.mkdtemp(), size=256).raster)
        >>> info.width, info.height, info.count, info.dtype, info.crs.to_epsg(), info.nodata
        (256, 256, 3, 'uint8', 32633, 0.0)
        >>> info.transform.a, info.transform.e  # pixel size in metres; rows run south
        (0.3, -0.3)
        >>> info.footprint.bounds == (info.transform.c, info.transform.f - 0.3 * 256, info.transform.c + 0.3 * 256,
        ...                           info.transform.f)
        True
    """
    path = Path(path)
    with open_image(path, fix="Give a GeoTIFF, VRT or another file GDAL reads.") as src:
        return RasterInfo(path, src.width, src.height, src.count, src.dtypes[0], src.transform, src.crs, src.nodata)


def user_block_cache() -> bool:
    """Whether the user set GDAL's block cache (``GDAL_CACHEMAX`` in the environment or a ``rasterio.Env``)."""
    return "GDAL_CACHEMAX" in os.environ or (rasterio.env.hasenv() and "GDAL_CACHEMAX" in rasterio.env.getenv())


def bounded_block_cache(src: DatasetReader, window_height: int, n_bands: int, dtype: str) -> rasterio.Env:
    """GDAL's block cache capped to what a row-major sweep of windows needs.

    GDAL keeps every decoded block until its cache (5 % of RAM by default) is full, so a sweep over
    a large raster would end up holding most of it. Row-major windows revisit only the blocks of
    the current and the previous row of windows: a cache of two such strips (bands and mask, at
    least 16 MiB) still decodes each block once, and memory stops growing with the raster. The
    export and :class:`WindowReader` both sweep so; callers skip this when :func:`user_block_cache`.

    Args:
        src: the open raster.
        window_height: rows of one window, pixels.
        n_bands: bands read.
        dtype: their numpy dtype name.

    Returns:
        A ``rasterio.Env`` to read inside.

    Examples:
        >>> import tempfile
        >>> from geolearn.sample import make_scene
        >>> with rasterio.open(make_scene(tempfile.mkdtemp(), size=256).raster) as src:
        ...     env = bounded_block_cache(src, 64, 3, "uint8")
        >>> env.options["GDAL_CACHEMAX"] == 16 * 2**20  # a small raster: the 16 MiB floor
        True
    """
    block_height = src.block_shapes[0][0] if src.block_shapes else 1
    bytes_per_pixel = n_bands * np.dtype(dtype).itemsize + 1  # + 1: the mask
    strip_bytes = (window_height + block_height) * src.width * bytes_per_pixel
    return rasterio.Env(GDAL_CACHEMAX=max(16 * 2**20, 2 * strip_bytes))


def select_bands(info: RasterInfo, bands: Sequence[int] | None, n_bands: int | None = None) -> list[int]:
    """The 0-based bands to read, checked against the raster (and the model).

    Args:
        info: the raster's header (:func:`read_raster_info`).
        bands: 0-based band indices, or None for all bands.
        n_bands: how many bands the consumer (a model) takes; None: any number.

    Returns:
        The 0-based band indices, in reading order.

    Raises:
        BandMismatchError: a band the raster lacks, no band at all, or a band count other than
            ``n_bands``.

    Examples:
        >>> from affine import Affine
        >>> info = RasterInfo(Path("scene.tif"), 256, 256, 4, "uint16", Affine.identity(), None, None)
        >>> select_bands(info, None), select_bands(info, [2, 1, 0], n_bands=3)
        ([0, 1, 2, 3], [2, 1, 0])
        >>> select_bands(info, [4])
        Traceback (most recent call last):
        ...
        geolearn.errors.BandMismatchError: scene.tif has 4 bands (0-based 0..3) but bands=[4] asks for [4]; ...
    """
    chosen = list(range(info.count)) if bands is None else [int(b) for b in bands]
    if not chosen:
        raise BandMismatchError(f"{info.path}: bands=[] selects no band; pass 0-based band indices or None for all.")
    missing = [b for b in chosen if not 0 <= b < info.count]
    if missing:
        raise BandMismatchError(
            f"{info.path} has {info.count} bands (0-based 0..{info.count - 1}) but bands={chosen} asks for "
            f"{missing}; pass 0-based indices of bands the raster has."
        )
    if n_bands is not None and len(chosen) != n_bands:
        how = f"its {info.count} bands" if bands is None else f"bands={chosen}, {len(chosen)} bands,"
        raise BandMismatchError(
            f"{info.path}: {how} do not fit a model that takes {n_bands} bands; pass bands= with the "
            f"{n_bands} 0-based bands the model was trained on, e.g. bands={list(range(min(n_bands, info.count)))}."
        )
    return chosen


class WindowBatch(NamedTuple):
    """A batch of windows read from a raster.

    Attributes:
        window_index: ``Tensor[B]`` int64, the position of each window in the sequence given to
            the reader (skipped windows leave gaps).
        pixels: ``Tensor[B, C, S, S]`` raw pixel values (uint16 read as int32, uint32 as int64 —
            torch has no arithmetic for them), zero where invalid or past the raster.
        valid: ``Tensor[B, S, S]`` bool, True where the pixel lies on the raster and is valid in
            at least one selected band.
        windows_done: how many windows of the sequence have been considered (read or skipped)
            when this batch is complete — for progress bars.

    Examples:
        See :class:`WindowReader`, which yields it.
    """

    window_index: Tensor
    pixels: Tensor
    valid: Tensor
    windows_done: int


class _Failure(NamedTuple):
    error: BaseException


_END = object()


class WindowReader:
    """Reads square windows of a raster in batches, in a background thread, skipping nodata.

    Iterating yields :class:`WindowBatch` es in the order of ``windows``; afterwards
    :attr:`windows_read` and :attr:`windows_skipped` say how many windows were returned and how
    many were skipped for having no valid pixel. Each iteration reads the raster afresh.

    Args:
        path: the raster (anything rasterio opens: GeoTIFF, COG, VRT, ...).
        windows: ``(col_off, row_off, size)`` of each square window in raster pixels (any
            sequence of triples, or an int array ``[N, 3]``), all of one size; windows may
            reach past the raster.
        bands: 0-based bands to read, or None (the default) for all. Keyword only.
        batch_size: windows per batch (the last batch may hold fewer). Default 8.
        prefetch: batches read ahead of the consumer (the queue's bound). Default 2.
        n_bands: band count the consumer requires, checked up front; None (the default): any.

    Attributes:
        info: the raster's header.
        bands: the 0-based bands read.
        windows: ``int64[N, 3]`` the windows, ``(col_off, row_off, size)``.
        windows_read: windows returned by the last (or current) iteration.
        windows_skipped: windows skipped by it for having no valid pixel (or lying wholly
            past the raster).

    Raises:
        ImageReadError: the raster cannot be opened (at construction) or read (while iterating).
        BandMismatchError: ``bands`` do not fit the raster, or their count is not ``n_bands``.
        ValueError: a window that is not a positive-size triple, windows of different sizes,
            ``batch_size`` or ``prefetch`` < 1.

    Examples:
        >>> import tempfile
        >>> from geolearn.sample import make_scene
        >>> raster = make_scene(tempfile.mkdtemp(), size=256).raster
        >>> windows = [(0, 0, 128), (128, 0, 128), (200, 200, 128), (-500, 0, 128)]  # the last misses the raster
        >>> reader = WindowReader(raster, windows, batch_size=2)
        >>> for batch in reader:
        ...     print(batch.window_index.tolist(), tuple(batch.pixels.shape), batch.pixels.dtype, batch.windows_done)
        [0, 1] (2, 3, 128, 128) torch.uint8 2
        [2] (1, 3, 128, 128) torch.uint8 4
        >>> len(reader), reader.windows_read, reader.windows_skipped
        (4, 3, 1)
    """

    def __init__(
        self,
        path: str | Path,
        windows: Sequence[tuple[int, int, int]] | np.ndarray,
        *,
        bands: Sequence[int] | None = None,
        batch_size: int = 8,
        prefetch: int = 2,
        n_bands: int | None = None,
    ) -> None:
        if batch_size < 1 or prefetch < 1:
            raise ValueError(f"batch_size={batch_size}, prefetch={prefetch}: both must be at least 1.")
        self.info = read_raster_info(path)
        self.bands = select_bands(self.info, bands, n_bands)
        table = np.asarray(windows, dtype=np.int64).reshape(-1, 3) if len(windows) else np.zeros((0, 3), np.int64)
        if len(table) and (table[:, 2] < 1).any():
            raise ValueError(f"windows with size {table[table[:, 2] < 1][0, 2]}: every window needs a size >= 1 pixel.")
        if len(table) and len(np.unique(table[:, 2])) > 1:
            raise ValueError(f"window sizes {sorted(set(table[:, 2].tolist()))}: a batch needs windows of one size.")
        self.windows = table
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.windows_read = 0
        self.windows_skipped = 0
        # Read here, in the caller's thread: rasterio's environment is thread-local.
        self._user_cache = user_block_cache()

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of :attr:`WindowBatch.pixels`."""
        dtype = np.dtype(self.info.dtype)
        return _TORCH_FRIENDLY.get(dtype, dtype)

    def __len__(self) -> int:
        """The number of windows (read or skipped)."""
        return len(self.windows)

    def __iter__(self) -> Iterator[WindowBatch]:
        self.windows_read = 0
        self.windows_skipped = 0
        batches: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(batches, stop), name="geolearn-window-reader",
                                  daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = batches.get(timeout=_POLL_S)
                except queue.Empty:
                    if not thread.is_alive() and batches.empty():  # cannot happen unless the thread was killed
                        raise ImageReadError(f"{self.info.path}: the reader thread ended without a result.") from None
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                self.windows_read += len(item.window_index)
                yield item
        finally:
            stop.set()  # the consumer stopped (done, failed or broke off): the thread sees it within _POLL_S
            thread.join()

    # ------------------------------------------------------------------ the reader thread

    def _put(self, batches: queue.Queue, item: object, stop: threading.Event) -> bool:
        """Queues ``item`` unless the consumer stops first; True when queued."""
        while not stop.is_set():
            try:
                batches.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, batches: queue.Queue, stop: threading.Event) -> None:
        """The thread's body: opens the raster, reads the windows, queues batches, then _END."""
        try:
            # Opened here, not with open_image: its warnings.catch_warnings() is not thread-safe.
            with rasterio.open(self.info.path) as src, self._bounded_block_cache(src):
                self._read_all(src, batches, stop)
            self._put(batches, _END, stop)
        except BaseException as err:  # noqa: BLE001 — every error goes to the consumer, who raises it
            if isinstance(err, RasterioIOError):
                err = ImageReadError(f"{self.info.path}: reading failed ({err}); check that the file is complete.")
            self._put(batches, _Failure(err), stop)

    def _bounded_block_cache(self, src: DatasetReader) -> contextlib.AbstractContextManager:
        """:func:`bounded_block_cache` for this reader's windows (the user's GDAL_CACHEMAX read in the caller's thread)."""
        if self._user_cache or not len(self.windows):
            return contextlib.nullcontext()
        return bounded_block_cache(src, int(self.windows[0, 2]), len(self.bands), self.info.dtype)

    def _read_all(self, src: DatasetReader, batches: queue.Queue, stop: threading.Event) -> None:
        indexes = [b + 1 for b in self.bands]
        all_valid = all(MaskFlags.all_valid in src.mask_flag_enums[b] for b in self.bands)
        size = int(self.windows[0, 2]) if len(self.windows) else 0
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []
        for position, (col_off, row_off, _) in enumerate(self.windows.tolist()):
            if stop.is_set():
                return
            # The window's part on the raster, and where that part lies in the window.
            col0, row0 = max(col_off, 0), max(row_off, 0)
            col1, row1 = min(col_off + size, src.width), min(row_off + size, src.height)
            if col1 <= col0 or row1 <= row0:  # wholly past the raster
                self.windows_skipped += 1
                continue
            inner = Window(col0, row0, col1 - col0, row1 - row0)
            into = (slice(row0 - row_off, row1 - row_off), slice(col0 - col_off, col1 - col_off))
            band_valid = None if all_valid else src.read_masks(indexes, window=inner) > 0  # [C, h, w]
            if band_valid is not None and not band_valid.any():
                self.windows_skipped += 1  # all nodata: its pixels are never read
                continue
            block = src.read(indexes, window=inner)
            if band_valid is not None:
                block = np.where(band_valid, block, 0)  # nodata values (-9999, NaN, ...) become 0
            pixels = np.zeros((len(indexes), size, size), dtype=self.dtype)
            pixels[(slice(None), *into)] = block
            valid = np.zeros((size, size), dtype=bool)
            valid[into] = True if band_valid is None else band_valid.any(axis=0)
            pending.append((position, pixels, valid))
            if len(pending) == self.batch_size:
                if not self._put(batches, self._batch(pending, position + 1), stop):
                    return
                pending = []
        if pending:
            self._put(batches, self._batch(pending, len(self.windows)), stop)

    @staticmethod
    def _batch(pending: list[tuple[int, np.ndarray, np.ndarray]], windows_done: int) -> WindowBatch:
        positions, pixels, valid = zip(*pending)
        return WindowBatch(
            window_index=torch.tensor(positions, dtype=torch.int64),
            pixels=torch.from_numpy(np.stack(pixels)),
            valid=torch.from_numpy(np.stack(valid)),
            windows_done=windows_done,
        )
