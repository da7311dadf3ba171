"""Vector shapes of the sample scene in pixel coordinates, and their masks on a pixel window."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import shapely


def poly_mask(xy: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Which pixel centres of the window fall inside a polygon (even-odd rule).

    Args:
        xy: ``[N, 2]`` ring vertices (col, row) in pixel coordinates, not closed.
        r0: the window's first row.
        r1: the row after its last.
        c0: the window's first column.
        c1: the column after its last.

    Returns:
        ``bool[r1 - r0, c1 - c0]``.
    """
    h, w = r1 - r0, c1 - c0
    x1, y1 = xy[:, 0], xy[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    yc = (np.arange(r0, r1, dtype=np.float64) + 0.5)[:, None]
    cross = ((y1 <= yc) & (yc < y2)) | ((y2 <= yc) & (yc < y1))
    dy = np.where(y2 == y1, 1.0, y2 - y1)
    xc = x1 + (yc - y1) * ((x2 - x1) / dy)
    lo, hi = c0 - 1.0, c1 + 1.0
    xc = np.where(cross, np.clip(xc, lo, hi), hi) - lo  # in [0, w + 2]
    xc.sort(axis=1)
    step = float(w + 8)
    off = np.arange(h, dtype=np.float64)[:, None] * step
    flat = (xc + off).ravel()
    q = ((np.arange(c0, c1, dtype=np.float64) + 0.5 - lo)[None, :] + off).ravel()
    n_left = np.searchsorted(flat, q, side="left").reshape(h, w)
    n_left -= (np.arange(h) * xy.shape[0])[:, None]
    return (n_left & 1).astype(bool)


class Shape(Protocol):
    bbox: tuple[int, int, int, int]

    def mask(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray: ...

    def shifted(self, dx: float, dy: float) -> Shape: ...

    def ring(self) -> np.ndarray: ...


def bbox_of(xy: np.ndarray) -> tuple[int, int, int, int]:
    return (
        int(math.floor(xy[:, 1].min())),
        int(math.ceil(xy[:, 1].max())),
        int(math.floor(xy[:, 0].min())),
        int(math.ceil(xy[:, 0].max())),
    )


class Rect:
    """A rotated rectangle: centre (cx, cy), half-length a along angle ``ang``, half-width b."""

    __slots__ = ("cx", "cy", "a", "b", "ang", "ca", "sa", "bbox")

    def __init__(self, cx: float, cy: float, a: float, b: float, ang: float) -> None:
        self.cx, self.cy, self.a, self.b, self.ang = float(cx), float(cy), float(a), float(b), float(ang)
        self.ca, self.sa = math.cos(ang), math.sin(ang)
        self.bbox = bbox_of(self.ring())

    def ring(self) -> np.ndarray:
        ux, uy = self.ca * self.a, self.sa * self.a
        vx, vy = -self.sa * self.b, self.ca * self.b
        return np.array(
            [
                [self.cx - ux - vx, self.cy - uy - vy],
                [self.cx + ux - vx, self.cy + uy - vy],
                [self.cx + ux + vx, self.cy + uy + vy],
                [self.cx - ux + vx, self.cy - uy + vy],
            ]
        )

    def local(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates of the window along (u) and across (v) the rectangle."""
        dx = (np.arange(c0, c1, dtype=np.float32) + 0.5 - np.float32(self.cx))[None, :]
        dy = (np.arange(r0, r1, dtype=np.float32) + 0.5 - np.float32(self.cy))[:, None]
        ca, sa = np.float32(self.ca), np.float32(self.sa)
        return dx * ca + dy * sa, dy * ca - dx * sa

    def mask(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        u, v = self.local(r0, r1, c0, c1)
        return (np.abs(u) < self.a) & (np.abs(v) < self.b)

    def shifted(self, dx: float, dy: float) -> Rect:
        return Rect(self.cx + dx, self.cy + dy, self.a, self.b, self.ang)


class Poly:
    """A simple polygon given by its ring vertices in pixel coordinates."""

    __slots__ = ("xy", "bbox")

    def __init__(self, xy: np.ndarray) -> None:
        self.xy = np.asarray(xy, dtype=np.float64)
        self.bbox = bbox_of(self.xy)

    def ring(self) -> np.ndarray:
        return self.xy

    def mask(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return poly_mask(self.xy, r0, r1, c0, c1)

    def shifted(self, dx: float, dy: float) -> Poly:
        return Poly(self.xy + np.array([dx, dy]))


def hull(*rings: np.ndarray) -> Poly:
    """Convex hull of several rings, as a polygon (used for cast shadows)."""
    pts = shapely.multipoints(np.concatenate(rings))
    hull = shapely.convex_hull(pts)
    return Poly(np.asarray(hull.exterior.coords)[:-1])
