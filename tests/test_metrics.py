"""Average precision: hand-computed cases, a brute-force reference and pycocotools."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from geolearn.metrics import (
    COCO_IOU_THRESHOLDS,
    PrecisionRecall,
    average_precision,
    precision_recall,
    coco_average_precision,
    coco_map,
    mean_average_precision,
)


def pred(boxes, labels, scores):
    """One chip's predictions from plain lists."""
    return (
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(scores, dtype=torch.float32),
    )


def gt(boxes, labels):
    """One chip's ground truth from plain lists."""
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64)


NO_PRED = pred([], [], [])
NO_GT = gt([], [])
A = [10, 10, 30, 30]
B = [50, 50, 70, 80]


# ---------------------------------------------------------------- hand-computed AP (CONTRACT §5)


def test_perfect_predictions_score_one():
    predictions = [pred([A, B], [1, 1], [0.9, 0.8]), pred([B], [1], [0.7])]
    targets = [gt([A, B], [1, 1]), gt([B], [1])]
    assert average_precision(predictions, targets) == {1: 1.0}


def test_duplicate_on_a_taken_box_is_a_false_positive():
    # Pooled: 0.9 TP (chip 0), 0.8 duplicate FP (chip 0), 0.7 TP (chip 1); 2 ground-truth boxes.
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 → envelope 1 up to recall 1/2, 2/3 to 1.
    # AP = 1/2 · 1 + 1/2 · 2/3 = 5/6.
    predictions = [pred([A, [11, 10, 31, 30]], [1, 1], [0.9, 0.8]), pred([B], [1], [0.7])]
    targets = [gt([A], [1]), gt([B], [1])]
    assert average_precision(predictions, targets)[1] == pytest.approx(5 / 6, abs=1e-12)


def test_detections_are_matched_in_score_order_within_a_chip():
    # The 0.9 detection takes the box although it comes second; the 0.3 one is the duplicate.
    # Pooled: 0.9 TP, 0.5 TP, 0.3 FP → AP 1. Matching in input order would give 2/3.
    predictions = [pred([A, A], [1, 1], [0.3, 0.9]), pred([B], [1], [0.5])]
    targets = [gt([A], [1]), gt([B], [1])]
    assert average_precision(predictions, targets) == {1: 1.0}


def test_background_chip_false_positives_count():
    # Pooled: 0.9 FP (background chip), 0.8 TP → precision 0, 1/2; recall 0, 1. AP = 1/2.
    targets = [gt([A], [1]), NO_GT]
    predictions = [pred([A], [1], [0.8]), pred([B], [1], [0.9])]
    assert average_precision(predictions, targets) == {1: 0.5}
    # Without the background chip (what arcgis.learn does) the same detector scores 1.
    assert average_precision(predictions[:1], targets[:1]) == {1: 1.0}


def test_no_predictions_score_zero_for_classes_with_ground_truth():
    targets = [gt([A], [1]), gt([B], [2]), NO_GT]
    assert average_precision([NO_PRED, NO_PRED, NO_PRED], targets) == {1: 0.0, 2: 0.0}


def test_no_chips_gives_no_classes():
    assert average_precision([], []) == {}
    assert mean_average_precision(average_precision([], [])) == 0.0


def test_several_classes_and_a_class_without_ground_truth_left_out():
    # Class 1: one TP → 1. Class 2: 0.9 FP then 0.5 TP → precision 0, 1/2 at recall 0, 1 → 1/2.
    # Class 3 has detections but no ground truth: no AP, not in the mean.
    predictions = [
        pred([A, [80, 0, 99, 20]], [1, 2], [0.8, 0.9]),
        pred([B, [0, 80, 20, 99]], [2, 3], [0.5, 0.95]),
    ]
    targets = [gt([A], [1]), gt([B], [2])]
    ap = average_precision(predictions, targets)
    assert ap == {1: 1.0, 2: 0.5}
    assert mean_average_precision(ap) == 0.75


def test_classes_argument_restricts_and_orders_the_report():
    predictions = [pred([A], [1], [0.8]), pred([B], [2], [0.5])]
    targets = [gt([A], [1]), gt([B], [2])]
    assert average_precision(predictions, targets, classes=[2]) == {2: 1.0}
    assert list(average_precision(predictions, targets, classes=[2, 1, 5])) == [2, 1]


def test_wrong_class_on_a_box_is_a_false_positive():
    # The class-2 detection sits exactly on a class-1 box: FP for class 2, and class 1 is missed.
    # Class 2: 0.9 FP, 0.6 TP → AP 1/2.
    predictions = [pred([A], [2], [0.9]), pred([B], [2], [0.6])]
    targets = [gt([A], [1]), gt([B], [2])]
    assert average_precision(predictions, targets) == {1: 0.0, 2: 0.5}


