"""Average precision over a DataLoader: the epoch column and ``average_precision_score``.

Both use the same steps — the model's raw output → :func:`geolearn.models.postprocess.detect`
(score threshold, NMS) → :func:`geolearn.metrics.average_precision` — so the number
printed after each epoch is the number the method returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from fastai.learner import Metric
from torch import Tensor

from geolearn.data.boxes import unit_to_pixel
from geolearn.metrics import average_precision, mean_average_precision
from geolearn.models.postprocess import detect

__all__ = ["DetectionSettings", "batch_targets", "batch_detections", "AveragePrecisionMetric"]


@dataclass(frozen=True)
class DetectionSettings:
    """How raw outputs become the detections that are scored.

    Attributes:
        anchors: ``Tensor[A, 4]`` the model's anchors, (cy, cx, h, w) in [-1, 1].
        chip_size: side of the chips, pixels.
        detect_thresh: minimum score of a detection.
        nms_overlap: IoU above which NMS suppresses the weaker of two detections.
        iou_thresh: IoU a detection needs with its ground truth to count as found.
    """

    anchors: Tensor
    chip_size: int
    detect_thresh: float = 0.5
    nms_overlap: float = 0.1
    iou_thresh: float = 0.1


def batch_targets(unit_boxes: Tensor, labels: Tensor, chip_size: int) -> list[tuple[Tensor, Tensor]]:
    """fastai batch targets → per chip ``(chip_boxes xyxy pixels, labels)``, padding removed."""
    unit_boxes, labels = unit_boxes.as_subclass(Tensor), labels.as_subclass(Tensor)
    out = []
    for boxes, lbls in zip(unit_boxes, labels):
        real = lbls > 0
        out.append((unit_to_pixel(boxes[real].float(), chip_size, chip_size).cpu(), lbls[real].cpu()))
    return out


def batch_detections(output: Sequence[Tensor], settings: DetectionSettings) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Raw model output → per chip ``(chip_boxes, labels, scores)`` above the threshold, after NMS."""
    detections = detect(
        [o.float() for o in output],
        settings.anchors.to(output[0].device),
        settings.chip_size,
        score_thresh=settings.detect_thresh,
        nms_overlap=settings.nms_overlap,
    )
    return [(d.chip_boxes.cpu(), d.labels.cpu(), d.scores.cpu()) for d in detections]


@dataclass
class AveragePrecisionMetric(Metric):
    """fastai metric: mean arcgis-style AP over the validation set (CONTRACT §5).

    Its column is named ``average_precision``; classes without ground truth in the
    validation set are left out of the mean.
    """

    settings: DetectionSettings
    predictions: list = field(default_factory=list)
    targets: list = field(default_factory=list)

    def reset(self) -> None:
        self.predictions, self.targets = [], []

    def accumulate(self, learn) -> None:
        unit_boxes, labels = learn.yb
        self.predictions += batch_detections(learn.pred, self.settings)
        self.targets += batch_targets(unit_boxes, labels, self.settings.chip_size)

    @property
    def value(self) -> float:
        ap = average_precision(self.predictions, self.targets, iou_thresh=self.settings.iou_thresh)
        return mean_average_precision(ap)

    @property
    def name(self) -> str:
        return "average_precision"


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, settings: DetectionSettings, autocast_dtype: torch.dtype | None,
             progress: bool = True) -> tuple[list, list]:
    """Runs ``model`` over ``loader``; returns per-chip detections and targets."""
    from fastprogress.fastprogress import progress_bar

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
