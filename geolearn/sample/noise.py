"""Hashed value noise: textures that are a function of the global pixel position, so blocks agree."""

from __future__ import annotations

import numpy as np

_M32 = np.uint64(0xFFFFFFFF)


def _hash(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """A 32-bit integer hash of two integer grids (broadcast), as uint64."""
    h = (np.asarray(a).astype(np.uint64) * np.uint64(0x9E3779B1)) & _M32
    h = (h + np.asarray(b).astype(np.uint64) * np.uint64(0x85EBCA77) + np.uint64(salt & 0xFFFFFFFF)) & _M32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & _M32
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & _M32
    h ^= h >> np.uint64(15)
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """Hash values -> float32 uniform in [-1, 1)."""
    return (h.astype(np.float32) * np.float32(2.0 / 4294967296.0) - np.float32(1.0)).astype(np.float32)


def salt(seed: int, key: int) -> int:
    return int(_hash(np.array(seed & 0xFFFFFFFF), np.array(key), 0x5EED)) ^ (seed >> 32 & 0xFFFFFFFF)


def value_noise(r0: int, r1: int, c0: int, c1: int, scale: float, salt: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] on the pixel window rows r0:r1, cols c0:c1.

    Lattice values are hashed from global lattice indices, so any window of the
    same field agrees with any other where they overlap.
    """
    ys = (np.arange(r0, r1, dtype=np.float64) + 0.5) / scale
    xs = (np.arange(c0, c1, dtype=np.float64) + 0.5) / scale
    iy = np.floor(ys).astype(np.int64)
    ix = np.floor(xs).astype(np.int64)
    fy = (ys - iy).astype(np.float32)
    fx = (xs - ix).astype(np.float32)
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    i0, j0 = iy[0], ix[0]
    lat = _unit(_hash(np.arange(i0, iy[-1] + 2)[:, None], np.arange(j0, ix[-1] + 2)[None, :], salt))
    jx = ix - j0
    lx = lat[:, jx] * (1 - fx) + lat[:, jx + 1] * fx
    jy = iy - i0
    return lx[jy] * (1 - fy)[:, None] + lx[jy + 1] * fy[:, None]


def fbm(r0: int, r1: int, c0: int, c1: int, scale: float, octaves: int, salt: int) -> np.ndarray:
    """Fractal sum of value noise, roughly in [-1, 1]."""
    out = np.zeros((r1 - r0, c1 - c0), np.float32)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        out += np.float32(amp) * value_noise(r0, r1, c0, c1, scale / 2**k, salt + 7919 * k)
        norm += amp
        amp *= 0.5
    return out / np.float32(norm)
