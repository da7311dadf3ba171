"""A trained network over one image or one raster: what ``RetinaNet.predict`` and ``.detect_objects`` do.

Both take the network, its :class:`~geolearn.learn.config.ModelConfig` and its anchors (what a
``RetinaNet`` holds) and coordinate the engine of this package: the model's normalisation, its
zoom (a model trained on enlarged chips sees imagery enlarged alike), the network runner
(:mod:`geolearn.inference.runner`), the windows, the seam filter and the one merge
(:mod:`geolearn.inference.windows`, :mod:`geolearn.inference.window_merge`), and for a raster the
streamed windows (:mod:`geolearn.inference.raster`) and the georeferenced layer
(:func:`~geolearn.data.georef.detections_frame`). The network's mode and memory format are
restored afterwards.

The zoom: :func:`predict_image` enlarges the image in memory by it, once, before the windows;
:func:`detect_raster_objects`, which never holds the raster, reads windows of
``chip_size / zoom`` raster pixels and enlarges each (:func:`~geolearn.inference.runner.zoomed_runner`).
Both give boxes in the imagery's pixels. (Enlarging per window in ``predict`` too would change
its boxes slightly near window edges, and with them the demo's figures: kept as it is.)
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import geopandas as gpd
import numpy as np
import torch
from torch import Tensor, nn

from geolearn.checks import fraction, whole_number
from geolearn.data.georef import detections_frame, resolve_output, write_features
from geolearn.data.images import read_chip
from geolearn.inference.defaults import (
    EDGE_TOLERANCE,
    MERGE,
    NMS_OVERLAP,
    THRESHOLD,
    MergeMethod,
    default_batch_size,
    default_padding,
)
from geolearn.inference.raster import detect_raster
from geolearn.inference.runner import network_runner, predict_tiles, zoomed_runner
from geolearn.inference.window_merge import ImageDetections
from geolearn.models.precision import resolve_precision

if TYPE_CHECKING:
    from geolearn.learn.config import ModelConfig

__all__ = ["image_pixels", "predict_image", "detect_raster_objects", "detect_with_model", "is_retinanet"]

logger = logging.getLogger(__name__)


def image_pixels(image: str | Path | np.ndarray, config: ModelConfig) -> Tensor:
    """``Tensor[C, H, W]`` raw pixels of an image file or an ``[H, W, C]`` array, the model's bands.

    Raises:
        ValueError: the image does not have the bands the model takes.

    Examples:
        See :func:`predict_image`.
    """
    if isinstance(image, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if config.extract_bands is not None and pixels.shape[0] != config.n_bands:
            pixels = pixels[list(config.extract_bands)]
    else:
        pixels = read_chip(Path(image), config.extract_bands)
    if pixels.shape[0] != config.n_bands:
        raise ValueError(f"the image has {pixels.shape[0]} bands, the model takes {config.n_bands}; "
                         "pass an image with the bands the model was trained on.")
    return pixels


def predict_image(
    network: nn.Module,
    config: ModelConfig,
    anchors: Tensor,
    pixels: Tensor,
    *,
    threshold: float = THRESHOLD,
    nms_overlap: float = NMS_OVERLAP,
    resize: bool = False,
    batch_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    test_time_augmentation: bool = False,
    compiled: bool = False,
) -> ImageDetections:
    """Detections in one image of any size, boxes in the image's pixels (``RetinaNet.predict``).

    Args:
        network: the RetinaNet network; its train/eval mode is restored.
        config: what the network is (normalisation, chip size, zoom).
        anchors: ``Tensor[A, 4]`` the network's anchors for ``config.chip_size``.
        pixels: ``Tensor[C, H, W]`` raw pixels (:func:`image_pixels`).
        threshold: lowest score reported, 0–1. Keyword only, like the rest.
        nms_overlap: IoU above which two detections of a class are one object.
        resize: squish the whole image to one chip first (boxes are scaled back).
        batch_size: windows per forward pass.
        test_time_augmentation: fuse each window's 8 orientations (8 times the time).
        autocast_dtype: e.g. ``torch.bfloat16``; None runs the network as it is.
        compiled: run the network compiled (:func:`~geolearn.inference.runner.network_runner`).

    Returns:
        :class:`~geolearn.inference.window_merge.ImageDetections` in image pixels, best first.

    Examples:
        >>> from geolearn.data.esri import ClassInfo
        >>> from geolearn.data.normalization import Normalization
        >>> from geolearn.learn.config import ModelConfig
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> config = ModelConfig(class_infos=[ClassInfo(1, "tree", (0, 168, 132))], chip_size=64,
        ...                      normalization=Normalization.for_rgb8(), n_bands=3, backbone="resnet18")
        >>> network = build_retinanet("resnet18", n_classes=1, pretrained=False)
        >>> pixels = image_pixels(np.zeros((100, 150, 3), dtype=np.uint8), config)
        >>> found = predict_image(network, config, make_anchors(64), pixels)
        >>> tuple(pixels.shape), len(found.scores), network.training  # untrained: nothing; mode restored
        ((3, 100, 150), 0, True)
    """
    fraction("threshold", threshold, example="0.3")
    fraction("nms_overlap", nms_overlap, example="0.1")
    whole_number("batch_size", batch_size, example="8")
    image = config.normalization.normalize(pixels)
    height, width = image.shape[1:]
    size, zoom = config.chip_size, config.zoom
    # resize: the whole image becomes one chip; else a model trained on enlarged chips
    # (resize_to) sees the image enlarged alike.
    seen = (size, size) if resize else (round(height * zoom), round(width * zoom))
    if seen != (height, width):
        image = torch.nn.functional.interpolate(image[None], size=seen, mode="bilinear", align_corners=False)[0]
    found = predict_tiles(network, image, anchors, size, score_thresh=threshold, nms_overlap=nms_overlap,
                          batch_size=batch_size, autocast_dtype=autocast_dtype,
                          test_time_augmentation=test_time_augmentation, compiled=compiled)
    if seen == (height, width):
        return found
    scale = torch.tensor([width / seen[1], height / seen[0]] * 2)
    return ImageDetections(found.image_boxes * scale, found.labels, found.scores)


def detect_raster_objects(
    network: nn.Module,
    config: ModelConfig,
    anchors: Tensor,
    raster: str | Path,
    out_path: str | Path | None = None,
    *,
    threshold: float = THRESHOLD,
    nms_overlap: float = NMS_OVERLAP,
    padding: int | None = None,
    batch_size: int | None = None,
    exclude_pad_detections: bool = True,
    merge: MergeMethod = MERGE,
    class_agnostic: bool = False,
    bands: Sequence[int] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    autocast_dtype: torch.dtype | None = None,
    test_time_augmentation: bool = False,
    compiled: bool = False,
) -> gpd.GeoDataFrame:
    """Georeferenced detections over a whole raster (``RetinaNet.detect_objects``, which documents the arguments).

    Args:
        network: the RetinaNet network; its mode and memory format are restored.
        config: what the network is (normalisation, bands, chip size, zoom, classes).
        anchors: ``Tensor[A, 4]`` the network's anchors for ``config.chip_size``.
        raster: anything rasterio opens, with the bands the model was trained on.
        out_path: where to write the layer (``.gpkg``, ``.geojson``, ``.shp``, ``.parquet``);
            None writes nothing.
        threshold: lowest score reported, 0–1. Keyword only, like the rest.
        nms_overlap: IoU (intersection over the smaller box for ``merge='greedy'``) above which
            two detections are one object.
        padding: pixels of context on each side of a window; None: ``chip_size // 8``.
        batch_size: windows per forward pass; None: 2 on a CPU, 8 on a GPU.
        exclude_pad_detections: drop a detection cut by a window edge when the neighbouring
            window sees the object whole.
        merge: ``'nms'`` or ``'greedy'``.
        class_agnostic: merge across classes.
        bands: 0-based raster bands to feed the model; None: the model's ``extract_bands``.
        progress: show a progress bar over the windows.
        overwrite: replace an existing ``out_path``.
        test_time_augmentation: fuse each window's 8 orientations (8 times the time).
        autocast_dtype: e.g. ``torch.bfloat16``; None runs the network as it is.
        compiled: run the network compiled (:func:`~geolearn.inference.runner.network_runner`).

    Returns:
        ``GeoDataFrame`` in the raster's CRS: ``Class``, ``Confidence`` (score × 100), polygons.

    Examples:
        See ``RetinaNet.detect_objects``, which calls it with the model's network, config and anchors.
    """
    fraction("threshold", threshold, example="0.3")
    fraction("nms_overlap", nms_overlap, example="0.1")
    size = config.chip_size
    padding = default_padding(size) if padding is None else padding
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= 2 * padding < size:
        raise ValueError(f"padding={padding!r}: pixels of context on each side of a {size} px window, an int in "
                         f"[0, {(size - 1) // 2}]; the default is chip_size // 8 = {default_padding(size)}.")
    if out_path is not None:
        resolve_output(out_path, None, overwrite)  # a bad or taken output name fails before any inference
    if batch_size is None:
        batch_size = default_batch_size(next(network.parameters()).device.type)
    run_batch = network_runner(network, anchors, size, score_thresh=threshold, nms_overlap=nms_overlap,
                               class_agnostic=class_agnostic, autocast_dtype=autocast_dtype,
                               test_time_augmentation=test_time_augmentation, compiled=compiled)
    # Windows of raster pixels that enlarge to the chip size when the model was trained on
    # enlarged chips (zoom = resize_to / exported chip side); padding scales with them.
    window = config.window_size
    if window != size:
        run_batch = zoomed_runner(run_batch, window, size)
    with _eval_mode(network, channels_last=True), torch.inference_mode():  # the windows arrive channels_last
        found = detect_raster(
            run_batch, raster, chip_size=window, to_input=config.normalization.normalize,
            bands=bands if bands is not None else config.extract_bands, n_bands=config.n_bands,
            overlap=round(2 * padding * window / size), batch_size=batch_size, merge=merge, nms_overlap=nms_overlap,
            class_agnostic=class_agnostic, edge_tolerance=EDGE_TOLERANCE if exclude_pad_detections else None,
            progress=progress,
        )
    logger.info("%s: %d detections (%d windows run, %d skipped as nodata)",
                raster, len(found.scores), found.windows_run, found.windows_skipped)
    frame = detections_frame(found.raster_boxes, found.labels, found.scores, config.classes, found.transform, found.crs)
    if out_path is not None:
        write_features(frame, out_path, overwrite=overwrite)
    return frame


def is_retinanet(model: Any) -> bool:
    """Whether ``model`` is a geolearn ``RetinaNet`` (False for other detectors with a ``detect_objects``).

    Examples:
        >>> is_retinanet(object())
        False
    """
    # Only a loaded module can have made the object; no need to import fastai to find out.
    module = sys.modules.get("geolearn.learn.retinanet")
    return module is not None and isinstance(model, module.RetinaNet)


def detect_with_model(model: Any, raster: str | Path, out_path: str | Path | None = None, *,
                      threshold: float | None = None, **settings: Any) -> gpd.GeoDataFrame:
    """One raster's layer from a model: a ``RetinaNet``'s network, config and anchors through
    :func:`detect_raster_objects`; any other detector through its own ``detect_objects``.

    ``RetinaNet.detect_objects`` and :func:`geolearn.inference.detect.detect_objects` both come
    here, so a RetinaNet's calibrated threshold (:attr:`~geolearn.learn.config.ModelConfig.score_threshold`)
    and its ``mixed_precision`` setting are applied in one place.

    Args:
        model: a ``RetinaNet``, or any object with ``detect_objects(raster, out_path, **settings)``.
        raster: the raster.
        out_path: where to write the layer, or None.
        threshold: lowest score reported; None: the model's calibrated threshold (else 0.5).
            Keyword only.
        **settings: the other keyword arguments of ``RetinaNet.detect_objects``.

    Examples:
        See ``RetinaNet.detect_objects``.
    """
    if not is_retinanet(model):  # called as geolearn called detectors before: out_path and threshold only when given
        given = {"out_path": out_path, "threshold": threshold}
        return model.detect_objects(raster, **{k: v for k, v in given.items() if v is not None}, **settings)
    device = next(model.model.parameters()).device
    return detect_raster_objects(
        model.model, model.config, model.anchors, raster, out_path,
        threshold=model.config.score_threshold if threshold is None else threshold,
        autocast_dtype=resolve_precision(model.mixed_precision, device), **settings,
    )


def _is_channels_last(network: nn.Module) -> bool:
    """Whether the network's convolution weights are channels_last (False when it has none)."""
    weights = [p for p in network.parameters() if p.ndim == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


@contextlib.contextmanager
def _eval_mode(network: nn.Module, *, channels_last: bool) -> Iterator[None]:
    """The network in eval mode (and channels_last when asked) inside; its mode and format restored after."""
    was_training, was_channels_last = network.training, _is_channels_last(network)
    network.eval()
    if channels_last:
        network.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if channels_last and not was_channels_last:
            network.to(memory_format=torch.contiguous_format)
        network.train(was_training)
