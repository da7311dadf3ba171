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

import math

import torch
import torch.nn.functional as F
from fastai.vision.all import (
    Brightness,
    Contrast,
    Dihedral,
    Hue,
    Saturation,
    TensorBBox,
    TensorImage,
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
    "ChannelGains",
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
        top: the crop's first row, pixels.
        left: the crop's first column, pixels.
        height: the crop's height in pixels (the crop must lie within the image).
        width: the crop's width in pixels.

    Returns:
        ``(image[C, height, width], Tensor[M, 4] boxes in the crop's pixels, clipped to it,
        Tensor[M] labels)``; a box is kept when at least :data:`MIN_VISIBLE_FRACTION` of
        its area lies inside the crop.

    Examples:
        >>> image = torch.zeros(3, 10, 10)
        >>> chip_boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0], [7.0, 7.0, 10.0, 10.0]])
        >>> out, boxes, labels = crop(image, chip_boxes, torch.tensor([1, 2]), top=0, left=3, height=6, width=6)
        >>> out.shape, boxes, labels
        (torch.Size([3, 6, 6]), tensor([[0., 2., 3., 6.]]), tensor([1]))
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

    Boxes are unchanged: the origin stays put. A chip already that large is returned as is.

    Args:
        image: ``Tensor[C, H, W]``.
        height: minimum height, pixels.
        width: minimum width, pixels.

    Returns:
        ``Tensor[C, max(H, height), max(W, width)]``.

    Examples:
        >>> pad_to(torch.ones(1, 2, 3), height=4, width=2)[0]
        tensor([[1., 1., 1.],
                [1., 1., 1.],
                [0., 0., 0.],
                [0., 0., 0.]])
    """
    pad_h, pad_w = max(height - image.shape[1], 0), max(width - image.shape[2], 0)
    if pad_h == 0 and pad_w == 0:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h))


def resize(image: Tensor, chip_boxes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resizes (squishes) a chip to ``size`` × ``size`` and scales its boxes alike.

    Bilinear interpolation; the aspect ratio is not kept.

    Args:
        image: ``Tensor[C, H, W]`` float.
        chip_boxes: ``Tensor[N, 4]`` xyxy chip pixels.
        size: the new side in pixels.

    Returns:
        ``(Tensor[C, size, size], Tensor[N, 4] boxes in the new pixels)``.

    Examples:
        >>> out, boxes = resize(torch.zeros(3, 100, 50), torch.tensor([[10.0, 10.0, 20.0, 50.0]]), 200)
        >>> out.shape, boxes
        (torch.Size([3, 200, 200]), tensor([[ 40.,  20.,  80., 100.]]))
    """
    height, width = image.shape[1:]
    out = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    scale = chip_boxes.new_tensor([size / width, size / height, size / width, size / height])
    return out, chip_boxes * scale


def random_crop_origin(height: int, width: int, size: int, generator: torch.Generator) -> tuple[int, int]:
    """A uniformly random ``(top, left)`` for a ``size`` crop of a ``height`` × ``width`` chip.

    Args:
        height: chip height, pixels (>= ``size``).
        width: chip width, pixels (>= ``size``).
        size: side of the square crop, pixels.
        generator: the random generator to draw from (seeded for reproducible crops).

    Returns:
        ``(top, left)`` in pixels, each in ``[0, side - size]``.

    Raises:
        RuntimeError: the chip is smaller than ``size`` (pad it first with :func:`pad_to`).

    Examples:
        >>> top, left = random_crop_origin(10, 10, 8, torch.Generator().manual_seed(0))
        >>> 0 <= top <= 2 and 0 <= left <= 2
        True
    """
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return top, left


def center_crop_origin(height: int, width: int, size: int) -> tuple[int, int]:
    """The ``(top, left)`` of a centred ``size`` crop of a ``height`` × ``width`` chip.

    Args:
        height: chip height, pixels.
        width: chip width, pixels.
        size: side of the square crop, pixels.

    Returns:
        ``((height - size) // 2, (width - size) // 2)`` in pixels.

    Examples:
        >>> center_crop_origin(10, 13, 8)
        (1, 2)
    """
    return (height - size) // 2, (width - size) // 2


