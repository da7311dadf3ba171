"""Test-time augmentation: each window seen in the 8 orientations of the square, the views fused.

Imagery seen from above has no "up": a crown turned a quarter or mirrored is still a crown, and
geolearn trains on all 8 orientations (fastai's ``Dihedral``). At detection time
:func:`augmented_runner` runs the network on every orientation of each window, turns the boxes
found back into the window's own frame, and fuses the boxes that the views agree on
(:func:`fuse_views`): the box is their score-weighted mean, the score their mean over *all*
views, so that an object found in one view only counts for an eighth. arcgis.learn's tools call
this ``test_time_augmentation``; it costs 8 forward passes per window.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import box_iou

from geolearn.models.postprocess import Detections

__all__ = ["VIEWS", "VIEW_THRESH", "orient", "unorient_boxes", "fuse_views", "augmented_runner"]

RunBatch = Callable[[Tensor], list[Detections]]

VIEWS = 8  # the dihedral group of the square: 4 quarter turns, each with and without a mirror
# Boxes of one object seen in two views overlap at least this much: the boxes of one crown
# differ by a pixel or two between views; two neighbouring crowns overlap far less.
FUSE_IOU = 0.55
# The lowest score each view keeps when the fused threshold is higher: a fused score is a mean
# over the views, so a view's box a little under the threshold still counts.
VIEW_THRESH = 0.05


def orient(crops: Tensor, view: int) -> Tensor:
    """View ``view`` (0–7) of square crops ``[..., S, S]``: mirrored left-right when ``view >= 4``,
    then turned ``view % 4`` quarter turns anticlockwise (``torch.rot90``).

    Examples:
        >>> crop = torch.tensor([[1, 2], [3, 4]])
        >>> [orient(crop, v).flatten().tolist() for v in (0, 1, 4)]
        [[1, 2, 3, 4], [2, 4, 1, 3], [2, 1, 4, 3]]
    """
    if view >= 4:
        crops = crops.flip(-1)
    return torch.rot90(crops, view % 4, dims=(-2, -1))


def unorient_boxes(boxes: Tensor, view: int, size: float) -> Tensor:
    """Boxes found in view ``view`` of a ``size`` px square crop, in the crop's own frame.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy pixels in the oriented crop.
        view: the view the boxes were found in (:func:`orient`).
        size: the crop's side in pixels.

    Returns:
        ``Tensor[N, 4]`` xyxy pixels in the crop as given.

    Examples:
        >>> box = torch.tensor([[0.0, 0.0, 2.0, 1.0]])  # the top-left corner of a 10 px crop
        >>> unorient_boxes(box, 1, 10)  # seen after a quarter turn anticlockwise: the top-right corner
        tensor([[ 9.,  0., 10.,  2.]])
    """
    x0, y0, x1, y1 = boxes.unbind(-1)
    for _ in range(view % 4):  # undo one anticlockwise turn: (x, y) came from (size - y, x)
        x0, y0, x1, y1 = size - y1, x0, size - y0, x1
    if view >= 4:  # undo the mirror
        x0, x1 = size - x1, size - x0
    return torch.stack([x0, y0, x1, y1], dim=-1)


def fuse_views(found: list[Detections], n_views: int, score_thresh: float, iou: float = FUSE_IOU) -> Detections:
    """One crop's detections from ``n_views`` views (in one frame) fused into one set.

    Best first, each box not yet taken gathers the boxes of its class that overlap it by at least
    ``iou``; the fused box is their score-weighted mean, its score the sum over views of each
    view's best score in the group, divided by ``n_views`` (a view that missed counts 0). Fused
    scores not above ``score_thresh`` are dropped. torchvision has NMS but no box fusion, so it is
    written here.

    Args:
        found: per view, :class:`Detections` already in the crop's frame.
        n_views: the number of views (``len(found)``, unless some were not run).
        score_thresh: lowest fused score kept.
        iou: overlap that makes two boxes one object. Default :data:`FUSE_IOU`.

    Returns:
        :class:`Detections`, best first.

    Examples:
        >>> a = Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1]), torch.tensor([0.8]))
        >>> b = Detections(torch.tensor([[2.0, 0.0, 12.0, 10.0]]), torch.tensor([1]), torch.tensor([0.4]))
        >>> fuse_views([a, b], 2, score_thresh=0.1)  # one object: box (0.8 · a + 0.4 · b) / 1.2
        Detections(chip_boxes=tensor([[ 0.6667,  0.0000, 10.6667, 10.0000]]), labels=tensor([1]), scores=tensor([0.6000]))
    """
    boxes = torch.cat([f.chip_boxes for f in found]).float()
    labels = torch.cat([f.labels for f in found])
    scores = torch.cat([f.scores for f in found]).float()
    views = torch.cat([torch.full((len(f.scores),), v) for v, f in enumerate(found)])
    order = scores.argsort(descending=True)
    boxes, labels, scores, views = boxes[order], labels[order], scores[order], views[order]
    together = (box_iou(boxes, boxes) >= iou) & (labels[:, None] == labels[None, :])
    free = torch.ones(len(scores), dtype=torch.bool)
    fused_boxes, fused_labels, fused_scores = [], [], []
    for i in range(len(scores)):
        if not free[i]:
            continue
        group = together[i] & free
        free &= ~group
        weights = scores[group]
        fused_boxes.append((boxes[group] * weights[:, None]).sum(0) / weights.sum())
        best_per_view = torch.zeros(n_views).scatter_reduce(0, views[group], weights, "amax")
        fused_scores.append(best_per_view.sum() / n_views)
        fused_labels.append(labels[i])
    if not fused_scores:
        return Detections(boxes.reshape(0, 4), labels, scores)
    out = Detections(torch.stack(fused_boxes), torch.stack(fused_labels), torch.stack(fused_scores))
    keep = out.scores > score_thresh
    order = out.scores[keep].argsort(descending=True)
    return Detections(out.chip_boxes[keep][order], out.labels[keep][order], out.scores[keep][order])


def augmented_runner(run_batch: RunBatch, score_thresh: float, views: int = VIEWS) -> RunBatch:
    """``run_batch`` with test-time augmentation: each crop seen in ``views`` orientations, fused.

    ``run_batch`` should keep boxes below ``score_thresh`` (down to :data:`VIEW_THRESH`), since a
    fused score is a mean over the views and a view's weaker box still counts.

    Args:
        run_batch: ``crops [B, C, S, S] -> list[Detections]`` in crop pixels (e.g.
            :func:`~geolearn.inference.runner.network_runner`).
        score_thresh: lowest fused score kept, 0–1.
        views: orientations used, the first ``views`` of :func:`orient` (1–8). Default 8.

    Returns:
        ``run_batch(crops) -> list[Detections]`` in the crops' own pixels, best first.

    Examples:
        >>> def brightest(crops):  # a stub network: the box around the pixels above 0.5
        ...     out = []
        ...     for crop in crops:
        ...         ys, xs = torch.nonzero(crop[0] > 0.5, as_tuple=True)
        ...         box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        ...         out.append(Detections(box[None], torch.tensor([1]), torch.tensor([0.9])))
        ...     return out
        >>> crops = torch.zeros(1, 3, 16, 16)
        >>> crops[0, :, 2:5, 9:15] = 1.0  # rows 2-4, columns 9-14
        >>> (found,) = augmented_runner(brightest, 0.5)(crops)  # all 8 views agree, in the crop's frame
        >>> [round(v, 4) for v in found.chip_boxes[0].tolist()], round(float(found.scores[0]), 4)
        ([9.0, 2.0, 15.0, 5.0], 0.9)
    """
    if not 1 <= views <= VIEWS:
        raise ValueError(f"views={views!r}: test-time augmentation uses 1 to {VIEWS} orientations.")

    def run_augmented(crops: Tensor) -> list[Detections]:
        size = crops.shape[-1]
        per_view = []
        for view in range(views):
            found = run_batch(orient(crops, view).contiguous(memory_format=torch.channels_last))
            per_view.append([Detections(unorient_boxes(f.chip_boxes, view, size), f.labels, f.scores) for f in found])
        return [fuse_views([per_view[v][i] for v in range(views)], views, score_thresh) for i in range(len(crops))]

    return run_augmented
