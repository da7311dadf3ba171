"""Test-time augmentation: orientations, their inverse on boxes, and the fusion of the views."""

from __future__ import annotations

import pytest
import torch

from geolearn.models.postprocess import Detections
from geolearn.models.tta import VIEWS, augmented_runner, fuse_views, orient, unorient_boxes


def bright_box(crop: torch.Tensor) -> torch.Tensor:
    """xyxy pixel edges of the pixels above 0.5 in band 0: the truth, read off the pixels."""
    rows, cols = torch.nonzero(crop[0] > 0.5, as_tuple=True)
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("view", range(VIEWS))
@pytest.mark.parametrize("box", [(0, 0, 3, 2), (9, 2, 15, 5), (4, 11, 16, 16), (7, 7, 8, 8)])
def test_unorient_boxes_brings_a_box_found_in_any_view_back_to_the_crop(view, box):
    col0, row0, col1, row1 = box
    crop = torch.zeros(2, 16, 16)
    crop[:, row0:row1, col0:col1] = 1.0
    seen = bright_box(orient(crop, view))
    assert unorient_boxes(seen[None], view, 16)[0].tolist() == list(map(float, box))


def test_the_eight_views_are_the_eight_distinct_orientations():
    crop = torch.arange(9.0).reshape(1, 3, 3)
    assert len({tuple(orient(crop, v).flatten().tolist()) for v in range(VIEWS)}) == 8


def one(box, label, score):
    return Detections(torch.tensor([box], dtype=torch.float32), torch.tensor([label]), torch.tensor([score]))


def test_fuse_views_hand_computed():
    views = [
        one([0, 0, 10, 10], 1, 0.9),
        Detections(torch.tensor([[1.0, 0.0, 11.0, 10.0], [30.0, 30.0, 40.0, 40.0]]), torch.tensor([1, 1]),
                   torch.tensor([0.6, 0.5])),
        one([0, 0, 10, 10], 2, 0.3),  # the same place, another class: not the same object
        Detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0)),  # a view that missed
    ]
    fused = fuse_views(views, 4, score_thresh=0.1)
    # Object 1: (0.9 + 0.6) / 4 views; box (0.9 · [0,0,10,10] + 0.6 · [1,0,11,10]) / 1.5 = [0.4, 0, 10.4, 10].
    # Object 2 seen once: 0.5 / 4 = 0.125. The class-2 box: 0.3 / 4 = 0.075, under 0.1: dropped.
    assert fused.scores.tolist() == pytest.approx([0.375, 0.125])
    assert fused.labels.tolist() == [1, 1]
    assert fused.chip_boxes.tolist() == [pytest.approx([0.4, 0.0, 10.4, 10.0]), [30.0, 30.0, 40.0, 40.0]]


def test_fuse_views_counts_each_view_once():
    # Two boxes of one view on one object (a view's own NMS let both through) count as one score.
    views = [Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]]), torch.tensor([1, 1]),
                        torch.tensor([0.8, 0.4])), one([0, 0, 10, 10], 1, 0.6)]
    fused = fuse_views(views, 2, score_thresh=0.05)
    assert fused.scores.tolist() == pytest.approx([0.7])


def test_fuse_views_of_nothing_is_empty():
    empty = Detections(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    fused = fuse_views([empty, empty], 2, score_thresh=0.05)
    assert fused.chip_boxes.shape == (0, 4) and len(fused.labels) == len(fused.scores) == 0


def test_augmented_runner_refuses_bad_view_counts():
    with pytest.raises(ValueError, match="views=9"):
        augmented_runner(lambda crops: [], 0.5, views=9)
