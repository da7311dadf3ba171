"""Average precision over a DataLoader: the epoch column and ``average_precision_score``.

The epoch column is :class:`geolearn.learn.callbacks.AveragePrecisionMetric` (a fastai metric);
this module stays free of fastai, for models that only predict.

Both use the same steps — the model's raw output → :func:`geolearn.models.postprocess.detect`
(score threshold, NMS) → :func:`geolearn.metrics.average_precision` — so the number
printed after each epoch is the number the method returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from geolearn.data.boxes import unit_to_pixel
from geolearn.inference.defaults import NMS_OVERLAP, THRESHOLD
from geolearn.models.postprocess import detect
from geolearn.progress import progress_bar

__all__ = ["DetectionSettings", "batch_targets", "batch_detections", "evaluate", "first_chips"]


@dataclass(frozen=True)
class DetectionSettings:
    """How raw outputs become the detections that are scored.

    Attributes:
        anchors: ``Tensor[A, 4]`` the model's anchors, (cy, cx, h, w) in [-1, 1].
        chip_size: side of the chips, pixels.
        detect_thresh: scores must exceed this to count as detections, 0–1. Default 0.5.
        nms_overlap: IoU above which NMS suppresses the weaker of two detections, 0–1.
            Default 0.1.
        iou_thresh: IoU a detection needs with its ground truth to count as found, 0–1.
            Default 0.1 (arcgis-style AP@0.1).

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> settings = DetectionSettings(make_anchors(64), chip_size=64)
        >>> settings.detect_thresh, settings.nms_overlap, settings.iou_thresh
        (0.5, 0.1, 0.1)
    """

    anchors: Tensor
    chip_size: int
    detect_thresh: float = THRESHOLD
    nms_overlap: float = NMS_OVERLAP
    iou_thresh: float = 0.1


def batch_targets(unit_boxes: Tensor, labels: Tensor, chip_size: int) -> list[tuple[Tensor, Tensor]]:
    """fastai batch targets → per chip ``(chip_boxes xyxy pixels, labels)``, padding removed.

    Args:
        unit_boxes: ``[B, N, 4]`` xyxy in [-1, 1] (fastai's ``TensorBBox`` or a plain tensor).
        labels: ``[B, N]`` class indices 1..C, 0 for padding.
        chip_size: side of the chips, pixels.

    Returns:
        Per chip, ``(Tensor[M, 4] float32 xyxy in chip pixels, Tensor[M] labels)`` on the CPU,
        the format :func:`geolearn.metrics.average_precision` takes.

    Examples:
        >>> unit_boxes = torch.tensor([[[-1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # a box, then padding
        >>> batch_targets(unit_boxes, torch.tensor([[1, 0]]), chip_size=64)
        [(tensor([[ 0.,  0., 32., 32.]]), tensor([1]))]
    """
    unit_boxes, labels = unit_boxes.as_subclass(Tensor), labels.as_subclass(Tensor)
    out = []
    for boxes, lbls in zip(unit_boxes, labels):
        real = lbls > 0
        out.append((unit_to_pixel(boxes[real].float(), chip_size, chip_size).cpu(), lbls[real].cpu()))
    return out


def batch_detections(output: Sequence[Tensor], settings: DetectionSettings) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Raw model output → per chip ``(chip_boxes, labels, scores)`` above the threshold, after NMS.

    Args:
        output: ``[cls_logits [B, A, C], box_deltas [B, A, 4]]``, the network's outputs (cast
            to float32 here).
        settings: anchors, chip size, ``detect_thresh`` and ``nms_overlap``.

    Returns:
        Per chip, ``(Tensor[K, 4] float32 xyxy in chip pixels, Tensor[K] labels 1..C,
        Tensor[K] scores)`` on the CPU, best first.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> settings = DetectionSettings(make_anchors(64), chip_size=64)
        >>> cls_logits = torch.full((1, len(settings.anchors), 2), -10.0)
        >>> cls_logits[0, 5, 0] = 3.0  # one confident anchor, class 1
        >>> batch_detections([cls_logits, torch.zeros(1, len(settings.anchors), 4)], settings)
        [(tensor([[ 0.0000,  0.0000, 14.0794, 14.0794]]), tensor([1]), tensor([0.9526]))]
    """
    detections = detect(
        [o.float() for o in output],
        settings.anchors.to(output[0].device),
        settings.chip_size,
        score_thresh=settings.detect_thresh,
        nms_overlap=settings.nms_overlap,
    )
    return [(d.chip_boxes.cpu(), d.labels.cpu(), d.scores.cpu()) for d in detections]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, settings: DetectionSettings, autocast_dtype: torch.dtype | None,
             progress: bool = True) -> tuple[list, list]:
    """Runs ``model`` over ``loader``; returns per-chip detections and targets.

    Gradients are off; the model is put in eval mode and left there.

    Args:
        model: the network, ``images [B, C, S, S]`` → ``[cls_logits, box_deltas]``.
        loader: batches ``(images, unit_boxes [B, N, 4] xyxy in [-1, 1], labels [B, N])``, as
            fastai's validation DataLoader yields them; images are moved to the model's device.
        settings: anchors, chip size, ``detect_thresh`` and ``nms_overlap``.
        autocast_dtype: e.g. ``torch.bfloat16`` to run under autocast; None: float32.
        progress: show a fastprogress bar over the batches. Default True.

    Returns:
        ``(predictions, targets)``: per chip, :func:`batch_detections`'s and
        :func:`batch_targets`'s tuples, the arguments of :func:`geolearn.metrics.average_precision`.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> model = build_retinanet("resnet18", n_classes=2, pretrained=False)
        >>> loader = [(torch.zeros(2, 3, 64, 64), torch.tensor([[[-1.0, -1.0, 0.0, 0.0]]] * 2), torch.tensor([[1]] * 2))]
        >>> predictions, targets = evaluate(model, loader, DetectionSettings(make_anchors(64), 64), None, progress=False)
        >>> len(predictions), predictions[0][0].shape, targets[0]  # an untrained network finds nothing
        (2, torch.Size([0, 4]), (tensor([[ 0.,  0., 32., 32.]]), tensor([1])))
    """
    model.eval()
    device = next(model.parameters()).device
    predictions, targets = [], []
    batches = progress_bar(loader, leave=False) if progress else loader
    for images, unit_boxes, labels in batches:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            output = model(images.as_subclass(Tensor).to(device))
        predictions += batch_detections(output, settings)
        targets += batch_targets(unit_boxes, labels, settings.chip_size)
    return predictions, targets


def first_chips(model: torch.nn.Module, loader, settings: DetectionSettings, autocast_dtype: torch.dtype | None,
                count: int) -> tuple[list[Tensor], list, list]:
    """The first ``count`` chips of ``loader``: decoded pixels ``[C, S, S]``, detections and ground truth.

    What ``show_results`` draws: batches are run (as :func:`evaluate` runs them) only until
    ``count`` chips are in hand. ``loader`` is a fastai DataLoader (its ``decode`` undoes the
    normalisation).

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> class Loader(list):  # a stand-in for fastai's DataLoader: decode() gives the pixels back
        ...     def decode(self, batch):
        ...         return batch
        >>> batch = (torch.zeros(2, 3, 64, 64), torch.tensor([[[-1.0, -1.0, 0.0, 0.0]]] * 2), torch.tensor([[1]] * 2))
        >>> network = build_retinanet("resnet18", n_classes=1, pretrained=False)
        >>> images, found, truth = first_chips(network, Loader([batch] * 3), DetectionSettings(make_anchors(64), 64), None, 3)
        >>> len(images), images[0].shape, truth[2]
        (3, torch.Size([3, 64, 64]), (tensor([[ 0.,  0., 32., 32.]]), tensor([1])))
    """
    images, predictions, targets = [], [], []
    for batch in loader:
        found, truth = evaluate(model, [batch], settings, autocast_dtype, progress=False)
        images += list(loader.decode(batch)[0].as_subclass(Tensor))
        predictions += found
        targets += truth
        if len(images) >= count:
            break
    return images[:count], predictions[:count], targets[:count]
