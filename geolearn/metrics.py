"""Average precision for object detection: arcgis.learn's metric and COCO's, as pure functions.

Three numbers go by the name "average precision"; they differ in how a detection is matched
to a ground-truth box and in how the precision/recall curve is integrated:

* **arcgis-style AP@0.1** (:func:`average_precision`, the default). What
  ``RetinaNet.average_precision_score`` and the ``average_precision`` column of ``fit`` report.
  A detection takes its best-IoU ground-truth box over *all* classes of its chip and is a true
  positive when that IoU is at least ``iou_thresh`` (0.1 by default: a loose "is it on the
  object" test that suits small objects in imagery), the classes agree and the box is not yet
  taken. The curve is integrated with VOC 2010+ all-point interpolation.
* **VOC AP@0.5**: the same integration at ``iou_thresh=0.5``. The PASCAL devkit compares a
  detection only with boxes of its own class; on data where boxes of different classes do not
  overlap the two rules agree.
* **COCO mAP@[.5:.95]** (:func:`coco_map`). A detection takes the best-IoU *unmatched* box of
  its *own* class, the curve is sampled at 101 recall points, at most 100 detections per image
  and class count, and the AP is averaged over the IoU thresholds 0.50, 0.55, ..., 0.95.
  It equals ``COCOeval(...).stats[0]`` of pycocotools for ``iouType='bbox'``.

Formats shared by every function here, one entry per chip and in the same chip order:

* ``predictions``: ``(chip_boxes, labels, scores)`` with ``chip_boxes`` ``Tensor[K, 4]`` in
  (x1, y1, x2, y2) pixels of the chip, ``labels`` ``Tensor[K]`` integer class indices (≥ 1,
  0 is the background) and ``scores`` ``Tensor[K]`` in [0, 1]. For :func:`average_precision`
  they are already thresholded at ``detect_thresh`` and non-maximum suppressed (at
  ``nms_overlap``) by the caller.
* ``targets``: ``(chip_boxes, labels)`` with ``chip_boxes`` ``Tensor[M, 4]`` and ``labels``
  ``Tensor[M]`` in the same formats. A background chip has ``M == 0``; its detections are
  false positives (arcgis.learn skips such chips; geolearn counts them, see the docs'
  "Deliberate differences").

NumPy arrays are accepted wherever a tensor is; tensors may live on any device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "average_precision",
    "precision_recall",
    "PrecisionRecall",
    "mean_average_precision",
    "coco_average_precision",
    "coco_map",
]

ChipPrediction = tuple[Tensor, Tensor, Tensor]
ChipTarget = tuple[Tensor, Tensor]

# Written exactly as pycocotools' Params does, so that the float values (0.6000000000000001 ...)
# and therefore the threshold comparisons are bit-identical.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(
    float(t) for t in np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
)
_COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def average_precision(
    predictions: Sequence[ChipPrediction],
    targets: Sequence[ChipTarget],
    *,
    iou_thresh: float = 0.1,
    classes: Iterable[int] | None = None,
) -> dict[int, float]:
    """VOC all-point average precision per class, with arcgis.learn's matching rule.

    Per chip, the detections are taken in descending score order (ties keep their input
    order). A detection is a true positive when its best-IoU ground-truth box, over *all*
    ground-truth boxes of the chip whatever their class, has IoU ≥ ``iou_thresh``, the same
    class as the detection, and has not been taken by an earlier true positive; otherwise it
    is a false positive. In particular a detection whose best box belongs to another class is
    a false positive even when a box of its own class overlaps it less, and a second detection
    on a taken box is a duplicate, hence a false positive.

    All chips are then pooled and sorted by descending score (stable: ties keep chip order,
    then score order within the chip). Per class, the cumulative true and false positives give
    ``precision = TP / (TP + FP)`` and ``recall = TP / n_gt``; the AP is the area under the
    precision envelope (the running maximum of precision taken from the right) over all
    recall points, the VOC 2010+ definition.

    Args:
        predictions: One ``(chip_boxes Tensor[K, 4] xyxy pixels, labels Tensor[K] int ≥ 1,
            scores Tensor[K])`` per chip, already thresholded at ``detect_thresh`` and NMS'd.
        targets: One ``(chip_boxes Tensor[M, 4] xyxy pixels, labels Tensor[M] int ≥ 1)`` per
            chip, in the order of ``predictions``. ``M`` may be 0 (a background chip).
        iou_thresh: The least IoU, in (0, 1], of a true positive with its ground-truth box.
            0.1 is arcgis.learn's default; 0.5 gives the PASCAL VOC metric.
        classes: The class indices to report. ``None`` reports every class that has ground
            truth. Either way a class without ground truth is left out (it has no AP).

    Returns:
        ``{class_index: AP}`` with AP in [0, 1], in the order of ``classes`` (ascending when
        ``None``). A class with ground truth and no true positive has AP 0.

    Raises:
        ValueError: ``predictions`` and ``targets`` differ in length, a chip's tensors have the
            wrong shapes, or ``iou_thresh`` is outside (0, 1].

    Examples:
        >>> predictions = [  # chip 0: a pool found (IoU 0.68) and a false alarm; chip 1: a tree, IoU 0.25
        ...     (torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 70.0, 70.0]]), torch.tensor([1, 1]),
        ...      torch.tensor([0.9, 0.6])),
        ...     (torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([2]), torch.tensor([0.8])),
        ... ]
        >>> targets = [
        ...     (torch.tensor([[12.0, 12.0, 32.0, 32.0]]), torch.tensor([1])),
        ...     (torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([2])),
        ... ]
        >>> average_precision(predictions, targets)  # arcgis-style AP@0.1
        {1: 1.0, 2: 1.0}
        >>> average_precision(predictions, targets, iou_thresh=0.5)  # VOC AP@0.5: the tree box is too loose
        {1: 1.0, 2: 0.0}
    """
    scores, labels, is_tp, gt_counts = _pooled_matches(predictions, targets, iou_thresh)
    return {
        cls: _all_point_ap(is_tp[labels == cls], gt_counts[cls])
        for cls in _reported_classes(classes, gt_counts)
    }


class PrecisionRecall(NamedTuple):
    """One class's precision/recall curve, one point per detection in descending score order.

    Attributes:
        scores: ``float64[K]`` the detections' scores, descending.
        precision: ``float64[K]`` true positives / detections down to each score.
        recall: ``float64[K]`` true positives / ground-truth boxes down to each score.

    Examples:
        >>> curve = PrecisionRecall(np.array([0.9, 0.5]), np.array([1.0, 0.5]), np.array([0.5, 0.5]))
        >>> curve.recall[-1]  # the recall of all detections
        np.float64(0.5)
    """

    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    def _f1(self) -> np.ndarray:
        return 2 * self.precision * self.recall / np.maximum(self.precision + self.recall, 1e-12)

    def best_f1(self) -> tuple[float, float, float, float]:
        """The point of highest F1: ``(f1, precision, recall, score threshold)``; zeros without detections.

        Examples:
            >>> PrecisionRecall(np.array([0.9, 0.5]), np.array([1.0, 0.5]), np.array([0.5, 0.5])).best_f1()
            (0.6666666666666666, 1.0, 0.5, 0.9)
        """
        if len(self.scores) == 0:
            return 0.0, 0.0, 0.0, 0.0
        f1 = self._f1()
        best = int(np.argmax(f1))
        return float(f1[best]), float(self.precision[best]), float(self.recall[best]), float(self.scores[best])

    def best_f1_cut(self, floor: float = 0.0) -> float | None:
        """A score threshold that keeps exactly the detections of the best-F1 point; None without detections.

        Detections are kept when their score *exceeds* the threshold (as in
        :func:`geolearn.models.postprocess.detect`), so the cut lies halfway between the lowest
        kept score and the next one down (``floor``, the threshold the detections were made at,
        below the last). Halfway, not at the kept score, leaves room for the scores of new
        imagery to differ a little.

        Args:
            floor: the score threshold the curve's detections were made at. Default 0.

        Examples:
            >>> PrecisionRecall(np.array([0.9, 0.5, 0.3]), np.array([1.0, 1.0, 0.67]),
            ...                 np.array([0.5, 1.0, 1.0])).best_f1_cut()
            0.4
        """
        if len(self.scores) == 0:
            return None
        best = int(np.argmax(self._f1()))
        lower = self.scores[best + 1] if best + 1 < len(self.scores) else floor
        return float((self.scores[best] + lower) / 2)


def precision_recall(
    predictions: Sequence[ChipPrediction],
    targets: Sequence[ChipTarget],
    *,
    iou_thresh: float = 0.1,
    cls: int | None = 1,
) -> PrecisionRecall:
    """The precision/recall curve of one class, or of all, matched as :func:`average_precision` matches.

    Args:
        predictions: as for :func:`average_precision`.
        targets: as for :func:`average_precision`.
        iou_thresh: the least IoU, in (0, 1], of a true positive with its ground-truth box.
        cls: the class index, or None for every class pooled (a detection is still a true
            positive only on a box of its own class; recall is over all ground-truth boxes).
            Default 1 (the first object class).

    Returns:
        :class:`PrecisionRecall`; recall is 0 throughout when the class has no ground truth.

    Raises:
        ValueError: as for :func:`average_precision`.

    Examples:
        >>> predictions = [(torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]]), torch.tensor([1, 1]),
        ...                 torch.tensor([0.9, 0.8]))]
        >>> targets = [(torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 0.0, 50.0, 10.0]]), torch.tensor([1, 1]))]
        >>> curve = precision_recall(predictions, targets, iou_thresh=0.5)
        >>> curve.precision.tolist(), curve.recall.tolist()
        ([1.0, 0.5], [0.5, 0.5])
    """
    scores, labels, is_tp, gt_counts = _pooled_matches(predictions, targets, iou_thresh)
    mine = labels == cls if cls is not None else np.ones(len(labels), dtype=bool)
    n_truth = gt_counts.get(cls, 0) if cls is not None else sum(gt_counts.values())
    tp = np.cumsum(is_tp[mine])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / max(n_truth, 1)
    return PrecisionRecall(scores[mine].astype(np.float64), precision.astype(np.float64), recall.astype(np.float64))


def _pooled_matches(
    predictions: Sequence[ChipPrediction], targets: Sequence[ChipTarget], iou_thresh: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """arcgis.learn's matching (see :func:`average_precision`), pooled over chips by descending score.

    Returns:
        ``(scores, labels, is_tp, ground-truth count per class)``, the first three in descending
        score order.
    """
    _check_chip_count(predictions, targets)
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh={iou_thresh!r} is outside (0, 1]; arcgis.learn uses 0.1, PASCAL VOC 0.5.")

    pooled_scores, pooled_labels, pooled_tp, gt_labels_per_chip = [], [], [], []
    for chip, (prediction, target) in enumerate(zip(predictions, targets)):
        boxes, labels, scores = _chip_prediction(prediction, chip)
        gt_boxes, gt_labels = _chip_target(target, chip)
        gt_labels_per_chip.append(gt_labels)

        order = np.argsort(-scores, kind="stable")
        boxes, labels, scores = boxes[order], labels[order], scores[order]
        is_tp = np.zeros(len(scores), dtype=bool)
        if len(scores) and len(gt_labels):
            iou = _pairwise_iou(boxes, gt_boxes)
            best_gt = iou.argmax(axis=1)  # first box on IoU ties
            best_iou = iou[np.arange(len(best_gt)), best_gt]
            # A detection's best box does not depend on which boxes are taken, so "not yet
            # taken" reduces to: the first candidate (in score order) of each box takes it.
            candidates = np.flatnonzero((best_iou >= iou_thresh) & (gt_labels[best_gt] == labels))
            _, first = np.unique(best_gt[candidates], return_index=True)
            is_tp[candidates[first]] = True
        pooled_scores.append(scores)
        pooled_labels.append(labels)
        pooled_tp.append(is_tp)

    scores = np.concatenate(pooled_scores) if pooled_scores else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    labels = np.concatenate(pooled_labels)[order] if pooled_labels else np.zeros(0, dtype=np.int64)
    is_tp = np.concatenate(pooled_tp)[order] if pooled_tp else np.zeros(0, dtype=bool)
    gt_counts = _class_counts(gt_labels_per_chip)

    return scores[order], labels, is_tp, gt_counts


def mean_average_precision(ap: Mapping[int, float]) -> float:
    """The unweighted mean of per-class APs, as ``average_precision_score(mean=True)`` reports.

    NaN entries (a class whose AP is undefined, from a caller's own dict) are skipped. With no
    class left the result is 0.0 rather than NaN: a validation set without any ground truth
    scores 0, so ``fit``'s best-epoch tracking and early stopping keep comparing numbers.

    Args:
        ap: ``{class_index: AP}`` as :func:`average_precision` or
            :func:`coco_average_precision` return.

    Returns:
        The mean AP in [0, 1], 0.0 for an empty mapping.

    Examples:
        >>> mean_average_precision({1: 1.0, 2: 0.5})
        0.75
        >>> mean_average_precision({1: 0.5, 2: float("nan")}), mean_average_precision({})
        (0.5, 0.0)
    """
    values = [float(v) for v in ap.values() if not math.isnan(float(v))]
    return sum(values) / len(values) if values else 0.0


def coco_average_precision(
    predictions: Sequence[ChipPrediction],
    targets: Sequence[ChipTarget],
    *,
    iou_thresholds: Sequence[float] | None = None,
    max_detections: int = 100,
    classes: Iterable[int] | None = None,
) -> dict[int, float]:
    """COCO-style AP per class, computed the way pycocotools' ``COCOeval`` does for bboxes.

    Per chip and class, the detections are sorted by descending score (stable) and the first
    ``max_detections`` kept. At each IoU threshold, each detection in turn takes the unmatched
    ground-truth box *of its own class* with the highest IoU, if that IoU is ≥ the threshold
    (on equal IoUs the later box, as pycocotools does). Pooled over chips, per class and
    threshold, the precision envelope is sampled at the 101 recall points 0, 0.01, ..., 1
    (0 beyond the highest recall reached); the class's AP is the mean over points and
    thresholds. Area range 'all', no crowd boxes.

    Args:
        predictions: One ``(chip_boxes Tensor[K, 4] xyxy pixels, labels Tensor[K] int ≥ 1,
            scores Tensor[K])`` per chip; usually not thresholded (COCO wants the whole curve).
        targets: One ``(chip_boxes Tensor[M, 4] xyxy pixels, labels Tensor[M])`` per chip.
        iou_thresholds: IoU thresholds to average over; ``None`` (the default) is COCO's
            0.50:0.05:0.95 (:data:`COCO_IOU_THRESHOLDS`), ``[0.5]`` gives AP50.
        max_detections: Detections kept per chip and class (COCO's ``maxDets``). Default 100.
        classes: The class indices to report; ``None`` (the default) reports every class with
            ground truth. A class without ground truth is left out either way.

    Returns:
        ``{class_index: AP}`` with AP in [0, 1], in the order of ``classes`` (ascending when
        ``None``).

    Raises:
        ValueError: ``predictions`` and ``targets`` differ in length, a chip's tensors have the
            wrong shapes, a threshold is outside [0, 1], or ``max_detections`` < 1.

    Examples:
        >>> predictions = [  # chip 0: a pool found (IoU 0.68) and a false alarm; chip 1: a tree, IoU 0.25
        ...     (torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 70.0, 70.0]]), torch.tensor([1, 1]),
        ...      torch.tensor([0.9, 0.6])),
        ...     (torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([2]), torch.tensor([0.8])),
        ... ]
        >>> targets = [
        ...     (torch.tensor([[12.0, 12.0, 32.0, 32.0]]), torch.tensor([1])),
        ...     (torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([2])),
        ... ]
        >>> {c: round(ap, 3) for c, ap in coco_average_precision(predictions, targets).items()}
        {1: 0.4, 2: 0.0}
        >>> {c: round(ap, 3) for c, ap in coco_average_precision(predictions, targets, iou_thresholds=[0.5]).items()}
        {1: 1.0, 2: 0.0}
    """
    _check_chip_count(predictions, targets)
    thresholds = np.asarray(COCO_IOU_THRESHOLDS if iou_thresholds is None else iou_thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or len(thresholds) == 0 or ((thresholds < 0) | (thresholds > 1)).any():
        raise ValueError(f"iou_thresholds={iou_thresholds!r} must be a non-empty list of IoUs in [0, 1].")
    if max_detections < 1:
        raise ValueError(f"max_detections={max_detections!r} must be at least 1 (COCO uses 100).")

    scores_per_class: dict[int, list[np.ndarray]] = {}
    matches_per_class: dict[int, list[np.ndarray]] = {}
    gt_labels_per_chip = []
    for chip, (prediction, target) in enumerate(zip(predictions, targets)):
        boxes, labels, scores = _chip_prediction(prediction, chip)
        gt_boxes, gt_labels = _chip_target(target, chip)
        gt_labels_per_chip.append(gt_labels)
        for cls in np.unique(labels).tolist():
            in_class = np.flatnonzero(labels == cls)
            order = in_class[np.argsort(-scores[in_class], kind="mergesort")[:max_detections]]
            matched = _coco_match(boxes[order], gt_boxes[gt_labels == cls], thresholds)
            scores_per_class.setdefault(cls, []).append(scores[order])
            matches_per_class.setdefault(cls, []).append(matched)

    gt_counts = _class_counts(gt_labels_per_chip)
    result = {}
    for cls in _reported_classes(classes, gt_counts):
        if cls in scores_per_class:
            scores = np.concatenate(scores_per_class[cls])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate(matches_per_class[cls], axis=1)[:, order]
        else:
            matched = np.zeros((len(thresholds), 0), dtype=bool)
        result[cls] = float(_coco_precision_at_recalls(matched, gt_counts[cls]).mean())
    return result


def coco_map(
    predictions: Sequence[ChipPrediction],
    targets: Sequence[ChipTarget],
    *,
    iou_thresholds: Sequence[float] | None = None,
    max_detections: int = 100,
) -> float:
    """COCO mAP@[.5:.95]: :func:`coco_average_precision` averaged over the classes with ground truth.

    Equals pycocotools' ``COCOeval(gt, dt, 'bbox').stats[0]`` (maxDets 100, area 'all'), except
    that with no ground truth at all it returns 0.0 where pycocotools returns -1.

    Args:
        predictions: As :func:`coco_average_precision`.
        targets: As :func:`coco_average_precision`.
        iou_thresholds: As :func:`coco_average_precision`; ``None`` (the default) is 0.50:0.05:0.95.
        max_detections: Detections kept per chip and class. Default 100.

    Returns:
        The mean AP in [0, 1].

    Raises:
        ValueError: As :func:`coco_average_precision`.

    Examples:
        >>> predictions = [  # chip 0: a pool found (IoU 0.68) and a false alarm; chip 1: a tree, IoU 0.25
        ...     (torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 70.0, 70.0]]), torch.tensor([1, 1]),
        ...      torch.tensor([0.9, 0.6])),
        ...     (torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([2]), torch.tensor([0.8])),
        ... ]
        >>> targets = [
        ...     (torch.tensor([[12.0, 12.0, 32.0, 32.0]]), torch.tensor([1])),
        ...     (torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([2])),
        ... ]
        >>> round(coco_map(predictions, targets), 3)  # (0.4 + 0.0) / 2
        0.2
    """
    ap = coco_average_precision(
        predictions, targets, iou_thresholds=iou_thresholds, max_detections=max_detections
    )
    return mean_average_precision(ap)


def _all_point_ap(is_tp: np.ndarray, n_gt: int) -> float:
    """VOC 2010+ AP of one class from its score-sorted TP flags and its count of ground truth."""
    tp = np.cumsum(is_tp)
    fp = np.cumsum(~is_tp)
    recall = np.concatenate(([0.0], tp / n_gt, [1.0]))
    precision = np.concatenate(([0.0], tp / np.maximum(tp + fp, 1), [0.0]))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def _coco_match(dt_boxes: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """pycocotools' greedy matching of one chip and class: ``bool[T, K]``, detection k matched at threshold t.

    ``dt_boxes`` must be in descending score order. Vectorised over the thresholds; the loop
    over detections is inherent (each takes a box from the ones left).
    """
    matched = np.zeros((len(thresholds), len(dt_boxes)), dtype=bool)
    if len(dt_boxes) == 0 or len(gt_boxes) == 0:
        return matched
    iou = _pairwise_iou(dt_boxes, gt_boxes)
    limits = np.minimum(thresholds, 1 - 1e-10)  # as COCOeval.evaluateImg
    taken = np.zeros((len(thresholds), len(gt_boxes)), dtype=bool)
    rows = np.arange(len(thresholds))
    last = len(gt_boxes) - 1
    for k in range(len(dt_boxes)):
        free_iou = np.where(taken, -1.0, iou[k])  # [T, M]
        best = last - np.argmax(free_iou[:, ::-1], axis=1)  # the later box on IoU ties
        hit = free_iou[rows, best] >= limits
        matched[hit, k] = True
        taken[rows[hit], best[hit]] = True
    return matched


def _coco_precision_at_recalls(matched: np.ndarray, n_gt: int) -> np.ndarray:
    """COCOeval.accumulate for one class: precision ``[T, 101]`` from score-sorted matches ``[T, K]``."""
    tp = np.cumsum(matched, axis=1).astype(float)
    fp = np.cumsum(~matched, axis=1).astype(float)
    recall = tp / n_gt
    precision = tp / (fp + tp + np.spacing(1))  # pycocotools' epsilon, kept for bit-equality
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((len(matched), len(_COCO_RECALL_THRESHOLDS)))
    for t in range(len(matched)):
        at = np.searchsorted(recall[t], _COCO_RECALL_THRESHOLDS, side="left")
        reached = at < matched.shape[1]
        sampled[t, reached] = envelope[t, at[reached]]
    return sampled


def _pairwise_iou(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU ``float64[K, M]`` of xyxy boxes; a zero-area pair (0/0) counts as IoU 0."""
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(gt_boxes)).numpy()
    return np.nan_to_num(iou, nan=0.0)


