"""How chip pixels become network inputs (CONTRACT §2, "Normalisation").

8-bit RGB chips are divided by 255 and standardised with the ImageNet mean/std
(what pretrained ResNets expect). Anything else (multispectral, 16-bit) is first
scaled per band with min-max band statistics to [0, 1], then standardised with
the scaled per-band mean/std. The statistics come from the export's
``esri_accumulated_stats.json`` when it has them, else from a seeded sample of
chips, cached next to the data in ``esri_normalization_stats.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from geolearn.data.bandstats import BandStats
from geolearn.data.esri import read_json, write_json
from geolearn.data.images import open_image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Normalization", "CACHE_FILE"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_FILE = "esri_normalization_stats.json"


@dataclass(frozen=True)
class Normalization:
    """Per-band scaling of raw pixel values, then standardisation.

    ``x01 = clip((raw - band_min) / (band_max - band_min), 0, 1)`` and the network
    sees ``(x01 - mean) / std``.

    Attributes:
        band_min: raw value mapped to 0, one per band (the raster's units).
        band_max: raw value mapped to 1, one per band.
        mean: mean of the scaled [0, 1] values, one per band.
        std: standard deviation of the scaled values, one per band.
        imagenet: True for 8-bit RGB (min 0, max 255, ImageNet mean/std).

    Examples:
        >>> norm = Normalization.for_rgb8()
        >>> norm.n_bands, norm.imagenet
        (3, True)
        >>> norm.scale(torch.tensor([[[0, 255]], [[51, 510]], [[-3, 102]]]))
        tensor([[[0.0000, 1.0000]],
                [[0.2000, 1.0000]],
                [[0.0000, 0.4000]]])
    """

    band_min: tuple[float, ...]
    band_max: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    imagenet: bool

    @classmethod
    def for_rgb8(cls) -> "Normalization":
        """8-bit RGB: divide by 255, ImageNet statistics.

        Returns:
            Min 0 and max 255 for three bands, :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`.
        """
        return cls((0.0,) * 3, (255.0,) * 3, IMAGENET_MEAN, IMAGENET_STD, True)

    @classmethod
    def from_band_stats(cls, stats: BandStats) -> "Normalization":
        """Min-max scaling with the scaled mean/std derived from accumulated band statistics.

        ``mean = (stats.mean - min) / (max - min)`` and ``std = stats.std / (max - min)``; a
        constant band (``max == min``) gets a span of 1e-6 instead of dividing by zero, and
        ``std`` is at least 1e-6.

        Args:
            stats: per-band statistics of raw pixels.

        Returns:
            A normalisation with ``imagenet=False``.

        Examples:
            >>> import numpy as np
            >>> stats = BandStats(1)
            >>> stats.update(np.array([[[100, 300]]], dtype=np.uint16))
            >>> Normalization.from_band_stats(stats)
            Normalization(band_min=(100.0,), band_max=(300.0,), mean=(0.5,), std=(0.5,), imagenet=False)
        """
        span = np.maximum(stats.maximum - stats.minimum, 1e-6)
        mean = (stats.mean - stats.minimum) / span
        std = np.maximum(stats.std / span, 1e-6)
        return cls(
            tuple(stats.minimum.tolist()),
            tuple(stats.maximum.tolist()),
            tuple(mean.tolist()),
            tuple(std.tolist()),
            False,
        )

    @property
    def n_bands(self) -> int:
        """Number of bands."""
        return len(self.band_min)

    def scale(self, raw: Tensor) -> Tensor:
        """Scales raw pixels to [0, 1] per band: ``clip((raw - band_min) / (band_max - band_min), 0, 1)``.

        Args:
            raw: ``Tensor[C, H, W]`` (or a batch ``[B, C, H, W]``) raw pixel values, any numeric
                dtype, ``C == n_bands``.

        Returns:
            float32 in [0, 1], the same shape.
        """
        low = torch.tensor(self.band_min, dtype=torch.float32)[:, None, None]
        high = torch.tensor(self.band_max, dtype=torch.float32)[:, None, None]
        return ((raw.float() - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)

    def normalize(self, raw: Tensor) -> Tensor:
        """Raw pixels → what the network takes: :meth:`scale`, then ``(x01 - mean) / std`` per band.

        Args:
            raw: ``Tensor[C, H, W]`` or a batch ``Tensor[B, C, H, W]`` of raw pixel values,
                ``C == n_bands``.

        Returns:
            float32 of the same shape.

        Examples:
            >>> Normalization((0.0,), (200.0,), (0.5,), (0.25,), False).normalize(torch.tensor([[[100, 150]]]))
            tensor([[[0., 1.]]])
        """
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (self.scale(raw) - mean) / std

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to the cache file :data:`CACHE_FILE`.

        Returns:
            ``{"band_min", "band_max", "scaled_mean", "scaled_std", "imagenet"}``.

        Examples:
            >>> Normalization.from_json(Normalization.for_rgb8().to_json()) == Normalization.for_rgb8()
            True
        """
        return {
            "band_min": list(self.band_min),
            "band_max": list(self.band_max),
            "scaled_mean": list(self.mean),
            "scaled_std": list(self.std),
            "imagenet": self.imagenet,
        }

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> "Normalization":
        """Rebuilds a normalisation from :meth:`to_json`'s form.

        Args:
            content: a dict with the keys :meth:`to_json` writes.

        Returns:
            The normalisation.

        Raises:
            KeyError: a key is missing.
        """
        return cls(
            tuple(content["band_min"]),
            tuple(content["band_max"]),
            tuple(content["scaled_mean"]),
            tuple(content["scaled_std"]),
            bool(content["imagenet"]),
        )


def sample_band_stats(
    image_paths: Sequence[Path], bands: Sequence[int] | None, norm_pct: float, seed: int
) -> BandStats:
    """Band statistics over a seeded sample of ``norm_pct`` of the chips (at least one)."""
    rng = np.random.default_rng(seed)
    n_sample = max(1, int(round(len(image_paths) * norm_pct)))
    chosen = sorted(rng.choice(len(image_paths), size=n_sample, replace=False).tolist())
    stats = None
    for index in chosen:
        with open_image(image_paths[index]) as src:
            indexes = [b + 1 for b in bands] if bands is not None else None
            pixels = src.read(indexes)
            valid = src.dataset_mask() > 0
        stats = stats or BandStats(pixels.shape[0])
        stats.update(pixels, valid)
    return stats


def cached_sample_normalization(
    root: Path,
    image_paths: Sequence[Path],
    bands: Sequence[int] | None,
    norm_pct: float,
    seed: int,
) -> Normalization:
    """Normalisation from a sample of chips, cached in ``<root>/esri_normalization_stats.json``.

    The cache records what it was computed from (chip count, bands, norm_pct, seed)
    and is recomputed when any of that changed.
    """
    key = {"n_chips": len(image_paths), "bands": list(bands) if bands else None, "norm_pct": norm_pct, "seed": seed}
    cache = root / CACHE_FILE
    if cache.exists():
        content = read_json(cache)
        if content.get("computed_from") == key:
            return Normalization.from_json(content)
    stats = sample_band_stats(image_paths, bands, norm_pct, seed)
    normalization = Normalization.from_band_stats(stats)
    try:
        write_json(cache, {"computed_from": key, **normalization.to_json()})
        logger.info("cached band statistics of %d%% of the chips in %s", round(norm_pct * 100), cache)
    except OSError as err:  # a read-only data folder: compute again next time
        logger.warning("could not cache band statistics in %s (%s)", cache, err)
    return normalization