class ClipBoxes(Transform):
    """Clips batch boxes to the chip after affine augmentation and blanks the ones lost.

    fastai's ``Zoom``/``Rotate`` move ``TensorBBox`` corners but leave them outside
    [-1, 1] when the object leaves the chip. Boxes with less than
    :data:`MIN_VISIBLE_FRACTION` of their area left in view become padding
    (zero box, label 0), the same as fastai's ``bb_pad`` padding.

    It runs at ``order = 50``: after fastai's affine (30) and lighting (40) transforms,
    before ``Normalize`` (99).

    Examples:
        >>> clip = ClipBoxes()
        >>> boxes = TensorBBox(torch.tensor([[[0.5, 0.5, 1.5, 1.5], [0.9, 0.9, 1.9, 1.9]]]))
        >>> clip(boxes)
        TensorBBox([[[0.5000, 0.5000, 1.0000, 1.0000],
                     [0.0000, 0.0000, 0.0000, 0.0000]]])
        >>> clip(TensorMultiCategory(torch.tensor([[1, 1]])))
        TensorMultiCategory([[1, 0]])
    """

    order = 50  # after fastai's affine (30) and lighting (40) transforms, before Normalize (99)

    def encodes(self, boxes: TensorBBox) -> TensorBBox:
        """Clips ``TensorBBox[B, N, 4]`` (xyxy in [-1, 1]) to the chip; lost boxes become zeros."""
        plain = boxes.as_subclass(Tensor)  # plain tensors: fastai's types refuse mixed-type ops
        clipped = plain.clamp(-1, 1)
        area = (plain[..., 2] - plain[..., 0]) * (plain[..., 3] - plain[..., 1])
        visible = (clipped[..., 2] - clipped[..., 0]) * (clipped[..., 3] - clipped[..., 1])
        self._lost = (visible < MIN_VISIBLE_FRACTION * area) | (visible <= 0)
        return TensorBBox(clipped.masked_fill(self._lost[..., None], 0.0), img_size=getattr(boxes, "img_size", None))

    def encodes(self, labels: TensorMultiCategory) -> TensorMultiCategory:  # noqa: F811 (fastai dispatches on type)
        """Sets the labels of the boxes the last box call lost to 0 (padding)."""
        # The tuple's boxes come before its labels, so _lost belongs to this batch.
        lost = getattr(self, "_lost", None)
        if lost is None or lost.shape != labels.shape:
            return labels
        return TensorMultiCategory(labels.as_subclass(Tensor).masked_fill(lost, 0))


class ChannelGains(Transform):
    """Multiplies each band of a training image by its own random gain: another sensor's or
    season's colour balance (fastai's ``Brightness`` and ``Saturation`` change all bands alike).

    With probability ``p`` per image, band ``c`` becomes ``x_c · g_c`` with ``log g_c`` uniform in
    ``[-log(1 + max_gain), log(1 + max_gain)]``, clipped to [0, 1]. Any number of bands; training
    batches only (``split_idx = 0``); boxes pass unchanged. fastai has no per-band transform.

    Examples:
        >>> images = TensorImage(torch.full((2, 4, 3, 3), 0.5))
        >>> gains = ChannelGains(max_gain=0.2, p=1.0)(images, split_idx=0)[..., 0, 0] / 0.5
        >>> bool(((gains >= 1 / 1.2 - 1e-6) & (gains <= 1.2 + 1e-6)).all()), bool(gains.std() > 0)
        (True, True)
        >>> bool((ChannelGains(0.2)(images, split_idx=1) == images).all())  # validation: unchanged
        True
    """

    split_idx = 0  # training batches only, like fastai's lighting transforms
    order = 45  # after fastai's lighting transforms (40), before Normalize (99)

    def __init__(self, max_gain: float = 0.1, p: float = 0.75) -> None:
        super().__init__()
        if not max_gain >= 0 or not 0 <= p <= 1:
            raise ValueError(f"max_gain={max_gain!r}, p={p!r}: max_gain must be >= 0 and p in [0, 1], e.g. "
                             "ChannelGains(max_gain=0.1, p=0.75).")
        self.max_gain, self.p = max_gain, p

    def encodes(self, images: TensorImage) -> TensorImage:
        plain = images.as_subclass(Tensor)
        batch, bands = plain.shape[:2]
        bound = math.log1p(self.max_gain)
        log_gains = torch.empty(batch, bands, 1, 1, device=plain.device).uniform_(-bound, bound)
        chosen = torch.rand(batch, 1, 1, 1, device=plain.device) < self.p
        gains = torch.where(chosen, log_gains.exp(), torch.ones_like(log_gains)).to(plain.dtype)
        return TensorImage((plain * gains).clamp(0, 1))