def _chip_prediction(prediction: ChipPrediction, chip: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        boxes, labels, scores = prediction
    except (TypeError, ValueError):
        raise ValueError(
            f"predictions[{chip}] must be a (chip_boxes, labels, scores) triple, got {type(prediction).__name__}."
        ) from None
    boxes, labels, scores = _boxes(boxes, "predictions", chip), _vector(labels, np.int64), _vector(scores, np.float64)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(
            f"predictions[{chip}] has {len(boxes)} boxes, {len(labels)} labels and {len(scores)} scores; "
            "they must be equally many."
        )
    return boxes, labels, scores


def _chip_target(target: ChipTarget, chip: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        boxes, labels = target
    except (TypeError, ValueError):
        raise ValueError(f"targets[{chip}] must be a (chip_boxes, labels) pair, got {type(target).__name__}.") from None
    boxes, labels = _boxes(boxes, "targets", chip), _vector(labels, np.int64)
    if len(boxes) != len(labels):
        raise ValueError(f"targets[{chip}] has {len(boxes)} boxes and {len(labels)} labels; they must be equally many.")
    return boxes, labels


def _boxes(boxes: Tensor | np.ndarray, name: str, chip: int) -> np.ndarray:
    array = _to_numpy(boxes, np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name}[{chip}] boxes have shape {tuple(array.shape)}; expected [N, 4] in (x1, y1, x2, y2).")
    return array


def _vector(values: Tensor | np.ndarray, dtype: type) -> np.ndarray:
    return _to_numpy(values, dtype).reshape(-1)


def _to_numpy(values: Tensor | np.ndarray, dtype: type) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64 if dtype is np.float64 else torch.int64).numpy()
    return np.ascontiguousarray(values, dtype=dtype)


def _check_chip_count(predictions: Sequence, targets: Sequence) -> None:
    if len(predictions) != len(targets):
        raise ValueError(
            f"Got predictions for {len(predictions)} chips and targets for {len(targets)}; "
            "pass one entry per chip, in the same order, to both."
        )


def _class_counts(labels_per_chip: list[np.ndarray]) -> dict[int, int]:
    if not labels_per_chip:
        return {}
    classes, counts = np.unique(np.concatenate(labels_per_chip), return_counts=True)
    return dict(zip(classes.tolist(), counts.tolist()))


def _reported_classes(classes: Iterable[int] | None, gt_counts: Mapping[int, int]) -> list[int]:
    if classes is None:
        return sorted(gt_counts)
    return [cls for cls in dict.fromkeys(int(c) for c in classes) if gt_counts.get(cls, 0) > 0]