def test_iou_thresh_decides_a_loosely_placed_box():
    # IoU([0,0,10,10], [5,0,15,10]) = 50 / 150 = 1/3: a hit at 0.1, a miss at 0.5.
    predictions = [pred([[5, 0, 15, 10]], [1], [0.9])]
    targets = [gt([[0, 0, 10, 10]], [1])]
    assert average_precision(predictions, targets, iou_thresh=0.1) == {1: 1.0}
    assert average_precision(predictions, targets, iou_thresh=0.5) == {1: 0.0}


def test_best_iou_over_all_classes_decides():
    # The contract's rule (arcgis.learn's): the class-1 detection's best box is the class-2 one
    # (IoU 90/110 ≈ 0.82), so it is a false positive although the class-1 box overlaps it with
    # IoU 70/130 ≈ 0.54 ≥ iou_thresh. The per-class VOC devkit would count it as a hit.
    predictions = [pred([[3, 0, 13, 10]], [1], [0.9])]
    targets = [gt([[0, 0, 10, 10], [2, 0, 12, 10]], [1, 2])]
    assert average_precision(predictions, targets) == {1: 0.0, 2: 0.0}
    # COCO matches within the class: there the detection takes the class-1 box.
    coco = coco_average_precision(predictions, targets, iou_thresholds=[0.5])
    assert coco == {1: pytest.approx(1.0), 2: 0.0}  # pycocotools' precision has an epsilon


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="predictions for 1 chips and targets for 2"):
        average_precision([NO_PRED], [NO_GT, NO_GT])
    with pytest.raises(ValueError, match=r"iou_thresh=0 is outside \(0, 1\]"):
        average_precision([NO_PRED], [NO_GT], iou_thresh=0)
    with pytest.raises(ValueError, match=r"predictions\[0\] boxes have shape \(2, 3\)"):
        average_precision([(torch.zeros(2, 3), torch.ones(2), torch.ones(2))], [NO_GT])
    with pytest.raises(ValueError, match=r"targets\[0\] has 1 boxes and 2 labels"):
        average_precision([NO_PRED], [(torch.zeros(1, 4), torch.ones(2))])


def test_mean_average_precision():
    assert mean_average_precision({1: 0.5, 2: 1.0}) == 0.75
    assert mean_average_precision({1: 0.5, 2: math.nan}) == 0.5
    assert mean_average_precision({}) == 0.0


# ---------------------------------------------------------------- random cases and references


