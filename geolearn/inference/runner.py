"""Running a RetinaNet network over an image of any size, window by window.

:func:`network_runner` makes the network a ``run_batch`` (crops → detections in chip pixels:
autocast, the box decoding of :func:`~geolearn.models.postprocess.detect`, optional test-time
augmentation); :func:`zoomed_runner` wraps it for a model trained on enlarged chips;
:func:`detect_windows` runs any ``run_batch`` over the windows of an image in memory
(:mod:`geolearn.inference.windows`) and merges what they find once
(:mod:`geolearn.inference.window_merge`); :func:`predict_tiles` is the two together.
:func:`~geolearn.inference.raster.detect_raster` does the same for a raster on disk. Nothing here
imports fastai.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geolearn.inference.defaults import (
    EDGE_TOLERANCE,
    MERGE,
    NMS_OVERLAP,
    THRESHOLD,
    WINDOW_BATCH,
    MergeMethod,
    check_window_settings,
    default_overlap,
)
from geolearn.inference.window_merge import ImageDetections, merge_windows, window_detections
from geolearn.inference.windows import RunBatch, _padded_hwc, crop_windows, plan_windows
from geolearn.models.compiled import CompiledNetwork
from geolearn.models.folding import inference_network
from geolearn.models.postprocess import Detections, detect
from geolearn.models.tta import VIEW_THRESH as TTA_VIEW_THRESH, augmented_runner

__all__ = ["detect_windows", "network_runner", "zoomed_runner", "predict_tiles"]


def detect_windows(
    run_batch: RunBatch,
    image: Tensor,
    chip_size: int,
    *,
    overlap: int | None = None,
    batch_size: int = WINDOW_BATCH,
    merge: MergeMethod = MERGE,
    nms_overlap: float = NMS_OVERLAP,
    class_agnostic: bool = False,
    edge_tolerance: float | None = EDGE_TOLERANCE,
    max_detections: int | None = None,
) -> ImageDetections:
    """Runs a chip detector over overlapping windows of an image and merges the results.

    The windows (:func:`~geolearn.inference.windows.plan_windows`) go to ``run_batch`` ``batch_size`` at a time, in plan
    order; each window's boxes are shifted to image pixels, boxes cut by a seam whose object a
    neighbour sees whole are dropped (:func:`~geolearn.inference.window_merge.seam_filter`), boxes are clipped to the image (the
    zero padding of an image smaller than a chip never yields a box outside it) and all windows'
    boxes are merged once (:func:`~geolearn.inference.window_merge.merge_boxes`). Coordinates stay float; nothing is rounded.

    Objects larger than ``overlap`` may be cut by every window that sees them. Their cut pieces
    are kept (dropping them would lose the object) and the merge decides: ``merge='nms'``
    reports the best-scored piece, a box smaller than the object (and, for an object spanning
    more than two windows, also the pieces that do not overlap that one); ``merge='greedy'``
    joins the pieces into one box around the whole object. Choose ``overlap`` larger than the objects
    (at most ``chip_size`` - 1) to have them seen whole.

    Args:
        run_batch: ``Tensor[B, C, S, S]`` crops (channels_last, ``S = chip_size``) → one
            :class:`~geolearn.models.postprocess.Detections` per crop, boxes in chip pixels.
        image: ``Tensor[C, H, W]`` the whole image, as ``run_batch`` expects its pixels.
        chip_size: window side in pixels.
        overlap: pixels shared by adjacent windows; ``chip_size // 4`` when None (the default).
            Keyword only, like the rest.
        batch_size: windows per ``run_batch`` call. Default 8.
        merge: ``'nms'`` (the default) or ``'greedy'`` (see :func:`~geolearn.inference.window_merge.merge_boxes`).
        nms_overlap: IoU (nms) or intersection-over-smaller (greedy) above which two boxes are
            one object, 0–1. Default 0.1.
        class_agnostic: merge across classes. Default False.
        edge_tolerance: pixels within which a box edge touches a window side (see
            :func:`~geolearn.inference.window_merge.seam_filter`); None keeps cut boxes and leaves seams to the merge alone.
            Default 2.
        max_detections: most detections returned; all when None (the default).

    Returns:
        :class:`ImageDetections` in image pixels, best first.

    Raises:
        ValueError: ``image`` is not ``[C, H, W]``, ``batch_size`` < 1, ``run_batch`` returned a
            different number of results than crops, or an invalid ``overlap`` / ``merge``.

    Examples:
        >>> from geolearn.models.postprocess import Detections
        >>> def run_batch(crops):  # a stub detector: a 20 px box at the centre of every crop
        ...     box = torch.tensor([[118.0, 118.0, 138.0, 138.0]])
        ...     return [Detections(box, torch.tensor([1]), torch.tensor([0.9 - 0.1 * i])) for i in range(len(crops))]
        >>> detect_windows(run_batch, torch.zeros(3, 256, 448), chip_size=256, overlap=64)  # windows at x 0 and 192
        ImageDetections(image_boxes=tensor([[118., 118., 138., 138.],
                [310., 118., 330., 138.]]), labels=tensor([1, 1]), scores=tensor([0.9000, 0.8000]))
    """
    if image.ndim != 3:
        raise ValueError(f"image of shape {tuple(image.shape)}: expected one image as [bands, height, width].")
    check_window_settings(merge, batch_size)
    _, height, width = image.shape
    plan = plan_windows(height, width, chip_size, default_overlap(chip_size) if overlap is None else overlap)
    image_hwc = _padded_hwc(image, chip_size)

    parts = []
    for start in range(0, len(plan.windows), batch_size):
        window_index = torch.arange(start, min(start + batch_size, len(plan.windows)))
        crops = crop_windows(image_hwc, plan.windows[window_index])
        parts.append(window_detections(run_batch, crops, window_index, plan, edge_tolerance=edge_tolerance))
    return merge_windows(parts, method=merge, overlap=nms_overlap, class_agnostic=class_agnostic,
                         seams=edge_tolerance is not None, max_detections=max_detections)


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first parameter, or ``default`` for a parameterless module."""
    parameter = next(model.parameters(), None)
    return default if parameter is None else parameter.device


