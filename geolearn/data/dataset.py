"""A torch Dataset of detection chips, producing fastai's typed tensors.

Each item is ``(TensorImage[C, S, S] float in [0, 1], TensorBBox[N, 4] xyxy in
[-1, 1], TensorMultiCategory[N] class indices)`` — fastai's own object-detection
convention, so fastai's collate (``bb_pad``) and batch transforms apply
unchanged. Standardisation (mean/std) happens later, as fastai's ``Normalize``
batch transform, so that augmentations see [0, 1] pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from fastai.vision.all import TensorBBox, TensorImage, TensorMultiCategory
from torch.utils.data import Dataset

from geolearn.data.boxes import pixel_to_unit
from geolearn.data.images import read_chip, read_image_info
from geolearn.data.labels import ChipLabels
from geolearn.data.normalization import Normalization
from geolearn.data.transforms import center_crop_origin, crop, pad_to, random_crop_origin, resize

__all__ = ["ChipDataset"]


@dataclass
class ChipDataset(Dataset):
    """Chips and their labels, cropped (or padded) to ``chip_size``.

    Attributes:
        images: chip paths.
        labels: per chip, boxes in chip pixels and class names.
        classes: ``['background', *names]``; an object's target is its name's index.
        chip_size: side of the square the network sees, in pixels.
        normalization: how raw pixels become [0, 1] (per-band min-max, or /255).
        train: random crops when True, centre crops when False.
        resize_to: squish each chip to this side before cropping, or None.
        bands: 0-based bands to read, or None for all.
        seed: seeds the random crops (one generator per dataset).
        sizes: per chip, its ``(height, width)`` in pixels as exported; None: read from the
            chips' headers here (``prepare_data`` passes what its reader read).

    An item is ``(TensorImage[C, S, S] float32 in [0, 1], TensorBBox[N, 4] xyxy in [-1, 1],
    TensorMultiCategory[N] int64)`` with ``S = chip_size``: the chip is squished to
    ``resize_to`` (when set), zero-padded up to ``chip_size`` and cropped to it; boxes cut by
    the crop are clipped, and dropped when less than ``MIN_VISIBLE_FRACTION`` of them stays.

    Examples:
        >>> import numpy as np, rasterio, tempfile
        >>> path = f"{tempfile.mkdtemp()}/chip.png"
        >>> with rasterio.open(path, "w", driver="PNG", width=8, height=8, count=3, dtype="uint8") as dst:
        ...     dst.write(np.full((3, 8, 8), 255, dtype="uint8"))
        >>> dataset = ChipDataset(
        ...     images=[path],
        ...     labels=[ChipLabels.from_lists([[2, 2, 6, 6]], ["pool"])],
        ...     classes=["background", "pool"],
        ...     chip_size=8,
        ...     normalization=Normalization.for_rgb8(),
        ... )
        >>> image, unit_boxes, targets = dataset[0]
        >>> image.shape, float(image.max()), unit_boxes, targets
        (torch.Size([3, 8, 8]), 1.0, TensorBBox([[-0.5000, -0.5000,  0.5000,  0.5000]]), TensorMultiCategory([1]))
    """

    images: Sequence[Path]
    labels: Sequence[ChipLabels]
    classes: Sequence[str]
    chip_size: int
    normalization: Normalization
    train: bool = False
    resize_to: int | None = None
    bands: Sequence[int] | None = None
    seed: int = 42
    sizes: Sequence[tuple[int, int]] | None = None

    n_inp = 1  # fastai: the first element of an item is the input, the rest are targets

    def __post_init__(self) -> None:
        if self.sizes is None:
            self.sizes = [(info.height, info.width) for info in map(read_image_info, self.images)]
        self._index = {name: i for i, name in enumerate(self.classes)}
        self._generator = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        return len(self.images)

    def reseed(self, seed: int) -> None:
        """Restarts the random crops from ``seed`` (a training process under a launcher draws its own)."""
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def split_idx(self) -> int:
        """fastai's split index: 0 for training chips, 1 for validation chips.

        fastai's ``TfmdDL`` hands it to its batch transforms, and those marked training-only
        (``Brightness``, ``Contrast``, ``Saturation``: ``split_idx`` 0) run only when it is 0;
        without it they never run.
        """
        return 0 if self.train else 1

    def targets(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chip ``index``'s boxes and class indices, before any resize or crop.

        Args:
            index: the chip's position in ``images``.

        Returns:
            ``(Tensor[N, 4] float32 xyxy in chip pixels, Tensor[N] int64 indices into classes)``.

        Raises:
            KeyError: a label's class token is not in ``classes``.
        """
        labels = self.labels[index]
        return labels.chip_boxes, torch.tensor([self._index[n] for n in labels.classes], dtype=torch.long)

    def __getitem__(self, index: int) -> tuple[TensorImage, TensorBBox, TensorMultiCategory]:
        image = self.normalization.scale(read_chip(self.images[index], self.bands))
        chip_boxes, labels = self.targets(index)
        if self.resize_to is not None:
            image, chip_boxes = resize(image, chip_boxes, self.resize_to)
        size = self.chip_size
        image = pad_to(image, size, size)
        height, width = image.shape[1:]
        if self.train:
            top, left = random_crop_origin(height, width, size, self._generator)
        else:
            top, left = center_crop_origin(height, width, size)
        image, chip_boxes, labels = crop(image, chip_boxes, labels, top, left, size, size)
        unit_boxes = pixel_to_unit(chip_boxes, size, size)
        return TensorImage(image), TensorBBox(unit_boxes, img_size=(size, size)), TensorMultiCategory(labels)
