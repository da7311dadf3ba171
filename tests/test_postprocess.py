"""From network outputs to detections: geolearn.models.postprocess.detect."""

from __future__ import annotations

import torch

from geolearn.data.boxes import pixel_to_unit
from geolearn.models.anchors import make_anchors
from geolearn.models.boxes import cthw_to_chip, decode, encode, xyxy_to_cthw
from geolearn.models.postprocess import Detections, detect

CHIP = 64
ANCHORS = make_anchors(CHIP)  # 9 per cell; anchor 9 * k + 3 is cell k's (ratio 1, scale 1)


def quiet_outputs(n_classes: int = 2, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits far below any threshold, zero deltas."""
    return torch.full((batch, len(ANCHORS), n_classes), -10.0), torch.zeros(batch, len(ANCHORS), 4)


def test_one_confident_anchor_gives_its_box_in_pixels():
    cls_logits, box_deltas = quiet_outputs()
    cell_anchor = 9 * 10 + 3  # P3 row 1, column 2; 32 × 32 px around (20, 12)
    cls_logits[0, cell_anchor, 1] = 5.0
    (found,) = detect([cls_logits, box_deltas], ANCHORS, CHIP)
    assert isinstance(found, Detections)
    torch.testing.assert_close(found.chip_boxes, torch.tensor([[4.0, 0.0, 36.0, 28.0]]))  # clipped at the top
    assert found.labels.tolist() == [2]
    torch.testing.assert_close(found.scores, torch.sigmoid(torch.tensor([5.0])))
    assert found.chip_boxes.dtype == torch.float32 and found.labels.dtype == torch.int64


def test_deltas_move_the_box():
    cls_logits, box_deltas = quiet_outputs()
    cell_anchor = 9 * 27 + 3  # P3 row 3, column 3: centred at (28, 28)
    target = torch.tensor([[22.0, 20.0, 42.0, 30.0]])
    box_deltas[0, cell_anchor] = encode(xyxy_to_cthw(pixel_to_unit(target, CHIP, CHIP)), ANCHORS[cell_anchor])[0]
    cls_logits[0, cell_anchor, 0] = 3.0
    (found,) = detect([cls_logits, box_deltas], ANCHORS, CHIP)
    torch.testing.assert_close(found.chip_boxes, target)
    assert found.labels.tolist() == [1]


def test_nms_removes_duplicates_of_one_class():
    cls_logits, box_deltas = quiet_outputs()
    cls_logits[0, 9 * 27 + 3, 0] = 4.0  # scale 1
    cls_logits[0, 9 * 27 + 4, 0] = 3.0  # scale 2^(-1/3), same centre: IoU 0.63
    (found,) = detect([cls_logits, box_deltas], ANCHORS, CHIP, nms_overlap=0.5)
    assert len(found.scores) == 1
    torch.testing.assert_close(found.scores, torch.sigmoid(torch.tensor([4.0])))
    (loose,) = detect([cls_logits, box_deltas], ANCHORS, CHIP, nms_overlap=0.7)
    assert len(loose.scores) == 2
    assert loose.scores[0] > loose.scores[1]


def test_class_agnostic_nms_suppresses_across_classes():
    cls_logits, box_deltas = quiet_outputs()
    cls_logits[0, 9 * 27 + 3, 0] = 4.0
    cls_logits[0, 9 * 27 + 4, 1] = 3.0  # the same object seen as the other class
    (per_class,) = detect([cls_logits, box_deltas], ANCHORS, CHIP)
    (agnostic,) = detect([cls_logits, box_deltas], ANCHORS, CHIP, class_agnostic=True)
    assert per_class.labels.tolist() == [1, 2]
    assert agnostic.labels.tolist() == [1]


def test_nothing_above_the_threshold_gives_empty_detections():
    (found,) = detect(list(quiet_outputs()), ANCHORS, CHIP)
    assert found.chip_boxes.shape == (0, 4) and found.labels.shape == (0,) and found.scores.shape == (0,)


def test_score_threshold_max_detections_and_order():
    cls_logits, box_deltas = quiet_outputs()
    corners = [9 * k + 3 for k in (0, 7, 56, 63)]  # the four corner cells of P3: far apart
    for logit, anchor in zip([1.0, 3.0, 2.0, -4.0], corners):
        cls_logits[0, anchor, 0] = logit
    (found,) = detect([cls_logits, box_deltas], ANCHORS, CHIP, score_thresh=0.05)
    torch.testing.assert_close(found.scores, torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    (capped,) = detect([cls_logits, box_deltas], ANCHORS, CHIP, max_detections=2)
    assert len(capped.scores) == 2
    (few,) = detect([cls_logits, box_deltas], ANCHORS, CHIP, pre_nms_top_k=1)
    assert len(few.scores) == 1


def test_boxes_are_clipped_to_the_chip():
    cls_logits, box_deltas = quiet_outputs()
    cls_logits[0, -1, 0] = 5.0  # a P7 anchor twice the chip's size
    (found,) = detect([cls_logits, box_deltas], ANCHORS, CHIP)
    assert cthw_to_chip(ANCHORS[-1], CHIP).abs().max() > CHIP
    torch.testing.assert_close(found.chip_boxes, torch.tensor([[0.0, 0.0, 64.0, 64.0]]))


def test_a_batch_gives_one_result_per_chip_and_bfloat16_works():
    cls_logits, box_deltas = quiet_outputs(batch=2)
    cls_logits[1, 9 * 27 + 3, 1] = 4.0
    results = detect([cls_logits.bfloat16(), box_deltas.bfloat16()], ANCHORS, CHIP)
    assert [len(r.scores) for r in results] == [0, 1]
    assert results[1].chip_boxes.dtype == torch.float32
    expected = cthw_to_chip(decode(torch.zeros(4), ANCHORS[9 * 27 + 3]), CHIP)
    torch.testing.assert_close(results[1].chip_boxes[0], expected)
