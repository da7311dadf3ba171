"""Detection over a whole raster on disk: streaming windows, nodata skipped, one merge.

:func:`detect_raster` is :func:`~geolearn.inference.runner.detect_windows` for a raster that
need not fit in memory. The windows are the same (:func:`~geolearn.inference.windows.plan_windows`
over the raster's height and width), and so are the per-window steps
(:func:`~geolearn.inference.window_merge.window_detections`: shift to raster pixels, seam filter,
clip) and the one cross-window merge (:func:`~geolearn.inference.window_merge.merge_windows`). What
differs is where the pixels come from: a :class:`~geolearn.data.raster_windows.WindowReader`
reads them in a background thread, batch by batch, skipping windows with no valid pixel — they
never reach the network — and the boxes whose centre lies on a nodata pixel of a partly-nodata
window are dropped. Boxes stay float32 raster pixels; georeferencing them is the caller's step
(:func:`~geolearn.data.georef.detections_frame`), with the transform and CRS returned here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from affine import Affine
from torch import Tensor

from geolearn.data.raster_windows import WindowReader, read_raster_info, select_bands
from geolearn.inference.defaults import (
    EDGE_TOLERANCE,
    MERGE,
    NMS_OVERLAP,
    WINDOW_BATCH,
    MergeMethod,
    check_window_settings,
    default_overlap,
)
from geolearn.inference.window_merge import merge_windows, window_detections
from geolearn.inference.windows import RunBatch, plan_windows
from geolearn.progress import watched

__all__ = ["RasterDetections", "detect_raster"]

logger = logging.getLogger(__name__)


class RasterDetections(NamedTuple):
    """Detections over one raster, best first, with what is needed to georeference them.

    Attributes:
        raster_boxes: ``Tensor[K, 4]`` float32 xyxy in raster pixels (edges), within
            ``[0, width] × [0, height]``.
        labels: ``Tensor[K]`` int64 class indices 1..C.
        scores: ``Tensor[K]`` float32, descending.
        transform: the raster's affine, raster pixels → map coordinates.
        crs: the raster's CRS (a ``rasterio.crs.CRS``), or None.
        width: the raster's width in pixels.
        height: the raster's height in pixels.
        windows_run: windows that went through ``run_batch``.
        windows_skipped: windows skipped for having no valid pixel (never run).

    Examples:
        See :func:`detect_raster`, which returns it.
    """

    raster_boxes: Tensor
    labels: Tensor
    scores: Tensor
    transform: Affine
    crs: Any
    width: int
    height: int
    windows_run: int
    windows_skipped: int


def detect_raster(
    run_batch: RunBatch,
    raster: str | Path,
    *,
    chip_size: int,
    to_input: Callable[[Tensor], Tensor],
    bands: Sequence[int] | None = None,
    n_bands: int | None = None,
    overlap: int | None = None,
    batch_size: int = WINDOW_BATCH,
    merge: MergeMethod = MERGE,
    nms_overlap: float = NMS_OVERLAP,
    class_agnostic: bool = False,
    edge_tolerance: float | None = EDGE_TOLERANCE,
    max_detections: int | None = None,
    prefetch: int = 2,
    progress: bool = False,
) -> RasterDetections:
    """Runs a chip detector over a whole raster, window by window, and merges the results once.

    The windows are :func:`~geolearn.inference.windows.plan_windows` ``(height, width,
    chip_size, overlap)``; a raster smaller than a chip is one window reaching past it (the part
    outside is invalid, fed as zeros, and yields no box). Raw pixels are read streaming
    (:class:`~geolearn.data.raster_windows.WindowReader`, nodata pixels zero), turned into
    network input by ``to_input``, and detected by ``run_batch``; boxes go through the same
    per-window steps as :func:`~geolearn.inference.runner.detect_windows`, plus dropping boxes
    centred on nodata; one merge ends it. Peak memory is a few batches of windows and the boxes
    found, whatever the raster's size.

    Args:
        run_batch: ``Tensor[B, C, S, S]`` network inputs (channels_last, ``S = chip_size``) →
            one :class:`~geolearn.models.postprocess.Detections` per crop, boxes in chip pixels
            (:func:`~geolearn.inference.runner.network_runner`, or a stub).
        raster: the raster file (GeoTIFF, COG, VRT, anything rasterio opens).
        chip_size: window side in pixels. Keyword only, required, like ``to_input``.
        to_input: raw pixels ``Tensor[B, C, S, S]`` → the float input ``run_batch`` expects
            (scaling and normalisation).
        bands: 0-based bands to read; None (the default): all.
        n_bands: band count the detector takes, checked before any pixel is read; None (the
            default): any.
        overlap: pixels shared by adjacent windows; ``chip_size // 4`` when None (the default).
        batch_size: windows per ``run_batch`` call. Default 8.
        merge: ``'nms'`` (the default) or ``'greedy'`` (see
            :func:`~geolearn.inference.window_merge.merge_boxes`).
        nms_overlap: IoU (nms) or intersection-over-smaller (greedy) above which two boxes are
            one object, 0–1. Default 0.1.
        class_agnostic: merge across classes. Default False.
        edge_tolerance: pixels, see :func:`~geolearn.inference.window_merge.seam_filter`; None keeps
            boxes cut by seams (arcgis's ``exclude_pad_detections=False``). Default 2.
        max_detections: most detections returned; all when None (the default).
        prefetch: batches read ahead of the detector. Default 2.
        progress: show a fastprogress bar over the windows. Default False.

    Returns:
        :class:`RasterDetections`.

    Raises:
        ImageReadError: the raster cannot be opened or read.
        BandMismatchError: ``bands`` the raster lacks, or a band count other than ``n_bands``.
        ValueError: ``batch_size`` < 1, an invalid ``overlap`` or ``merge``, or ``run_batch``
            returning a different number of results than crops.

    Examples:
        >>> import tempfile
        >>> from geolearn.sample import make_scene
        >>> from geolearn.models.postprocess import Detections
        >>> raster = make_scene(tempfile.mkdtemp(), size=256).raster  # 256 × 256 px, EPSG:32633
        >>> def run_batch(crops):  # a stub detector: an 8 px box at the centre of every window
        ...     return [Detections(torch.tensor([[28.0, 28.0, 36.0, 36.0]]), torch.tensor([1]), torch.tensor([0.9]))
        ...             for _ in crops]
        >>> found = detect_raster(run_batch, raster, chip_size=64, to_input=lambda pixels: pixels.float() / 255)
        >>> found.windows_run, found.windows_skipped, found.raster_boxes[:2]  # windows 48 px apart
        (25, 0, tensor([[28., 28., 36., 36.],
                [76., 28., 84., 36.]]))
        >>> found.crs.to_epsg(), found.transform.a  # for geolearn.data.georef.detections_frame
        (32633, 0.3)
    """
    check_window_settings(merge, batch_size)
    info = read_raster_info(raster)
    bands = select_bands(info, bands, n_bands)  # before planning: a bad band fails at once
    plan = plan_windows(info.height, info.width, chip_size, default_overlap(chip_size) if overlap is None else overlap)
    offsets = plan.windows[:, :2].to(torch.int64)
    windows = torch.cat([offsets, torch.full_like(offsets[:, :1], chip_size)], dim=1).numpy()
    reader = WindowReader(info.path, windows, bands=bands, batch_size=batch_size, prefetch=prefetch)

    bar = _progress_bar(len(reader)) if progress and watched() else None
    parts = []
    for batch in reader:
        crops = to_input(batch.pixels).contiguous(memory_format=torch.channels_last)
        parts.append(window_detections(run_batch, crops, batch.window_index, plan,
                                       edge_tolerance=edge_tolerance, valid=batch.valid))
        if bar is not None and batch.windows_done < len(reader):
            bar.update(batch.windows_done)
    if bar is not None:
        bar.update(len(reader))  # the windows skipped after the last batch count as done too
    merged = merge_windows(parts, method=merge, overlap=nms_overlap, class_agnostic=class_agnostic,
                           seams=edge_tolerance is not None, max_detections=max_detections)
    logger.info("%s: %d windows run, %d skipped (no valid pixel), %d detections",
                info.path, reader.windows_read, reader.windows_skipped, len(merged.scores))
    return RasterDetections(
        raster_boxes=merged.image_boxes.float(),
        labels=merged.labels,
        scores=merged.scores,
        transform=info.transform,
        crs=info.crs,
        width=info.width,
        height=info.height,
        windows_run=reader.windows_read,
        windows_skipped=reader.windows_skipped,
    )


def _progress_bar(total: int):
    """A fastprogress bar over ``total`` windows, advanced by hand (``bar.update(done)``); only
    where someone watches it (:func:`~geolearn.progress.watched`)."""
    from fastprogress.fastprogress import progress_bar

    bar = progress_bar(range(total), leave=False)
    bar.update(0)
    return bar
