"""Per-band statistics accumulated over many chips, in Esri's ``BandStatsState`` form.

ArcGIS stores, per band, ``Min``, ``Max``, ``M1`` (mean), ``M2`` (sum of squared
deviations from the mean) and ``Num`` (pixel count): the state of Welford's
online algorithm, so that statistics of many chips (or of several exports)
combine exactly with Chan et al.'s parallel update, without holding the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geolearn.errors import BandMismatchError

__all__ = ["BandStats"]


@dataclass
class BandStats:
    """Running per-band min, max, mean and sum of squared deviations.

    Pixel values are in the raster's own units (digital numbers); nothing is rescaled.

    Args:
        n_bands: number of bands.

    Attributes:
        n_bands: number of bands.
        minimum: ``float64[n_bands]`` smallest value seen per band (``inf`` before any pixel).
        maximum: ``float64[n_bands]`` largest value seen per band (``-inf`` before any pixel).
        mean: ``float64[n_bands]`` mean per band.
        m2: ``float64[n_bands]`` sum of squared deviations from the mean per band.
        count: ``int64[n_bands]`` pixels seen per band.

    Examples:
        >>> stats = BandStats(3)
        >>> stats.update(np.ones((3, 4, 4)))
        >>> stats.mean.tolist(), stats.std.tolist()
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
        >>> other = BandStats(3)
        >>> other.update(np.full((3, 4, 4), 3, dtype=np.uint8))
        >>> stats.merge(other)
        >>> stats.mean.tolist(), stats.std.tolist(), stats.count.tolist()
        ([2.0, 2.0, 2.0], [1.0, 1.0, 1.0], [32, 32, 32])
    """

    n_bands: int
    minimum: np.ndarray = field(init=False)
    maximum: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.minimum = np.full(self.n_bands, np.inf)
        self.maximum = np.full(self.n_bands, -np.inf)
        self.mean = np.zeros(self.n_bands)
        self.m2 = np.zeros(self.n_bands)
        self.count = np.zeros(self.n_bands, dtype=np.int64)

    def update(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Adds a chip's pixels.

        Args:
            pixels: ``[bands, H, W]`` array of any numeric dtype.
            valid: optional ``bool[H, W]``; False pixels (nodata) are left out. Default None:
                every pixel counts.

        Raises:
            BandMismatchError: ``pixels`` does not have ``n_bands`` bands in its first axis.

        Examples:
            >>> stats = BandStats(1)
            >>> stats.update(np.array([[[1, 5], [9, 0]]]), valid=np.array([[True, True], [True, False]]))
            >>> stats.minimum.tolist(), stats.maximum.tolist(), stats.mean.tolist(), stats.count.tolist()
            ([1.0], [9.0], [5.0], [3])
        """
        if pixels.ndim < 2 or pixels.shape[0] != self.n_bands:
            # reshape(n_bands, -1) would otherwise silently mix bands of a chip with another count
            raise BandMismatchError(
                f"pixels has shape {pixels.shape}; expected [{self.n_bands}, H, W] for an "
                f"accumulator of {self.n_bands} bands."
            )
        flat = pixels.reshape(self.n_bands, -1)
        if valid is not None:
            # as bool: an integer 0/1 mask would otherwise index pixels 0 and 1 over and over
            flat = flat[:, np.asarray(valid, dtype=bool).reshape(-1)]
        n = flat.shape[1]
        if n == 0:
            return
        if flat.dtype in (np.uint8, np.uint16):
            self._merge(n, *_integer_moments(flat))
            return
        flat = flat.astype(np.float64)
        chip_mean = flat.mean(axis=1)
        chip_m2 = ((flat - chip_mean[:, None]) ** 2).sum(axis=1)
        self._merge(n, flat.min(axis=1), flat.max(axis=1), chip_mean, chip_m2)

    def merge(self, other: "BandStats") -> None:
        """Adds another accumulator's pixels (Chan et al.'s parallel update), in place.

        Args:
            other: an accumulator with the same number of bands; it is not changed.
        """
        self._merge(other.count, other.minimum, other.maximum, other.mean, other.m2)

    def _merge(self, n, minimum, maximum, mean, m2) -> None:
        total = self.count + n
        weight = n / np.maximum(total, 1)  # bands with no pixels on either side stay as they are
        delta = mean - self.mean
        self.mean = self.mean + delta * weight
        self.m2 = self.m2 + m2 + delta**2 * self.count * weight
        self.count = total
        self.minimum = np.minimum(self.minimum, minimum)
        self.maximum = np.maximum(self.maximum, maximum)

    @property
    def std(self) -> np.ndarray:
        """``float64[n_bands]`` population standard deviation per band (0 for bands with no pixels)."""
        return np.sqrt(self.m2 / np.maximum(self.count, 1))

    def to_esri(self) -> list[dict[str, float]]:
        """The ``BandStatsState`` list of ``esri_accumulated_stats.json``.

        Returns:
            One ``{"Min", "Max", "M1", "M2", "Num"}`` dict per band.

        Examples:
            >>> stats = BandStats(1)
            >>> stats.update(np.array([[[2, 4]]]))
            >>> stats.to_esri()
            [{'Min': 2.0, 'Max': 4.0, 'M1': 3.0, 'M2': 2.0, 'Num': 2}]
            >>> BandStats.from_esri(stats.to_esri()).std.tolist()
            [1.0]
        """
        return [
            {
                "Min": float(self.minimum[b]),
                "Max": float(self.maximum[b]),
                "M1": float(self.mean[b]),
                "M2": float(self.m2[b]),
                "Num": int(self.count[b]),
            }
            for b in range(self.n_bands)
        ]

    @classmethod
    def from_esri(cls, state: list[dict[str, float]]) -> "BandStats":
        """Rebuilds the accumulator from a ``BandStatsState`` list.

        Args:
            state: one ``{"Min", "Max", "M1", "M2", "Num"}`` dict per band, as :meth:`to_esri` writes.

        Returns:
            An accumulator with ``len(state)`` bands.

        Raises:
            KeyError: an entry lacks one of the five keys.
        """
        stats = cls(len(state))
        stats.minimum = np.array([s["Min"] for s in state], dtype=np.float64)
        stats.maximum = np.array([s["Max"] for s in state], dtype=np.float64)
        stats.mean = np.array([s["M1"] for s in state], dtype=np.float64)
        stats.m2 = np.array([s["M2"] for s in state], dtype=np.float64)
        stats.count = np.array([s["Num"] for s in state], dtype=np.int64)
        return stats


def _integer_moments(flat: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-band min, max, mean and M2 of 8/16-bit pixels ``[bands, N]`` through histograms.

    Sums over a histogram are exact Python integers, and this is about four times
    faster than float64 passes over the pixels (band statistics otherwise take half
    of an export's time).
    """
    n_bands, n = flat.shape
    minimum, maximum, mean, m2 = (np.zeros(n_bands) for _ in range(4))
    for band, band_pixels in enumerate(flat):
        counts = np.bincount(band_pixels)
        values = np.arange(len(counts), dtype=np.int64)
        total, squares = int(counts @ values), int(counts @ (values * values))
        present = np.flatnonzero(counts)
        minimum[band], maximum[band] = present[0], present[-1]
        mean[band] = total / n
        m2[band] = (squares * n - total * total) / n  # integers: no cancellation
    return minimum, maximum, mean, m2
