"""RetinaNet's training loss: anchor matching, sigmoid focal loss and smooth-L1 box regression.

Per image, anchors are matched to the ground-truth boxes by IoU (:func:`match_anchors`); the
classifier is trained on positives and background with the sigmoid focal loss, the box regressor
on positives with smooth-L1 on :func:`~geolearn.models.boxes.encode`'d targets. Both sums are
divided by the image's number of positives (at least 1) and the images are averaged, as in
torchvision's and arcgis.learn's RetinaNet.

Deliberate differences from arcgis.learn:

* A background-only chip still trains the classifier (every anchor is background, normalised by
  1); arcgis.learn gives such chips zero loss, so its detector never learns from them what is
  *not* an object — false positives on pools-like roofs go unpunished.
* The focal loss's ``alpha`` weights the positives, as in the paper; arcgis.learn's port applies it
  to the negatives.
* Each ground-truth box's best anchors become positives even below ``pos_iou`` (optional, on by
  default): aerial objects smaller than the smallest anchor would otherwise get no positive at all.
* A box cut by the chip's edge is ignored (optional, on by default): the anchors on it are trained
  neither as object nor as background. Exported chips overlap (stride half the tile), so such an
  object is seen whole in a neighbouring chip, and detection keeps the whole view of an object cut
  by a window edge (:func:`~geolearn.inference.window_merge.seam_filter`), so a sliver of an object is
  not a target worth learning. In the NEON crowns export 44 % of the boxes touch a chip edge, half
  of them thinner than half their length; on that benchmark the rule changed AP@0.4 by less than
  the run-to-run noise (docs/training.md).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, sigmoid_focal_loss

from geolearn.models.boxes import cthw_to_xyxy, encode, xyxy_to_cthw

__all__ = ["RetinaNetLoss", "match_anchors", "cut_by_edge", "BACKGROUND", "IGNORE"]

# match_anchors() codes for anchors without a ground-truth box (torchvision's Matcher uses the same).
BACKGROUND = -1
IGNORE = -2


def match_anchors(
    gt_boxes: Tensor,
    anchors: Tensor,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    allow_low_quality_matches: bool = True,
) -> Tensor:
    """Assigns each anchor a ground-truth box, background, or nothing.

    An anchor whose best IoU with any box is ≥ ``pos_iou`` is a positive of that box; < ``neg_iou``
    background; in between ignored (neither trained as object nor as background). With
    ``allow_low_quality_matches`` each box's highest-IoU anchors (ties included, IoU > 0) also
    become its positives, unless they already are positives of another box — so every object gets
    at least one positive, however small (the standard refinement of torchvision and detectron2;
    arcgis.learn does not do it).

    Args:
        gt_boxes: ``Tensor[N, 4]`` xyxy; N may be 0.
        anchors: ``Tensor[A, 4]`` xyxy in the same space.
        pos_iou: IoU from which an anchor is a positive, 0–1. Default 0.5.
        neg_iou: IoU under which an anchor is background, 0–1. Default 0.4.
        allow_low_quality_matches: force each box's best anchors to be positives. Default True.

    Returns:
        ``Tensor[A]`` int64: the matched box's index (≥ 0), :data:`BACKGROUND` (-1) or :data:`IGNORE` (-2).

    Examples:
        >>> gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 22.0], [20.0, 20.0, 30.0, 30.0]])
        >>> match_anchors(gt_boxes, anchors)  # IoU 1, 0.45, 0
        tensor([ 0, -2, -1])
        >>> match_anchors(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), anchors)  # best anchor forced, IoU 0.16
        tensor([ 0, -1, -1])
        >>> match_anchors(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), anchors, allow_low_quality_matches=False)
        tensor([-1, -1, -1])
    """
    if len(gt_boxes) == 0:
        return torch.full((len(anchors),), BACKGROUND, dtype=torch.int64, device=anchors.device)
    iou = box_iou(gt_boxes, anchors)  # [N, A]
    best_iou, matches = iou.max(dim=0)
    matches = torch.where(best_iou >= pos_iou, matches, torch.full_like(matches, IGNORE))
    matches = torch.where(best_iou < neg_iou, torch.full_like(matches, BACKGROUND), matches)
    if allow_low_quality_matches:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # [N, 1]
        is_best = (iou == best_per_gt) & (best_per_gt > 0)  # [N, A]
        # An anchor that is the best of several boxes goes to the one it overlaps most.
        forced_gt = torch.where(is_best, iou, torch.full_like(iou, -1.0)).argmax(dim=0)
        forced = is_best.any(dim=0) & (matches < 0)
        matches = torch.where(forced, forced_gt, matches)
    return matches


def cut_by_edge(unit_boxes: Tensor, tolerance: float = 1e-3) -> Tensor:
    """Which boxes reach the chip's edge, i.e. may show only part of their object.

    Args:
        unit_boxes: ``Tensor[N, 4]`` xyxy in [-1, 1] chip units (boxes are clipped to the chip
            by the export and by the crops, so a cut box lies on ±1).
        tolerance: distance from ±1, in chip units, that still counts as on the edge.

    Returns:
        ``Tensor[N]`` bool.

    Examples:
        >>> cut_by_edge(torch.tensor([[-1.0, 0.0, -0.9, 0.2], [0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 1.0, 0.9]]))
        tensor([ True, False,  True])
    """
    return ((unit_boxes[:, :2] <= -1 + tolerance) | (unit_boxes[:, 2:] >= 1 - tolerance)).any(dim=1)


class RetinaNetLoss(nn.Module):
    """Focal + smooth-L1 loss of a RetinaNet over fastai detection batches.

    Args:
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1], the order of the network's outputs
            (:func:`~geolearn.models.anchors.make_anchors`).
        n_classes: object classes without background.
        gamma: focal loss focusing parameter (paper: 2).
        alpha: focal loss weight of the positives; negatives get ``1 - alpha`` (paper: 0.25).
        pos_iou: IoU from which an anchor is a positive (paper: 0.5).
        neg_iou: IoU under which an anchor is background (paper: 0.4).
        allow_low_quality_matches: see :func:`match_anchors`.
        ignore_cut_boxes: ignore the anchors on boxes cut by the chip's edge
            (:func:`cut_by_edge`): those whose IoU with such a box reaches ``neg_iou`` are neither
            positives nor background.
        beta: smooth-L1 transition point, in units of the (0.1, 0.1, 0.2, 0.2)-scaled deltas. 1/9 is
            torchvision's Faster R-CNN choice with these same delta weights: the loss is L1
            (robust to outliers) except within ~0.01 of the target in raw offset units.

    All arguments after ``n_classes`` are keyword only; the defaults are the paper's.

    ``loss(output, unit_boxes, labels)`` with ``output = [cls_logits [B, A, C], box_deltas [B, A, 4]]``
    (the network's), ``unit_boxes`` ``[B, N, 4]`` xyxy in [-1, 1] and ``labels`` ``[B, N]`` in
    1..C with 0 = padding (fastai's ``TensorBBox``/``TensorMultiCategory`` or plain tensors)
    returns the scalar float32 loss (see :meth:`forward`).

    Attributes:
        last_parts: the two parts of the last loss, detached, for logging:
            ``{'classification': Tensor, 'bbox_regression': Tensor}``.

    Raises:
        ValueError: ``neg_iou`` exceeds ``pos_iou``.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> anchors = make_anchors(64)
        >>> loss_fn = RetinaNetLoss(anchors, n_classes=2)
        >>> output = [torch.zeros(1, len(anchors), 2), torch.zeros(1, len(anchors), 4)]
        >>> unit_boxes, labels = torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long)  # padding only
        >>> loss = loss_fn(output, unit_boxes, labels)  # a background chip still trains the classifier
        >>> loss_fn.last_parts["classification"] > 0, loss_fn.last_parts["bbox_regression"]
        (tensor(True), tensor(0.))
    """

    def __init__(
        self,
        anchors: Tensor,
        n_classes: int,
        *,
        gamma: float = 2.0,
        alpha: float = 0.25,
        pos_iou: float = 0.5,
        neg_iou: float = 0.4,
        allow_low_quality_matches: bool = True,
        ignore_cut_boxes: bool = True,
        beta: float = 1 / 9,
    ) -> None:
        super().__init__()
        if neg_iou > pos_iou:
            raise ValueError(f"neg_iou={neg_iou} must not exceed pos_iou={pos_iou}.")
        self.n_classes = n_classes
        self.gamma = gamma
        self.alpha = alpha
        self.pos_iou = pos_iou
        self.neg_iou = neg_iou
        self.allow_low_quality_matches = allow_low_quality_matches
        self.ignore_cut_boxes = ignore_cut_boxes
        self.beta = beta
        anchors = anchors.float()
        # Buffers follow the module across devices; not persistent: they derive from the chip
        # size and anchor settings, not from training.
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("anchors_xyxy", cthw_to_xyxy(anchors), persistent=False)
        self.last_parts: dict[str, Tensor] = {}

    def forward(self, output: Sequence[Tensor], unit_boxes: Tensor, labels: Tensor) -> Tensor:
        """The loss of a batch, computed in float32 even under autocast.

        Args:
            output: ``[cls_logits [B, A, C], box_deltas [B, A, 4]]``, the network's outputs.
            unit_boxes: ``[B, N, 4]`` xyxy in [-1, 1]; padding rows are ignored.
            labels: ``[B, N]`` class indices 1..C, 0 for padding.

        Returns:
            Scalar float32: mean over images of (focal loss + smooth-L1 loss) / positives.

        Raises:
            ValueError: outputs that do not fit the anchors and ``n_classes``, or labels outside
                0..C.
        """
        cls_logits, box_deltas = output
        device = cls_logits.device
        # The loss runs in float32 even inside an autocast region: bfloat16 logs and exps of the
        # focal loss lose the small probabilities that make up most of it.
        with torch.autocast(device_type=device.type, enabled=False):
            cls_logits = cls_logits.float()
            box_deltas = box_deltas.float()
            # fastai's typed tensors refuse mixed-type ops; plain tensors from here on.
            unit_boxes = unit_boxes.as_subclass(Tensor).float()
            labels = labels.as_subclass(Tensor).long()
            self._check(cls_logits, box_deltas, labels)
            if self.anchors.device != device:
                self.to(device)  # fastai moves the model to the GPU, not the loss function
            per_image = [self._image_loss(*args) for args in zip(cls_logits, box_deltas, unit_boxes, labels)]
            cls_loss = torch.stack([c for c, _ in per_image]).mean()
            box_loss = torch.stack([b for _, b in per_image]).mean()
        self.last_parts = {"classification": cls_loss.detach(), "bbox_regression": box_loss.detach()}
        return cls_loss + box_loss

    def _check(self, cls_logits: Tensor, box_deltas: Tensor, labels: Tensor) -> None:
        n_anchors = len(self.anchors)
        if cls_logits.shape[1:] != (n_anchors, self.n_classes) or box_deltas.shape[1:] != (n_anchors, 4):
            raise ValueError(
                f"The network's outputs {tuple(cls_logits.shape)} and {tuple(box_deltas.shape)} do not fit "
                f"{n_anchors} anchors and {self.n_classes} classes; build the anchors for the chip "
                "size the network sees, with the scales and ratios it was built for."
            )
        if labels.numel() and (labels.min() < 0 or labels.max() > self.n_classes):
            raise ValueError(
                f"Labels run from {int(labels.min())} to {int(labels.max())} but must lie in 0..{self.n_classes} "
                "(0 = padding); the data has more classes than the network was built for."
            )

    def _image_loss(
        self, cls_logits: Tensor, box_deltas: Tensor, unit_boxes: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One image's (classification, box) losses.

        ``cls_logits [A, C]``, ``box_deltas [A, 4]``, ``unit_boxes [N, 4]`` xyxy in [-1, 1], ``labels [N]``.
        """
        real = labels > 0  # fastai pads with zero boxes labelled 0
        cut = real & cut_by_edge(unit_boxes) if self.ignore_cut_boxes else torch.zeros_like(real)
        gt_boxes, gt_labels = unit_boxes[real & ~cut], labels[real & ~cut]
        matches = match_anchors(gt_boxes, self.anchors_xyxy, self.pos_iou, self.neg_iou, self.allow_low_quality_matches)
        if cut.any():
            on_cut = box_iou(self.anchors_xyxy, unit_boxes[cut]).max(dim=1).values >= self.neg_iou
            matches = torch.where(on_cut & (matches == BACKGROUND), torch.full_like(matches, IGNORE), matches)
        positive = matches >= 0
        trained = matches != IGNORE
        n_positive = positive.sum().clamp(min=1)

        matched = matches[positive]
        targets = torch.zeros_like(cls_logits)
        targets[positive, gt_labels[matched] - 1] = 1.0
        cls_loss = sigmoid_focal_loss(
            cls_logits[trained], targets[trained], alpha=self.alpha, gamma=self.gamma, reduction="sum"
        )
        # No positives (a background chip): an empty sum, so 0, still attached to the graph.
        box_targets = encode(xyxy_to_cthw(gt_boxes[matched]), self.anchors[positive])
        box_loss = F.smooth_l1_loss(box_deltas[positive], box_targets, beta=self.beta, reduction="sum")
        return cls_loss / n_positive, box_loss / n_positive