def network_runner(
    model: nn.Module,
    anchors: Tensor,
    chip_size: int,
    *,
    score_thresh: float = THRESHOLD,
    nms_overlap: float = NMS_OVERLAP,
    class_agnostic: bool = False,
    autocast_dtype: torch.dtype | None = None,
    test_time_augmentation: bool = False,
    compiled: bool = False,
) -> RunBatch:
    """A RetinaNet network as a ``run_batch``: crops → per-crop detections in chip pixels.

    The returned function moves the crops to the model's device, runs the network (under
    ``torch.autocast`` in ``autocast_dtype`` when given; prepared at the first batch by
    :func:`~geolearn.models.folding.inference_network`: batch norms folded into the convolutions,
    weights cast once) and decodes its outputs with
    :func:`~geolearn.models.postprocess.detect`: each crop thresholded at ``score_thresh`` and
    suppressed within itself at ``nms_overlap``. It does not touch the model's mode or autograd:
    the caller puts the model in eval mode and runs under ``torch.inference_mode()``
    (:func:`predict_tiles` does both).

    Args:
        model: ``images [B, C, S, S]`` → ``[cls_logits [B, A, n_classes], box_deltas [B, A, 4]]``
            (:class:`~geolearn.models.retinanet.RetinaNetModel`).
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1] for ``chip_size``
            (:func:`~geolearn.models.anchors.make_anchors`).
        chip_size: the network's chip side in pixels.
        score_thresh: scores must exceed this, 0–1. Default 0.5. Keyword only, like the rest.
        nms_overlap: IoU above which the lower-scored of two boxes in a crop is suppressed, 0–1.
            Default 0.1.
        class_agnostic: suppress across classes within a crop. Default False.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the network under autocast; None (the
            default): as is.
        test_time_augmentation: run each crop in its 8 orientations and fuse the views' boxes
            (:func:`~geolearn.models.tta.augmented_runner`); 8 times the work. Default False.
        compiled: run the network compiled by ``torch.compile`` with its weights frozen in
            (:class:`~geolearn.models.compiled.CompiledNetwork`: compiled at the first batch,
            uncompiled with a warning where that fails). The weights must not change while
            ``run_batch`` is used. Default False.

    Returns:
        ``run_batch(crops: Tensor[B, C, S, S]) -> list[Detections]``; it raises ValueError when
        the network's anchor count does not match ``anchors``.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> model = build_retinanet("resnet18", n_classes=2, pretrained=False).eval()
        >>> run_batch = network_runner(model, make_anchors(64), 64)
        >>> with torch.inference_mode():
        ...     found = run_batch(torch.zeros(2, 3, 64, 64))
        >>> len(found), found[0].chip_boxes.shape  # an untrained network scores every anchor 0.018
        (2, torch.Size([0, 4]))
    """
    device = _device_of(model, torch.device("cpu"))
    anchors = anchors.to(device=device, dtype=torch.float32)
    # Compiling folds batch norms and casts weights by itself; otherwise the network is prepared
    # for inference (geolearn.models.folding) at the first batch, once the caller has put the
    # model in eval mode and set its memory format.
    network: nn.Module | CompiledNetwork | None = CompiledNetwork(model) if compiled else None
    # A fused score is a mean over the views, so each view keeps its weaker boxes too.
    view_thresh = min(score_thresh, TTA_VIEW_THRESH) if test_time_augmentation else score_thresh

    def run_batch(crops: Tensor) -> list[Detections]:
        nonlocal network
        crops = crops.to(device, non_blocking=True)
        if network is None:
            network = model if model.training else inference_network(model, autocast_dtype)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            output = network(crops)
        if output[0].shape[1] != len(anchors):
            raise ValueError(
                f"the network gives {output[0].shape[1]} anchors per {chip_size} px chip but anchors has "
                f"{len(anchors)}: pass make_anchors({chip_size}, scales, ratios) with the model's scales and ratios."
            )
        return detect(
            output, anchors, chip_size, score_thresh=view_thresh, nms_overlap=nms_overlap, class_agnostic=class_agnostic
        )

    if test_time_augmentation:
        return augmented_runner(run_batch, score_thresh)
    return run_batch