def random_case(seed: int, *, chips: int = 20, classes: int = 3, crowded_chip: bool = False):
    """Detections jittered around ground truth, duplicates, wrong classes, strays and empty chips."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for chip in range(chips):
        n_gt = 0 if chip % 5 == 0 else int(rng.integers(1, 6))
        xy = rng.uniform(0, 200, (n_gt, 2))
        wh = rng.uniform(8, 50, (n_gt, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)
        gt_labels = rng.integers(1, classes + 1, n_gt)
        boxes, labels = [], []
        if chip % 7 != 3:  # some chips get no predictions at all
            for box, label, size in zip(gt_boxes, gt_labels, wh):
                for _ in range(int(rng.integers(0, 3))):
                    jitter = rng.normal(0, 0.15, 4) * np.tile(size, 2)
                    wrong = rng.random() < 0.15
                    boxes.append(box + jitter)
                    labels.append(int(rng.integers(1, classes + 1)) if wrong else int(label))
            for _ in range(int(rng.integers(0, 3))):
                xy0 = rng.uniform(0, 200, 2)
                boxes.append(np.concatenate([xy0, xy0 + rng.uniform(8, 50, 2)]))
                labels.append(int(rng.integers(1, classes + 1)))
            if crowded_chip and chip == 1:  # over COCO's 100 detections for one class
                for _ in range(130):
                    xy0 = rng.uniform(0, 200, 2)
                    boxes.append(np.concatenate([xy0, xy0 + rng.uniform(8, 50, 2)]))
                    labels.append(1)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        predictions.append(
            (torch.from_numpy(boxes), torch.tensor(labels, dtype=torch.int64), torch.from_numpy(rng.random(len(boxes))))
        )
        targets.append((torch.from_numpy(gt_boxes), torch.from_numpy(gt_labels)))
    return predictions, targets


def reference_ap(predictions, targets, iou_thresh):
    """Brute force, written from CONTRACT §5 without the module's code: python loops and floats.

    Integrates with the identity AP = (1/n_gt) · Σ over true positives of the best precision at
    that rank or later, rather than the module's recall-step sum.
    """
    def iou(a, b):
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        if w <= 0 or h <= 0:
            return 0.0
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    records, n_gt = [], {}
    for (boxes, labels, scores), (gt_boxes, gt_labels) in zip(predictions, targets):
        boxes, labels, scores = boxes.tolist(), labels.tolist(), scores.tolist()
        gt_boxes, gt_labels = gt_boxes.tolist(), gt_labels.tolist()
        for label in gt_labels:
            n_gt[label] = n_gt.get(label, 0) + 1
        taken = set()
        for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
            ious = [iou(boxes[i], g) for g in gt_boxes]
            best = max(range(len(ious)), key=lambda j: ious[j]) if ious else None
            hit = best is not None and ious[best] >= iou_thresh and gt_labels[best] == labels[i] and best not in taken
            if hit:
                taken.add(best)
            records.append((scores[i], labels[i], hit))
    result = {}
    for cls in sorted(n_gt):
        hits = [hit for score, label, hit in sorted(records, key=lambda r: -r[0]) if label == cls]
        precisions, tp = [], 0
        for rank, hit in enumerate(hits, start=1):
            tp += hit
            precisions.append(tp / rank)
        result[cls] = sum(max(precisions[k:]) for k, hit in enumerate(hits) if hit) / n_gt[cls]
    return result


@pytest.mark.parametrize("iou_thresh", [0.1, 0.5, 0.75])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_brute_force_reference(seed, iou_thresh):
    predictions, targets = random_case(seed)
    ap = average_precision(predictions, targets, iou_thresh=iou_thresh)
    expected = reference_ap(predictions, targets, iou_thresh)
    assert ap.keys() == expected.keys()
    assert list(ap.values()) == pytest.approx(list(expected.values()), abs=1e-12)
    assert 0 < mean_average_precision(ap) < 1  # a case that exercises both hits and misses


def run_cocoeval(predictions, targets, *, classes: int = 3) -> COCOeval:
    """pycocotools' bbox evaluation (maxDets 1/10/100, default area ranges) of in-memory chips."""
    images, annotations, results = [], [], []
    for image_id, ((boxes, labels, scores), (gt_boxes, gt_labels)) in enumerate(zip(predictions, targets), start=1):
        images.append({"id": image_id, "width": 256, "height": 256})
        for (x1, y1, x2, y2), label in zip(gt_boxes.tolist(), gt_labels.tolist()):
            # ids from 1: COCOeval treats a match with annotation id 0 as no match
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
        for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            results.append(
                {"image_id": image_id, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images, "annotations": annotations, "categories": [{"id": c} for c in range(1, classes + 1)],
        }
        coco_gt.createIndex()
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluation.params.maxDets = [1, 10, 100]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_coco_map_matches_pycocotools(seed):
    predictions, targets = random_case(seed, crowded_chip=seed == 4)
    evaluation = run_cocoeval(predictions, targets)
    assert evaluation.stats[0] > 0
    assert coco_map(predictions, targets) == pytest.approx(evaluation.stats[0], abs=1e-6)

    # Per class and at IoU 0.5 alone: precision[T, R, K, area 'all', maxDets 100].
    precision = evaluation.eval["precision"][:, :, :, 0, 2]
    per_class = coco_average_precision(predictions, targets)
    at_50 = coco_average_precision(predictions, targets, iou_thresholds=[0.5])
    for k, cls in enumerate(evaluation.params.catIds):
        if (precision[:, :, k] > -1).any():
            assert per_class[cls] == pytest.approx(precision[:, :, k].mean(), abs=1e-9)
            assert at_50[cls] == pytest.approx(precision[0, :, k].mean(), abs=1e-9)
        else:
            assert cls not in per_class


def test_coco_thresholds_are_pycocotools():
    assert COCO_IOU_THRESHOLDS == tuple(COCOeval(iouType="bbox").params.iouThrs.tolist())


def test_coco_keeps_the_best_scored_hundred_per_chip_and_class():
    # 150 detections on one box: the first 100 by score hold the hit (0.99) → AP 1 with COCO's cap;
    # with a cap of 1, only the 0.99 hit remains → still 1; the misses alone score 0.
    rng = np.random.default_rng(0)
    strays = np.tile([[100.0, 100.0, 120.0, 120.0]], (149, 1))
    boxes = torch.from_numpy(np.concatenate([[A], strays]))
    scores = torch.from_numpy(np.concatenate([[0.99], rng.uniform(0.1, 0.9, 149)]))
    predictions = [(boxes, torch.ones(150, dtype=torch.int64), scores)]
    targets = [gt([A], [1])]
    assert coco_map(predictions, targets) == pytest.approx(1.0)
    assert coco_map(predictions, targets, max_detections=1) == pytest.approx(1.0)
    scores_low = scores.clone()
    scores_low[0] = 0.01  # now the hit is ranked 150th: cut by the cap of 100
    assert coco_map([(boxes, predictions[0][1], scores_low)], targets) == 0.0


def test_coco_equal_ious_go_to_the_later_box_as_in_pycocotools():
    # The 0.9 detection overlaps both boxes with IoU 75/125 = 0.6. pycocotools gives it the later
    # box, which the 0.8 detection sits on exactly; that one is then left with IoU 1/3 < 0.5 → FP.
    # Recall 1/2 at precision 1: 51 of the 101 recall points → AP50 = 51/101.
    predictions = [pred([[2.5, 0, 12.5, 10], [5, 0, 15, 10]], [1, 1], [0.9, 0.8])]
    targets = [gt([[0, 0, 10, 10], [5, 0, 15, 10]], [1, 1])]
    assert coco_map(predictions, targets, iou_thresholds=[0.5]) == pytest.approx(51 / 101)
    evaluation = run_cocoeval(predictions, targets, classes=1)
    assert coco_map(predictions, targets) == pytest.approx(evaluation.stats[0], abs=1e-12)


def test_precision_recall_curve_and_best_f1_by_hand():
    # Two chips, three ground-truth boxes. By score: 0.9 TP (chip 0), 0.8 FP (chip 1, no overlap),
    # 0.7 TP (chip 1), 0.6 duplicate of the 0.9 box (FP). Precision 1, 1/2, 2/3, 2/4; recall 1/3, 1/3, 2/3, 2/3.
    predictions = [
        (torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]]), torch.tensor([1, 1]), torch.tensor([0.9, 0.6])),
        (torch.tensor([[50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 10.0, 10.0]]), torch.tensor([1, 1]), torch.tensor([0.8, 0.7])),
    ]
    targets = [
        (torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]]), torch.tensor([1, 1])),
        (torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1])),
    ]
    curve = precision_recall(predictions, targets, iou_thresh=0.5)
    assert curve.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert curve.precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    f1, precision, recall, thresh = curve.best_f1()
    assert (f1, precision, recall, thresh) == pytest.approx((2 / 3, 2 / 3, 2 / 3, 0.7))
    # The AP of the same matching: envelope 1 up to recall 1/3, 2/3 up to 2/3.
    assert average_precision(predictions, targets, iou_thresh=0.5)[1] == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))


