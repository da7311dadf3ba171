"""Tests of geolearn.data.bandstats: Welford/Chan band statistics in Esri's BandStatsState form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geolearn.data.bandstats import BandStats
from geolearn.errors import BandMismatchError


def _random_chips(dtype: type, high: int, n_chips: int = 5, bands: int = 3, seed: int = 0):
    """Chips of varying size with ~70% valid pixels, one chip with no valid pixel at all."""
    rng = np.random.default_rng(seed)
    chips = []
    for index in range(n_chips):
        height, width = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        pixels = rng.integers(0, high, size=(bands, height, width), endpoint=True).astype(dtype)
        valid = rng.random((height, width)) < 0.7
        if index == 2:
            valid[:] = False  # a nodata chip: contributes nothing
        chips.append((pixels, valid))
    return chips


def _expected(chips) -> np.ndarray:
    """``float64[bands, N]``: the valid pixels of all chips, concatenated per band."""
    return np.concatenate([p.reshape(p.shape[0], -1)[:, v.reshape(-1)] for p, v in chips], axis=1).astype(np.float64)


@pytest.mark.parametrize(("dtype", "high"), [(np.uint8, 255), (np.uint16, 65535)])
def test_update_equals_numpy_over_all_valid_pixels(dtype: type, high: int) -> None:
    chips = _random_chips(dtype, high)
    stats = BandStats(3)
    for pixels, valid in chips:
        stats.update(pixels, valid)
    flat = _expected(chips)
    n = flat.shape[1]
    assert stats.count.tolist() == [n, n, n]
    np.testing.assert_array_equal(stats.minimum, flat.min(axis=1))
    np.testing.assert_array_equal(stats.maximum, flat.max(axis=1))
    np.testing.assert_allclose(stats.mean, flat.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.m2, flat.var(axis=1) * n, rtol=1e-10)
    np.testing.assert_allclose(stats.std, flat.std(axis=1), rtol=1e-10)


def test_update_without_mask_uses_every_pixel() -> None:
    pixels = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    stats = BandStats(2)
    stats.update(pixels)
    # band 0: 0..5 -> mean 2.5, M2 = 2*(2.5^2 + 1.5^2 + 0.5^2) = 17.5; band 1: 6..11
    assert stats.count.tolist() == [6, 6]
    assert stats.minimum.tolist() == [0.0, 6.0]
    assert stats.maximum.tolist() == [5.0, 11.0]
    assert stats.mean.tolist() == [2.5, 8.5]
    assert stats.m2.tolist() == [17.5, 17.5]


def test_hand_computed_two_chips() -> None:
    # band 0 valid pixels: chip 1 -> 1, 3 ; chip 2 -> 10 (the 100 is nodata)
    # all: 1, 3, 10 -> mean 14/3, M2 = sum(x^2) - N*mean^2 = 110 - 196/3 = 134/3
    stats = BandStats(1)
    stats.update(np.array([[[1, 3]]], dtype=np.uint8), np.array([[True, True]]))
    stats.update(np.array([[[10, 100]]], dtype=np.uint8), np.array([[True, False]]))
    mean = 14 / 3
    assert stats.count.tolist() == [3]
    assert stats.minimum.tolist() == [1.0] and stats.maximum.tolist() == [10.0]
    assert stats.mean[0] == pytest.approx(mean)
    assert stats.m2[0] == pytest.approx(134 / 3, rel=1e-12)


def test_integer_mask_is_treated_as_boolean() -> None:
    pixels = np.array([[[5, 7], [9, 200]]], dtype=np.uint8)
    as_bool = BandStats(1)
    as_bool.update(pixels, np.array([[True, True], [True, False]]))
    as_int = BandStats(1)
    as_int.update(pixels, np.array([[1, 1], [1, 0]], dtype=np.uint8))
    assert as_int.to_esri() == as_bool.to_esri()
    assert as_bool.to_esri() == [{"Min": 5.0, "Max": 9.0, "M1": 7.0, "M2": 8.0, "Num": 3}]


def test_merge_equals_one_accumulator_over_all_chips() -> None:
    chips = _random_chips(np.uint16, 4000, n_chips=8, seed=1)
    whole = BandStats(3)
    for pixels, valid in chips:
        whole.update(pixels, valid)
    first, second = BandStats(3), BandStats(3)
    for pixels, valid in chips[:3]:
        first.update(pixels, valid)
    for pixels, valid in chips[3:]:
        second.update(pixels, valid)
    first.merge(second)
    assert first.count.tolist() == whole.count.tolist()
    np.testing.assert_array_equal(first.minimum, whole.minimum)
    np.testing.assert_array_equal(first.maximum, whole.maximum)
    np.testing.assert_allclose(first.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(first.m2, whole.m2, rtol=1e-10)


def test_merge_with_an_empty_accumulator_either_way() -> None:
    chips = _random_chips(np.uint8, 255, seed=2)
    filled = BandStats(3)
    for pixels, valid in chips:
        filled.update(pixels, valid)
    reference = filled.to_esri()
    filled.merge(BandStats(3))  # empty into filled: nothing changes
    assert filled.to_esri() == reference
    empty = BandStats(3)
    empty.merge(filled)  # filled into empty: a copy
    assert empty.to_esri() == reference


def test_chip_with_no_valid_pixel_changes_nothing() -> None:
    stats = BandStats(2)
    stats.update(np.array([[[1, 2]], [[3, 4]]], dtype=np.uint8))
    before = stats.to_esri()
    with np.errstate(all="raise"):  # no division by zero or invalid value either
        stats.update(np.full((2, 1, 2), 255, dtype=np.uint8), np.zeros((1, 2), dtype=bool))
    assert stats.to_esri() == before
    assert not np.isnan(stats.std).any()


def test_band_with_no_pixels_merges_without_breaking() -> None:
    # band 1 of `partial` has seen no pixel (Num 0), band 0 has
    partial = BandStats.from_esri(
        [
            {"Min": 2.0, "Max": 4.0, "M1": 3.0, "M2": 2.0, "Num": 2},
            {"Min": float("inf"), "Max": float("-inf"), "M1": 0.0, "M2": 0.0, "Num": 0},
        ]
    )
    other = BandStats(2)
    other.update(np.array([[[6.0]], [[8.0]]]))
    with np.errstate(all="raise"):
        partial.merge(other)
    # band 0: 2, 4, 6 -> mean 4, M2 = 4 + 0 + 4 = 8 ; band 1: just 8
    assert partial.to_esri() == [
        {"Min": 2.0, "Max": 6.0, "M1": 4.0, "M2": 8.0, "Num": 3},
        {"Min": 8.0, "Max": 8.0, "M1": 8.0, "M2": 0.0, "Num": 1},
    ]


def test_fresh_accumulator_has_finite_std() -> None:
    stats = BandStats(4)
    assert stats.std.tolist() == [0.0] * 4
    assert stats.count.tolist() == [0] * 4


def test_to_esri_from_esri_round_trip() -> None:
    stats = BandStats(3)
    for pixels, valid in _random_chips(np.uint16, 65535, seed=3):
        stats.update(pixels, valid)
    state = stats.to_esri()
    assert [sorted(band) for band in state] == [["M1", "M2", "Max", "Min", "Num"]] * 3
    assert all(isinstance(band["Num"], int) and isinstance(band["M1"], float) for band in state)
    # survives the JSON file it is stored in
    back = BandStats.from_esri(json.loads(json.dumps(state)))
    assert back.n_bands == 3
    assert back.to_esri() == state
    np.testing.assert_array_equal(back.m2, stats.m2)
    assert back.count.dtype == np.int64
    # and keeps accumulating
    extra = np.full((3, 2, 2), 7, dtype=np.uint16)
    back.update(extra)
    stats.update(extra)
    assert back.to_esri() == stats.to_esri()


def test_update_with_another_band_count_raises() -> None:
    stats = BandStats(3)
    with pytest.raises(BandMismatchError, match=r"pixels has shape \(6, 2, 2\); expected \[3, H, W\]"):
        stats.update(np.zeros((6, 2, 2)))
    with pytest.raises(ValueError, match=r"expected \[3, H, W\]"):
        stats.update(np.zeros((1, 4, 3)))
    assert stats.count.tolist() == [0, 0, 0]