def zoomed_runner(run_batch: RunBatch, window_size: int, chip_size: int) -> RunBatch:
    """``run_batch`` for a network trained on enlarged chips: crops are enlarged to ``chip_size`` first.

    A model trained with ``prepare_data(..., resize_to=R)`` on chips of ``s`` pixels saw objects
    ``R / s`` times larger than the imagery shows them. Windows of ``window_size`` imagery pixels
    are enlarged to ``chip_size`` as the chips were (bilinear, as
    :func:`geolearn.data.transforms.resize` does in training), and the boxes found are shrunk
    back to window pixels.

    Args:
        run_batch: the network's ``run_batch`` for ``chip_size`` crops (:func:`network_runner`).
        window_size: side of the crops it is given, in imagery pixels.
        chip_size: side of the crops the network takes.

    Returns:
        ``run_batch(crops: Tensor[B, C, window_size, window_size]) -> list[Detections]``, boxes in
        window pixels.

    Examples:
        >>> def run_batch(crops):  # a stub network: one box at chip pixels 32..48
        ...     assert crops.shape[-1] == 96
        ...     box = torch.tensor([[32.0, 32.0, 48.0, 48.0]])
        ...     return [Detections(box, torch.tensor([1]), torch.tensor([0.9]))] * len(crops)
        >>> found = zoomed_runner(run_batch, 64, 96)(torch.zeros(2, 3, 64, 64))
        >>> found[0].chip_boxes  # in the 64 px window
        tensor([[21.3333, 21.3333, 32.0000, 32.0000]])
    """
    scale = window_size / chip_size

    def run_zoomed(crops: Tensor) -> list[Detections]:
        enlarged = torch.nn.functional.interpolate(crops.float(), size=(chip_size, chip_size), mode="bilinear",
                                                   align_corners=False)
        found = run_batch(enlarged.contiguous(memory_format=torch.channels_last))
        return [Detections(d.chip_boxes * scale, d.labels, d.scores) for d in found]

    return run_zoomed