def test_precision_recall_of_a_class_without_detections_is_empty():
    curve = precision_recall([(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))],
                             [(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([1]))])
    assert len(curve.scores) == 0 and curve.best_f1() == (0.0, 0.0, 0.0, 0.0)


def test_precision_recall_pools_every_class_with_cls_none():
    # Chip 0: a pool box and a tree box. By score: 0.9 tree on the tree (TP), 0.8 pool on the tree
    # box (its best box is another class: FP), 0.5 pool on the pool (TP). Three boxes in all.
    predictions = [(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
                    torch.tensor([2, 1, 1]), torch.tensor([0.9, 0.8, 0.5]))]
    targets = [(torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0]]),
                torch.tensor([2, 1, 1]))]
    curve = precision_recall(predictions, targets, iou_thresh=0.5, cls=None)
    assert curve.scores.tolist() == pytest.approx([0.9, 0.8, 0.5])
    assert curve.precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    # One class alone: the pools (two boxes), found by the 0.5 detection only.
    pools = precision_recall(predictions, targets, iou_thresh=0.5, cls=1)
    assert pools.precision.tolist() == pytest.approx([0.0, 0.5]) and pools.recall.tolist() == pytest.approx([0.0, 0.5])


def test_best_f1_cut_lies_halfway_below_the_best_point():
    # Two ground-truth boxes; by score: TP 0.9, FP 0.7, TP 0.4, FP 0.2.
    # F1 down to each: 2/3 (p 1, r 1/2), 1/2, 4/5 (p 2/3, r 1), 2/3 -> the best point is at 0.4.
    curve = PrecisionRecall(np.array([0.9, 0.7, 0.4, 0.2]), np.array([1.0, 0.5, 2 / 3, 0.5]),
                            np.array([0.5, 0.5, 1.0, 1.0]))
    assert curve.best_f1()[0] == pytest.approx(0.8) and curve.best_f1()[3] == pytest.approx(0.4)
    assert curve.best_f1_cut() == pytest.approx(0.3)  # halfway between 0.4 and 0.2
    # Best at the last detection: halfway down to the floor the detections were made at.
    last = PrecisionRecall(np.array([0.9, 0.3]), np.array([1.0, 1.0]), np.array([0.5, 1.0]))
    assert last.best_f1_cut(floor=0.1) == pytest.approx(0.2)
    assert PrecisionRecall(np.zeros(0), np.zeros(0), np.zeros(0)).best_f1_cut() is None
