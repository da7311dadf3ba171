"""Augmentations for detection chips: item-level crops and resizes, batch-level fastai transforms.

Item level (one chip, ``Tensor[C, H, W]`` float image and ``Tensor[N, 4]`` xyxy
chip-pixel boxes) we write our own small pure functions, because fastai's
item transforms (``RandomCrop``, ``Resize``) only handle PIL images, i.e. RGB:
multispectral chips (4+ bands, 16-bit) would not pass through them.

Batch level we use fastai's own affine and lighting transforms (``Dihedral``,
``Zoom``, ``Brightness``, ``Contrast``) on ``TensorImage`` batches and
``TensorBBox`` boxes scaled to [-1, 1] (fastai's convention), so users can pass
any fastai batch transform. One gap we fill: fastai's batch affine transforms
leave boxes that a zoom pushed past the chip edge unclipped, so
:class:`ClipBoxes` runs after them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.vision.all import (
    Brightness,
    Contrast,
    Dihedral,
    TensorBBox,
    TensorMultiCategory,
    Transform,
    Zoom,
)
from torch import Tensor

__all__ = [
    "crop",
    "pad_to",
    "resize",
    "random_crop_origin",
    "center_crop_origin",
    "ClipBoxes",
    "default_batch_transforms",
    "MIN_VISIBLE_FRACTION",
]

# A box cut by a crop is kept when at least this fraction of its area stays
# visible: slivers of objects at the edge are poor training targets.
MIN_VISIBLE_FRACTION = 0.25


def crop(
    image: Tensor, chip_boxes: Tensor, labels: Tensor, top: int, left: int, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Crops a chip and its boxes; boxes mostly outside the crop are dropped.

    Args:
        image: ``Tensor[C, H, W]``.
        chip_boxes: ``Tensor[N, 4]`` xyxy in the chip's pixels.
        labels: ``Tensor[N]`` class indices.
        top, left: the crop's origin in pixels.
        height, width: the crop's size in pixels (within the image).

    Returns:
        ``(image[C, height, width], boxes in the crop's pixels, labels)``; a box is kept
        when at least :data:`MIN_VISIBLE_FRACTION` of its area lies inside the crop.
    """
    out = image[:, top : top + height, left : left + width]
    shifted = chip_boxes - chip_boxes.new_tensor([left, top, left, top])
    clipped = torch.stack(
        [
            shifted[:, 0].clamp(0, width),
            shifted[:, 1].clamp(0, height),
            shifted[:, 2].clamp(0, width),
            shifted[:, 3].clamp(0, height),
        ],
        dim=1,
    )
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = visible >= MIN_VISIBLE_FRACTION * area
    keep &= visible > 0
    return out, clipped[keep], labels[keep]


def pad_to(image: Tensor, height: int, width: int) -> Tensor:
    """Pads a chip with zeros at the bottom and right to at least ``height`` × ``width``.

    Boxes are unchanged: the origin stays put.
    """
    pad_h, pad_w = max(height - image.shape[1], 0), max(width - image.shape[2], 0)
    if pad_h == 0 and pad_w == 0:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h))


def resize(image: Tensor, chip_boxes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resizes (squishes) a chip to ``size`` × ``size`` and scales its boxes alike.

    Args:
        image: ``Tensor[C, H, W]`` float.
        chip_boxes: ``Tensor[N, 4]`` xyxy chip pixels.
        size: the new side in pixels.

    Returns:
        ``(Tensor[C, size, size], boxes in the new pixels)``.
    """
    height, width = image.shape[1:]
    out = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    scale = chip_boxes.new_tensor([size / width, size / height, size / width, size / height])
    return out, chip_boxes * scale


def random_crop_origin(height: int, width: int, size: int, generator: torch.Generator) -> tuple[int, int]:
    """A uniformly random ``(top, left)`` for a ``size`` crop of a ``height`` × ``width`` chip."""
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return top, left


def center_crop_origin(height: int, width: int, size: int) -> tuple[int, int]:
    """The ``(top, left)`` of a centred ``size`` crop."""
    return (height - size) // 2, (width - size) // 2


class ClipBoxes(Transform):
    """Clips batch boxes to the chip after affine augmentation and blanks the ones lost.

    fastai's ``Zoom``/``Rotate`` move ``TensorBBox`` corners but leave them outside
    [-1, 1] when the object leaves the chip. Boxes with less than
    :data:`MIN_VISIBLE_FRACTION` of their area left in view become padding
    (zero box, label 0), the same as fastai's ``bb_pad`` padding.
    """

    order = 50  # after fastai's affine (30) and lighting (40) transforms, before Normalize (99)

    def encodes(self, boxes: TensorBBox) -> TensorBBox:
        plain = boxes.as_subclass(Tensor)  # plain tensors: fastai's types refuse mixed-type ops
        clipped = plain.clamp(-1, 1)
        area = (plain[..., 2] - plain[..., 0]) * (plain[..., 3] - plain[..., 1])
        visible = (clipped[..., 2] - clipped[..., 0]) * (clipped[..., 3] - clipped[..., 1])
        self._lost = (visible < MIN_VISIBLE_FRACTION * area) | (visible <= 0)
        return TensorBBox(clipped.masked_fill(self._lost[..., None], 0.0), img_size=getattr(boxes, "img_size", None))

    def encodes(self, labels: TensorMultiCategory) -> TensorMultiCategory:  # noqa: F811 (fastai dispatches on type)
        # The tuple's boxes come before its labels, so _lost belongs to this batch.
        lost = getattr(self, "_lost", None)
        if lost is None or lost.shape != labels.shape:
            return labels
        return TensorMultiCategory(labels.as_subclass(Tensor).masked_fill(lost, 0))


def default_batch_transforms() -> list[Transform]:
    """The default training augmentations for map-space (nadir) imagery.

    Any of the 8 dihedral orientations (north has no meaning for an object seen
    from above), zoom 0.8–1.25 with zero padding (reflection padding would mirror
    objects into the chip without labels), and mild brightness/contrast changes.
    """
    return [
        Dihedral(p=1.0),
        Zoom(min_zoom=0.8, max_zoom=1.25, p=0.5, pad_mode="zeros"),
        Brightness(max_lighting=0.2, p=0.75),
        Contrast(max_lighting=0.2, p=0.75),
        ClipBoxes(),
    ]