def default_batch_transforms(
    n_bands: int = 3, *, zoom: float = 0.25, lighting: float = 0.2, saturation: float = 0.0, gain: float = 0.0,
    hue: float = 0.0,
) -> list[Transform]:
    """The default training augmentations for map-space (nadir) imagery, and their strength.

    Any of the 8 dihedral orientations (north has no meaning for an object seen from above),
    zoom between ``1 / (1 + zoom)`` and ``1 + zoom`` with zero padding (reflection padding would
    mirror objects into the chip without labels), mild brightness and contrast changes, and, for
    RGB chips, saturation changes.

    Args:
        n_bands: bands of the chips; saturation needs 3 (RGB) and is left out otherwise.
        zoom: largest relative zoom in or out, >= 0 (0: no zoom). Default 0.25 (0.8–1.25).
        lighting: largest relative brightness and contrast change, in [0, 1). Default 0.2.
        saturation: largest relative saturation change, in [0, 1); 0 leaves it out. Default 0.
        gain: largest relative gain of one band, >= 0; 0 (the default) leaves it out.
        hue: largest hue shift, in [0, 1) as fastai's ``Hue`` takes it (RGB only); 0 (the default)
            leaves it out.

    Returns:
        ``[Dihedral(p=1), Zoom(p=0.5, zero padding), Brightness(p=0.75), Contrast(p=0.75),
        (Saturation(p=0.75),) (Hue(p=0.75),) (ChannelGains(p=0.75),) ClipBoxes()]``: fresh instances at each call, the disabled ones left out.

    Examples:
        >>> [type(t).__name__ for t in default_batch_transforms()]
        ['Dihedral', 'Zoom', 'Brightness', 'Contrast', 'ClipBoxes']
        >>> [type(t).__name__ for t in default_batch_transforms(zoom=0, saturation=0.2, hue=0.05)]
        ['Dihedral', 'Brightness', 'Contrast', 'Saturation', 'Hue', 'ClipBoxes']
        >>> [type(t).__name__ for t in default_batch_transforms(n_bands=4, saturation=0.2)][-2:]  # not for 4 bands
        ['Contrast', 'ClipBoxes']
    """
    if not zoom >= 0 or not 0 <= lighting < 1 or not 0 <= saturation < 1 or not gain >= 0 or not 0 <= hue < 1:
        raise ValueError(f"zoom={zoom!r}, lighting={lighting!r}, saturation={saturation!r}, gain={gain!r}, hue={hue!r}: "
                         "zoom and gain must be >= 0 and lighting, saturation and hue in [0, 1), e.g. zoom=0.25, "
                         "lighting=0.2, saturation=0.2, gain=0.1, hue=0.05.")
    transforms: list[Transform] = [Dihedral(p=1.0)]
    if zoom > 0:
        transforms.append(Zoom(min_zoom=1 / (1 + zoom), max_zoom=1 + zoom, p=0.5, pad_mode="zeros"))
    if lighting > 0:
        transforms += [Brightness(max_lighting=lighting, p=0.75), Contrast(max_lighting=lighting, p=0.75)]
    if saturation > 0 and n_bands == 3:
        transforms.append(Saturation(max_lighting=saturation, p=0.75))
    if hue > 0 and n_bands == 3:
        transforms.append(Hue(max_hue=hue, p=0.75))
    if gain > 0:
        transforms.append(ChannelGains(max_gain=gain, p=0.75))
    return transforms + [ClipBoxes()]