def predict_tiles(
    model: nn.Module,
    image: Tensor,
    anchors: Tensor,
    chip_size: int,
    *,
    score_thresh: float = THRESHOLD,
    nms_overlap: float = NMS_OVERLAP,
    overlap: int | None = None,
    batch_size: int = WINDOW_BATCH,
    autocast_dtype: torch.dtype | None = None,
    class_agnostic: bool = False,
    merge: MergeMethod = MERGE,
    max_detections: int | None = None,
    edge_tolerance: float | None = EDGE_TOLERANCE,
    test_time_augmentation: bool = False,
    compiled: bool = False,
) -> ImageDetections:
    """Detects objects in an image of any size with a RetinaNet network, window by window.

    :func:`detect_windows` with ``run_batch`` = the network (in eval mode, under
    ``torch.inference_mode()``, in ``autocast_dtype`` when given) followed by
    :func:`~geolearn.models.postprocess.detect`. Each window is thresholded at ``score_thresh``
    and suppressed within itself at ``nms_overlap`` before the cross-window merge: suppression
    only ever removes a lower-scored box, so boxes below the final threshold could not change
    which boxes above it survive, and thresholding early only saves work. An image smaller than
    the chip is zero-padded (zero = the band mean after normalisation); no box leaves the image.
    Objects larger than ``overlap`` may be cut by every window: see :func:`detect_windows`.

    For the best CPU speed convert the model once, ``model.to(memory_format=torch.channels_last)``
    (the crops are channels_last already), and pass ``autocast_dtype=torch.bfloat16`` on CPUs with
    AVX-512 BF16 or AMX.

    Args:
        model: ``images [B, C, S, S]`` → ``[cls_logits [B, A, n_classes], box_deltas [B, A, 4]]``
            (:class:`~geolearn.models.retinanet.RetinaNetModel`). Its train/eval mode is restored.
        image: ``Tensor[C, H, W]`` float32, already scaled and normalised as in training.
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1] for ``chip_size``
            (:func:`~geolearn.models.anchors.make_anchors`).
        chip_size: the network's chip side in pixels.
        score_thresh: scores must exceed this, 0–1. Default 0.5. Keyword only, like the rest.
        nms_overlap: IoU (or IoS for ``merge='greedy'``) above which two boxes are one object,
            0–1. Default 0.1.
        overlap: pixels shared by adjacent windows; ``chip_size // 4`` when None (the default).
        batch_size: windows per forward pass. Default 8.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the network under autocast; None (the
            default): as is.
        class_agnostic: suppress/merge across classes, one box per object. Default False.
        merge: ``'nms'`` (the default) or ``'greedy'`` (see :func:`~geolearn.inference.window_merge.merge_boxes`).
        max_detections: most detections returned for the image; all when None (the default).
        edge_tolerance: pixels, see :func:`~geolearn.inference.window_merge.seam_filter`; None keeps boxes cut by seams. Default 2.
        test_time_augmentation: see :func:`network_runner`. Default False.
        compiled: see :func:`network_runner`. Default False.

    Returns:
        :class:`ImageDetections` — boxes float32 xyxy in image pixels, labels 1..C, scores — best first.

    Raises:
        ValueError: ``image`` is not a floating-point ``[C, H, W]`` tensor, ``anchors`` do not
            match the network's outputs for ``chip_size``, ``batch_size`` < 1, or an invalid
            ``overlap`` / ``merge``.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> model = build_retinanet("resnet18", n_classes=2, pretrained=False)
        >>> found = predict_tiles(model, torch.zeros(3, 100, 150), make_anchors(64), chip_size=64)
        >>> found.image_boxes.shape, model.training  # untrained: nothing found; the mode is restored
        (torch.Size([0, 4]), True)
    """
    if not image.is_floating_point():
        raise ValueError(
            f"image dtype {image.dtype}: predict_tiles expects the scaled and normalised float image "
            "(divide by the data's maximum and apply the training statistics first)."
        )
    run_batch = network_runner(
        model, anchors, chip_size, score_thresh=score_thresh, nms_overlap=nms_overlap,
        class_agnostic=class_agnostic, autocast_dtype=autocast_dtype, test_time_augmentation=test_time_augmentation,
        compiled=compiled,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return detect_windows(
                run_batch,
                image,
                chip_size,
                overlap=overlap,
                batch_size=batch_size,
                merge=merge,
                nms_overlap=nms_overlap,
                class_agnostic=class_agnostic,
                edge_tolerance=edge_tolerance,
                max_detections=max_detections,
            )
    finally:
        model.train(was_training)
