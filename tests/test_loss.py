"""Anchor matching and the RetinaNet loss of geolearn.models.loss."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from geolearn.models.anchors import make_anchors
from geolearn.models.boxes import cthw_to_xyxy, encode
from geolearn.models.loss import BACKGROUND, IGNORE, RetinaNetLoss, cut_by_edge, match_anchors

# Three hand-made anchors (cy, cx, h, w) that do not overlap: top-left, bottom-right, bottom-left.
ANCHORS = torch.tensor([[-0.5, -0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4], [0.5, -0.5, 0.2, 0.6]])


def outputs(logits: torch.Tensor, deltas: torch.Tensor | None = None) -> list[torch.Tensor]:
    """A batch of one from per-anchor logits [A, C] and deltas [A, 4]."""
    deltas = torch.zeros(len(logits), 4) if deltas is None else deltas
    return [logits[None].clone().requires_grad_(), deltas[None].clone().requires_grad_()]


def focal(p: float, positive: bool, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """The paper's focal loss of one sigmoid probability."""
    if positive:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_match_thresholds():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 → positive
        [0.0, 0.0, 10.0, 4.5],  # IoU 0.45 → ignored
        [0.0, 0.0, 10.0, 3.0],  # IoU 0.3 → background
        [50.0, 50.0, 60.0, 60.0],  # no overlap → background
    ])
    matches = match_anchors(gt, anchors, allow_low_quality_matches=False)
    assert matches.tolist() == [0, IGNORE, BACKGROUND, BACKGROUND]


def test_low_quality_match_gives_every_box_a_positive():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 44.0, 44.0]])  # the second is tiny
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [38.0, 38.0, 50.0, 50.0], [40.0, 40.0, 48.0, 48.0]])
    assert match_anchors(gt, anchors, allow_low_quality_matches=False).tolist() == [0, BACKGROUND, BACKGROUND]
    # its best anchor (IoU 16/64) becomes its positive
    assert match_anchors(gt, anchors).tolist() == [0, BACKGROUND, 1]


def test_no_boxes_means_all_background():
    assert match_anchors(torch.zeros(0, 4), cthw_to_xyxy(ANCHORS)).tolist() == [BACKGROUND] * 3


def test_background_chip_gives_zero_box_loss_and_a_classification_loss():
    anchors = make_anchors(64)
    loss_fn = RetinaNetLoss(anchors, n_classes=2)
    output = outputs(torch.full((len(anchors), 2), -4.0), torch.randn(len(anchors), 4))
    boxes, labels = torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.int64)  # padding only
    loss = loss_fn(output, boxes, labels)
    assert loss_fn.last_parts["bbox_regression"] == 0.0
    expected = len(anchors) * 2 * focal(torch.sigmoid(torch.tensor(-4.0)).item(), positive=False)
    assert loss_fn.last_parts["classification"].item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # the box head still gets a (zero) gradient
    assert torch.equal(output[1].grad, torch.zeros_like(output[1]))


def test_box_equal_to_an_anchor_is_its_positive_with_zero_box_loss():
    loss_fn = RetinaNetLoss(ANCHORS, n_classes=2)
    gt = cthw_to_xyxy(ANCHORS[:1])[None]  # the first anchor, class 2
    labels = torch.tensor([[2]])
    logits = torch.tensor([[-1.0, 2.0], [-3.0, -3.0], [0.5, -2.0]])
    assert match_anchors(gt[0], cthw_to_xyxy(ANCHORS)).tolist() == [0, BACKGROUND, BACKGROUND]
    loss = loss_fn(outputs(logits), gt, labels)
    assert loss_fn.last_parts["bbox_regression"].item() == pytest.approx(0.0, abs=1e-9)  # xyxy round-trip rounding
    targets = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    expected = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum") / 1
    torch.testing.assert_close(loss, expected)
    # and by the paper's formula: alpha weights the positive, 1 - alpha the negatives
    pairs = zip(logits.flatten().tolist(), targets.flatten().tolist())
    by_hand = sum(focal(1 / (1 + math.exp(-x)), positive=t == 1.0) for x, t in pairs)
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)


def test_box_loss_is_smooth_l1_of_encoded_targets_per_positive():
    loss_fn = RetinaNetLoss(ANCHORS, n_classes=1, allow_low_quality_matches=False)
    target = torch.tensor([-0.5, -0.45, 0.44, 0.4])  # IoU 0.9 with anchor 0, shifted and taller
    unit_boxes = cthw_to_xyxy(target)[None, None]
    deltas = torch.zeros(3, 4)
    deltas[0] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    loss_fn(outputs(torch.zeros(3, 1), deltas), unit_boxes, torch.tensor([[1]]))
    encoded = encode(target, ANCHORS[0])  # (0, 1.25, log(1.1) / 0.2, 0)
    expected = torch.nn.functional.smooth_l1_loss(deltas[0], encoded, beta=1 / 9, reduction="sum")
    torch.testing.assert_close(loss_fn.last_parts["bbox_regression"], expected)


