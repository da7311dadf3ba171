"""From network outputs to detections: scores, decoded boxes in chip pixels, NMS.

The selection after decoding (threshold, top-k, clip, NMS) is
:func:`geolearn.models.raster_function.select_detections`, the very function that a saved
package's ArcGIS raster function runs without geolearn.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from geolearn.models.boxes import cthw_to_chip, decode
from geolearn.models.raster_function import select_detections

__all__ = ["Detections", "detect"]

class Detections(NamedTuple):
    """Detections in one chip, best first.

    Attributes:
        chip_boxes: ``Tensor[K, 4]`` float32 xyxy in chip pixels, within ``[0, chip_size]``.
        labels: ``Tensor[K]`` int64 class indices 1..C (indices into ``data.classes``).
        scores: ``Tensor[K]`` float32 sigmoid scores, descending.

    Examples:
        See :func:`detect`, which returns them.
    """

    chip_boxes: Tensor
    labels: Tensor
    scores: Tensor


def _detect_one(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    chip_size: int,
    score_thresh: float,
    nms_overlap: float,
    class_agnostic: bool,
    max_detections: int,
    pre_nms_top_k: int,
) -> Detections:
    """One chip: ``cls_logits [A, C]``, ``box_deltas [A, 4]``, ``anchors [A, 4]`` cthw → :class:`Detections`."""
    chip_boxes = cthw_to_chip(decode(box_deltas.float(), anchors), chip_size)
    return Detections(*select_detections(
        chip_boxes, torch.sigmoid(cls_logits.float()), chip_size, threshold=score_thresh, nms_overlap=nms_overlap,
        class_agnostic=class_agnostic, max_detections=max_detections, pre_nms_top_k=pre_nms_top_k,
    ))


def detect(
    output: Sequence[Tensor],
    anchors: Tensor,
    chip_size: int,
    *,
    score_thresh: float = 0.05,
    nms_overlap: float = 0.5,
    class_agnostic: bool = False,
    max_detections: int = 300,
    pre_nms_top_k: int = 1000,
) -> list[Detections]:
    """Turns a batch of network outputs into per-chip detections.

    Each (anchor, class) pair with sigmoid score above ``score_thresh`` is a candidate; the
    ``pre_nms_top_k`` best are decoded (:func:`~geolearn.models.boxes.decode`), converted to chip
    pixels, clipped to the chip and suppressed by NMS — per class (``batched_nms``), or across
    classes when ``class_agnostic`` (one box per object even when two classes fire on it).

    Args:
        output: ``[cls_logits [B, A, C], box_deltas [B, A, 4]]`` as the network returns them.
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1] (:func:`~geolearn.models.anchors.make_anchors`).
        chip_size: side of the chips in pixels.
        score_thresh: scores must exceed this, 0–1. Default 0.05.
        nms_overlap: IoU above which the lower-scored of two boxes is suppressed, 0–1. Default 0.5.
        class_agnostic: suppress across classes instead of within each class. Default False.
        max_detections: most detections kept per chip. Default 300.
        pre_nms_top_k: most candidates per chip entering NMS. Default 1000.

    Returns:
        One :class:`Detections` per chip, boxes float32 xyxy chip pixels, best first.
        Boxes under 0.01 px on a side after clipping are dropped.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> anchors = make_anchors(64)
        >>> cls_logits = torch.full((1, len(anchors), 2), -10.0)
        >>> cls_logits[0, 5, 1] = 3.0  # anchor 5 (a 20 px square at the top-left cell) says class 2
        >>> (chip,) = detect([cls_logits, torch.zeros(1, len(anchors), 4)], anchors, chip_size=64)
        >>> chip.chip_boxes, chip.labels, chip.scores
        (tensor([[ 0.0000,  0.0000, 14.0794, 14.0794]]), tensor([2]), tensor([0.9526]))
    """
    cls_logits, box_deltas = output
    anchors = anchors.to(device=box_deltas.device, dtype=torch.float32)
    return [
        _detect_one(
            cls_i, box_i, anchors, chip_size, score_thresh, nms_overlap, class_agnostic, max_detections, pre_nms_top_k
        )
        for cls_i, box_i in zip(cls_logits.detach(), box_deltas.detach())
    ]