def test_perfect_deltas_on_real_anchors_give_zero_box_loss():
    anchors = make_anchors(128)
    loss_fn = RetinaNetLoss(anchors, n_classes=1)
    gt_cthw = anchors[500] + torch.tensor([0.01, -0.02, 0.03, 0.0])
    gt = cthw_to_xyxy(gt_cthw)[None, None]
    matches = match_anchors(gt[0], cthw_to_xyxy(anchors))
    assert matches[500] == 0
    deltas = encode(gt_cthw[None], anchors)  # the right answer for every anchor
    loss_fn(outputs(torch.zeros(len(anchors), 1), deltas), gt, torch.tensor([[1]]))
    assert loss_fn.last_parts["bbox_regression"].item() == pytest.approx(0.0, abs=1e-6)


def test_padding_rows_change_nothing():
    loss_fn = RetinaNetLoss(ANCHORS, n_classes=2)
    logits = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    gt = cthw_to_xyxy(ANCHORS[1:2])[None]
    one = loss_fn(outputs(logits), gt, torch.tensor([[1]]))
    padded = loss_fn(outputs(logits), torch.cat([gt, torch.zeros(1, 2, 4)], dim=1), torch.tensor([[1, 0, 0]]))
    torch.testing.assert_close(one, padded)


def test_batch_loss_is_the_mean_of_the_images():
    loss_fn = RetinaNetLoss(ANCHORS, n_classes=2)
    g = torch.Generator().manual_seed(1)
    logits, deltas = torch.randn(2, 3, 2, generator=g), torch.randn(2, 3, 4, generator=g)
    boxes = torch.stack([cthw_to_xyxy(ANCHORS[:1]), torch.zeros(1, 4)])
    labels = torch.tensor([[1], [0]])
    batch = loss_fn([logits, deltas], boxes, labels)
    singles = [loss_fn([logits[i : i + 1], deltas[i : i + 1]], boxes[i : i + 1], labels[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(batch, (singles[0] + singles[1]) / 2)


def test_fastai_typed_targets_are_accepted():
    from fastai.vision.all import TensorBBox, TensorMultiCategory

    loss_fn = RetinaNetLoss(ANCHORS, n_classes=2)
    gt = cthw_to_xyxy(ANCHORS[:1])[None]
    plain = loss_fn(outputs(torch.zeros(3, 2)), gt, torch.tensor([[1]]))
    typed = loss_fn(outputs(torch.zeros(3, 2)), TensorBBox(gt), TensorMultiCategory(torch.tensor([[1]])))
    assert type(typed) is torch.Tensor
    torch.testing.assert_close(plain, typed)


def test_loss_is_float32_under_bfloat16_autocast():
    anchors = make_anchors(64)
    loss_fn = RetinaNetLoss(anchors, n_classes=2)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, len(anchors), 2, generator=g).bfloat16()
    deltas = torch.randn(1, len(anchors), 4, generator=g).bfloat16()
    gt = cthw_to_xyxy(anchors[[10, 300]])[None]
    labels = torch.tensor([[1, 2]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn([logits, deltas], gt, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn([logits.float(), deltas.float()], gt, labels))


def test_labels_beyond_the_classes_are_an_error():
    loss_fn = RetinaNetLoss(ANCHORS, n_classes=2)
    with pytest.raises(ValueError, match="must lie in 0..2"):
        loss_fn(outputs(torch.zeros(3, 2)), torch.zeros(1, 1, 4), torch.tensor([[3]]))


def test_outputs_for_other_anchors_are_an_error():
    loss_fn = RetinaNetLoss(ANCHORS, n_classes=2)
    with pytest.raises(ValueError, match="do not fit 3 anchors and 2 classes"):
        loss_fn(outputs(torch.zeros(4, 2)), torch.zeros(1, 1, 4), torch.tensor([[0]]))


def test_cut_by_edge_finds_boxes_on_the_chip_border():
    unit_boxes = torch.tensor([[-1.0, -0.2, -0.8, 0.2], [-0.5, -0.5, 0.5, 0.5], [0.2, 0.2, 0.6, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert cut_by_edge(unit_boxes).tolist() == [True, False, True, False]


def test_a_box_cut_by_the_chip_edge_is_neither_object_nor_background():
    # Anchor 0 is (-0.7..-0.3) square; the box is its left half cut by nothing, then the same box
    # moved onto the left edge of the chip: only the second is cut.
    anchors = torch.tensor([[-0.5, -0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4], [-0.5, -0.85, 0.4, 0.3]])  # last: on the edge
    logits = torch.tensor([[2.0], [-3.0], [1.0]])
    cut_box = torch.tensor([[[-1.0, -0.7, -0.7, -0.3]]])  # touches x = -1: IoU 1 with anchor 2, 0 with the others
    loss_fn = RetinaNetLoss(anchors, n_classes=1)
    loss = loss_fn(outputs(logits), cut_box, torch.tensor([[1]]))
    # Anchor 2 is ignored; anchors 0 and 1 are background; nothing is a positive (normalised by 1).
    expected = focal(torch.sigmoid(torch.tensor(2.0)).item(), False) + focal(torch.sigmoid(torch.tensor(-3.0)).item(), False)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss_fn.last_parts["bbox_regression"] == 0.0
    # Without the rule the cut box is anchor 2's positive, as before.
    old = RetinaNetLoss(anchors, n_classes=1, ignore_cut_boxes=False)
    old(outputs(logits), cut_box, torch.tensor([[1]]))
    positive = focal(torch.sigmoid(torch.tensor(1.0)).item(), True)
    assert old.last_parts["classification"].item() == pytest.approx(expected + positive, rel=1e-5)
