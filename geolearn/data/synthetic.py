"""Seeded synthetic aerial scenes: a suburban orthophoto with pools and trees.

:func:`make_scene` writes a georeferenced GeoTIFF that looks like a ~0.3 m/pixel
aerial photograph of a suburb at the edge of farmland (streets, houses with
roofs of varied colours and cast shadows, lawns, fields) together with the
outlines of two object classes, ready to be exported as training chips:

* ``pool`` (``Classvalue`` 1): swimming pools, rectangles, rounded rectangles and
  kidney/free-form shapes, 12-60 px long, with a light coping border;
* ``tree`` (``Classvalue`` 2): tree crowns, 8-45 px across, isolated, in rows
  along streets and in dense clusters where crowns touch and overlap.

Unlabelled look-alikes are drawn too: blue roofs, tarps, solar panels, cars and
sports courts (pool-like), light-green shrubs (tree-like), dark shadows and lawns.

The scene is planned once as vector shapes in pixel coordinates, then rendered
and written block by block (1024 x 1024 windows), so even an 8192 x 8192 scene
never holds the whole raster in memory. Every texture is a function of the
global pixel position (hashed value noise), so the output does not depend on
the block size, and the same arguments always give identical pixels and labels.

Examples:
    >>> import tempfile
    >>> from geolearn.data.synthetic import make_scene
    >>> files = make_scene(tempfile.mkdtemp(), size=256, seed=1)
    >>> files.raster.name, files.labels.name
    ('scene.tif', 'scene_labels.gpkg')
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, TypeVar

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import Polygon

__all__ = ["SceneFiles", "make_scene", "CLASSES"]

logger = logging.getLogger(__name__)

#: Class value -> class name of the labelled objects.
CLASSES: dict[int, str] = {1: "pool", 2: "tree"}

_T = TypeVar("_T")
_POOL = 1
_TREE = 2
_BLOCK = 1024  # render/write window (a multiple of the 256 px TIFF tiles)
_M32 = np.uint64(0xFFFFFFFF)

# Draw layers, in order. Shadows are collected into one mask and applied once,
# after every layer up to _L_SHADOW, so that overlapping shadows do not stack.
_L_FIELD, _L_LAWN, _L_SIDEWALK, _L_VERGE, _L_ROAD, _L_MARK = 0, 1, 2, 3, 4, 5
_L_PAVE, _L_POOL, _L_SHADOW = 6, 7, 8
_L_WALL, _L_GROUND_OBJ, _L_ROOF, _L_ROOF_OBJ, _L_BUSH, _L_CROWN = 9, 10, 11, 12, 13, 14


def _rgbn(r: float, g: float, b: float, n: float) -> np.ndarray:
    """A colour as display values 0..255 of the red, green, blue and near-infrared bands."""
    return np.array([r, g, b, n], dtype=np.float32)


# Materials (R, G, B, NIR).
_GRASS = _rgbn(98, 118, 66, 178)
_GRASS_DRY = _rgbn(150, 140, 98, 150)
_SOIL = _rgbn(138, 116, 92, 122)
_LAWNS = (
    (_rgbn(78, 122, 56, 195), 0.55),  # irrigated lawn
    (_rgbn(104, 124, 70, 175), 0.22),  # patchy lawn
    (_rgbn(170, 152, 126, 150), 0.15),  # gravel / desert landscaping
    (_rgbn(142, 132, 96, 150), 0.08),  # dry lawn
)
_ASPHALT = _rgbn(84, 85, 89, 72)
_ASPHALT_OLD = _rgbn(112, 110, 106, 96)
_DIRT_ROAD = _rgbn(160, 138, 112, 132)
_SIDEWALK = _rgbn(176, 173, 164, 168)
_CONCRETE = _rgbn(188, 183, 172, 176)
_PAVERS = _rgbn(176, 150, 126, 160)
_WALL = _rgbn(192, 182, 164, 178)
_COPING = _rgbn(218, 212, 198, 196)
_SHADOW_FACTOR = np.array([0.40, 0.44, 0.54, 0.42], dtype=np.float32)
_ROOFS = (
    (_rgbn(176, 96, 72, 150), 0.22),  # terracotta
    (_rgbn(140, 78, 62, 128), 0.10),  # red-brown tiles
    (_rgbn(116, 98, 84, 118), 0.14),  # brown shingles
    (_rgbn(74, 76, 82, 88), 0.16),  # dark grey
    (_rgbn(128, 128, 126, 124), 0.14),  # mid grey
    (_rgbn(196, 186, 160, 178), 0.10),  # sand
    (_rgbn(206, 206, 200, 196), 0.06),  # white / light metal
    (_rgbn(64, 96, 150, 104), 0.05),  # blue roof (pool look-alike)
    (_rgbn(74, 108, 88, 100), 0.03),  # green metal roof
)
_WATERS = (  # (shallow end, deep end), weights
    ((_rgbn(98, 204, 214, 18), _rgbn(40, 134, 188, 10)), 0.45),  # cyan
    ((_rgbn(112, 212, 204, 20), _rgbn(52, 158, 182, 12)), 0.25),  # turquoise
    ((_rgbn(78, 156, 214, 16), _rgbn(30, 92, 172, 9)), 0.24),  # deep blue
    ((_rgbn(100, 170, 142, 30), _rgbn(64, 128, 110, 22)), 0.06),  # greenish
)
_TREE_GREENS = (
    (_rgbn(46, 74, 38, 205), 0.35),
    (_rgbn(60, 88, 44, 215), 0.30),
    (_rgbn(78, 92, 54, 196), 0.15),  # olive
    (_rgbn(38, 62, 50, 180), 0.15),  # blue-green conifer
    (_rgbn(92, 86, 48, 185), 0.05),  # yellowing
)
_BUSH = _rgbn(112, 142, 72, 190)
_CARS = (
    (_rgbn(214, 214, 212, 180), 0.25),
    (_rgbn(36, 36, 40, 40), 0.20),
    (_rgbn(160, 162, 166, 140), 0.22),
    (_rgbn(150, 40, 40, 90), 0.10),
    (_rgbn(38, 72, 160, 70), 0.13),  # blue car (pool look-alike)
    (_rgbn(90, 96, 104, 80), 0.10),
)
_TARPS = (_rgbn(36, 92, 196, 60), _rgbn(64, 150, 206, 70), _rgbn(44, 110, 170, 64))
_CROPS = (
    (_rgbn(96, 128, 62, 200), 0.35),  # green crop
    (_rgbn(150, 118, 88, 118), 0.25),  # ploughed soil
    (_rgbn(188, 168, 112, 156), 0.25),  # stubble
    (_rgbn(124, 138, 80, 176), 0.15),  # young crop
)


# --------------------------------------------------------------------------- noise


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


def _salt(seed: int, key: int) -> int:
    return int(_hash(np.array(seed & 0xFFFFFFFF), np.array(key), 0x5EED)) ^ (seed >> 32 & 0xFFFFFFFF)


def _value_noise(r0: int, r1: int, c0: int, c1: int, scale: float, salt: int) -> np.ndarray:
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


def _fbm(r0: int, r1: int, c0: int, c1: int, scale: float, octaves: int, salt: int) -> np.ndarray:
    """Fractal sum of value noise, roughly in [-1, 1]."""
    out = np.zeros((r1 - r0, c1 - c0), np.float32)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        out += np.float32(amp) * _value_noise(r0, r1, c0, c1, scale / 2**k, salt + 7919 * k)
        norm += amp
        amp *= 0.5
    return out / np.float32(norm)


# --------------------------------------------------------------------------- shapes


def _poly_mask(xy: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
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


class _Shape(Protocol):
    bbox: tuple[int, int, int, int]

    def mask(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray: ...

    def shifted(self, dx: float, dy: float) -> _Shape: ...

    def ring(self) -> np.ndarray: ...


def _bbox_of(xy: np.ndarray) -> tuple[int, int, int, int]:
    return (
        int(math.floor(xy[:, 1].min())),
        int(math.ceil(xy[:, 1].max())),
        int(math.floor(xy[:, 0].min())),
        int(math.ceil(xy[:, 0].max())),
    )


class _Rect:
    """A rotated rectangle: centre (cx, cy), half-length a along angle ``ang``, half-width b."""

    __slots__ = ("cx", "cy", "a", "b", "ang", "ca", "sa", "bbox")

    def __init__(self, cx: float, cy: float, a: float, b: float, ang: float) -> None:
        self.cx, self.cy, self.a, self.b, self.ang = float(cx), float(cy), float(a), float(b), float(ang)
        self.ca, self.sa = math.cos(ang), math.sin(ang)
        self.bbox = _bbox_of(self.ring())

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

    def shifted(self, dx: float, dy: float) -> _Rect:
        return _Rect(self.cx + dx, self.cy + dy, self.a, self.b, self.ang)


class _Poly:
    """A simple polygon given by its ring vertices in pixel coordinates."""

    __slots__ = ("xy", "bbox")

    def __init__(self, xy: np.ndarray) -> None:
        self.xy = np.asarray(xy, dtype=np.float64)
        self.bbox = _bbox_of(self.xy)

    def ring(self) -> np.ndarray:
        return self.xy

    def mask(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return _poly_mask(self.xy, r0, r1, c0, c1)

    def shifted(self, dx: float, dy: float) -> _Poly:
        return _Poly(self.xy + np.array([dx, dy]))


def _hull(*rings: np.ndarray) -> _Poly:
    """Convex hull of several rings, as a polygon (used for cast shadows)."""
    pts = shapely.multipoints(np.concatenate(rings))
    hull = shapely.convex_hull(pts)
    return _Poly(np.asarray(hull.exterior.coords)[:-1])


# --------------------------------------------------------------------------- rendering


class _Block:
    """A window of the scene being rendered: a float canvas plus a shadow mask."""

    def __init__(self, r0: int, r1: int, c0: int, c1: int) -> None:
        self.r0, self.r1, self.c0, self.c1 = r0, r1, c0, c1
        self.canvas = np.zeros((4, r1 - r0, c1 - c0), np.float32)
        self.shadow = np.zeros((r1 - r0, c1 - c0), bool)

    def clip(self, bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
        r0, r1 = max(bbox[0], self.r0), min(bbox[1], self.r1)
        c0, c1 = max(bbox[2], self.c0), min(bbox[3], self.c1)
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1

    def view(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return self.canvas[:, r0 - self.r0 : r1 - self.r0, c0 - self.c0 : c1 - self.c0]

    def shadow_view(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return self.shadow[r0 - self.r0 : r1 - self.r0, c0 - self.c0 : c1 - self.c0]


def _put(view: np.ndarray, mask: np.ndarray, colour: np.ndarray, factor: np.ndarray | float = 1.0) -> None:
    """Sets the masked pixels of a ``[4, h, w]`` view to colour * factor."""
    if np.ndim(factor) == 0:
        view[:, mask] = (colour * np.float32(factor))[:, None]
    elif factor.ndim == 2:
        view[:, mask] = colour[:, None] * factor[mask][None, :]
    else:
        view[:, mask] = factor[:, mask]


class _Op:
    """A drawing operation; subclasses implement :meth:`draw` on a window."""

    layer: int
    bbox: tuple[int, int, int, int]

    def render(self, blk: _Block) -> None:
        win = blk.clip(self.bbox)
        if win is not None:
            self.draw(blk, *win)

    def draw(self, blk: _Block, r0: int, r1: int, c0: int, c1: int) -> None:
        raise NotImplementedError


class _Paint(_Op):
    """Fills a shape with a material: colour, optional value-noise texture and stripes."""

    def __init__(
        self,
        layer: int,
        shape: _Shape,
        colour: np.ndarray,
        *,
        tex: float = 0.0,
        tex_scale: float = 4.0,
        salt: int = 0,
        stripes: tuple[float, float, float, float] | None = None,
    ) -> None:
        self.layer, self.shape, self.colour = layer, shape, colour
        self.tex, self.tex_scale, self.salt, self.stripes = tex, tex_scale, salt, stripes
        self.bbox = shape.bbox

    def draw(self, blk: _Block, r0: int, r1: int, c0: int, c1: int) -> None:
        m = self.shape.mask(r0, r1, c0, c1)
        if not m.any():
            return
        f: np.ndarray | float = 1.0
        if self.tex:
            f = 1 + np.float32(self.tex) * _value_noise(r0, r1, c0, c1, self.tex_scale, self.salt)
        if self.stripes is not None:
            dx, dy, period, amp = self.stripes
            x = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
            y = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
            ph = (x * dx + y * dy) / period
            tri = np.abs(ph - np.floor(ph) - 0.5) * 4 - 1  # triangle wave in [-1, 1]
            f = f * (1 + np.float32(amp) * tri)
        _put(blk.view(r0, r1, c0, c1), m, self.colour, f)


class _Shadow(_Op):
    """Marks a shape as shadowed (the shadow is applied once per pixel)."""

    def __init__(self, shape: _Shape) -> None:
        self.layer, self.shape, self.bbox = _L_SHADOW, shape, shape.bbox

    def draw(self, blk: _Block, r0: int, r1: int, c0: int, c1: int) -> None:
        blk.shadow_view(r0, r1, c0, c1)[...] |= self.shape.mask(r0, r1, c0, c1)


class _Roof(_Op):
    """A pitched (hip or gable) or flat roof on a rotated rectangle, lit by the sun."""

    def __init__(self, rect: _Rect, colour: np.ndarray, kind: str, sun: np.ndarray, salt: int) -> None:
        self.layer, self.rect, self.colour, self.kind, self.salt = _L_ROOF, rect, colour, kind, salt
        self.bbox = rect.bbox
        ca, sa = rect.ca, rect.sa
        # Brightness of facets sloping down along +u, -u, +v, -v (v axis = (-sa, ca)).
        k = 0.30
        self.lit = {
            "+u": 1 + k * (ca * sun[0] + sa * sun[1]),
            "-u": 1 - k * (ca * sun[0] + sa * sun[1]),
            "+v": 1 + k * (-sa * sun[0] + ca * sun[1]),
            "-v": 1 - k * (-sa * sun[0] + ca * sun[1]),
        }

    def draw(self, blk: _Block, r0: int, r1: int, c0: int, c1: int) -> None:
        rect = self.rect
        u, v = rect.local(r0, r1, c0, c1)
        du, dv = rect.a - np.abs(u), rect.b - np.abs(v)  # distance to the eaves
        m = (du > 0) & (dv > 0)
        if not m.any():
            return
        lit = self.lit
        if self.kind == "flat":
            f = np.full(m.shape, 1.0, np.float32)
            f[(np.minimum(du, dv) < 1.6)] = 1.08  # parapet
            f[(np.minimum(du, dv) >= 1.6) & (np.minimum(du, dv) < 2.6)] = 0.9
            f *= 1 + np.float32(0.03) * _value_noise(r0, r1, c0, c1, 5.0, self.salt)
        else:
            side_v = np.where(v > 0, np.float32(lit["+v"]), np.float32(lit["-v"]))
            if self.kind == "hip":
                side_u = np.where(u > 0, np.float32(lit["+u"]), np.float32(lit["-u"]))
                along = dv <= du
                f = np.where(along, side_v, side_u)
                ridge = np.abs(dv - du) < 0.7
                ridge |= (np.abs(v) < 0.6) & (np.abs(u) < rect.a - rect.b)
                slope = np.where(along, dv, du)
            else:
                f = side_v
                ridge = np.abs(v) < 0.6
                slope = dv
            f = f.astype(np.float32)
            # tile courses: faint stripes parallel to the eaves
            f *= 1 + np.float32(0.035) * np.cos(slope * np.float32(2 * math.pi / 2.6))
            f[ridge] *= 1.1
            f[np.minimum(du, dv) < 0.9] *= 0.85  # gutter line
            f *= 1 + np.float32(0.025) * _value_noise(r0, r1, c0, c1, 4.0, self.salt)
        _put(blk.view(r0, r1, c0, c1), m, self.colour, f)


class _Pool(_Op):
    """A swimming pool: light coping, then water shaded from shallow to deep end."""

    def __init__(
        self,
        water: _Shape,
        coping: _Shape,
        axis: tuple[float, float, float, float],
        colours: tuple[np.ndarray, np.ndarray],
        sun: np.ndarray,
        salt: int,
    ) -> None:
        self.layer, self.water, self.coping, self.axis, self.colours = _L_POOL, water, coping, axis, colours
        self.salt = salt
        self.bbox = coping.bbox
        self.wall_shadow = water.shifted(-1.8 * sun[0], -1.8 * sun[1])
        self.wall_lit = water.shifted(1.5 * sun[0], 1.5 * sun[1])

    def draw(self, blk: _Block, r0: int, r1: int, c0: int, c1: int) -> None:
        view = blk.view(r0, r1, c0, c1)
        mc = self.coping.mask(r0, r1, c0, c1)
        if mc.any():
            _put(view, mc, _COPING, 1 + 0.03 * _value_noise(r0, r1, c0, c1, 2.0, self.salt + 1))
        m = self.water.mask(r0, r1, c0, c1)
        if not m.any():
            return
        cx, cy, ux, uy = self.axis  # centre and half-length vector of the pool
        x = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - cx
        y = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - cy
        t = np.clip(0.5 + 0.5 * (x * ux + y * uy) / (ux * ux + uy * uy), 0, 1)
        t = t * t * (3 - 2 * t)
        shallow, deep = self.colours
        col = shallow[:, None, None] * (1 - t) + deep[:, None, None] * t
        ripple = 0.035 * _value_noise(r0, r1, c0, c1, 2.5, self.salt) + 0.03 * _value_noise(
            r0, r1, c0, c1, 7.0, self.salt + 2
        )
        col = col * (1 + ripple)
        shade = m & ~self.wall_shadow.mask(r0, r1, c0, c1)
        lit = m & ~self.wall_lit.mask(r0, r1, c0, c1)
        col[:, shade] *= np.array([0.72, 0.8, 0.86, 0.8], np.float32)[:, None]
        col[:, lit & ~shade] *= np.float32(1.1)
        _put(view, m, shallow, col)


class _Crown(_Op):
    """A tree crown or shrub: an irregular star-shaped polygon shaded like a lumpy dome."""

    def __init__(
        self,
        layer: int,
        cx: float,
        cy: float,
        theta: np.ndarray,
        radii: np.ndarray,
        colour: np.ndarray,
        sun: np.ndarray,
        sun_el: float,
        salt: int,
        clump: float,
    ) -> None:
        self.layer, self.cx, self.cy, self.theta, self.radii = layer, cx, cy, theta, radii
        self.colour, self.sun, self.salt, self.clump = colour, sun, salt, clump
        self.cos_el, self.sin_el = math.cos(sun_el), math.sin(sun_el)
        self.xy = np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)
        self.bbox = _bbox_of(self.xy)

    def draw(self, blk: _Block, r0: int, r1: int, c0: int, c1: int) -> None:
        m = _poly_mask(self.xy, r0, r1, c0, c1)
        if not m.any():
            return
        dx = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - np.float32(self.cx)
        dy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - np.float32(self.cy)
        ang = np.arctan2(dy, dx)
        rr = np.interp(ang.ravel(), self.theta, self.radii, period=2 * math.pi).reshape(ang.shape)
        rr = rr.astype(np.float32)
        nx, ny = dx / rr, dy / rr
        d2 = np.clip(nx * nx + ny * ny, 0, 1)
        nz = np.sqrt(1 - d2)
        lam = (nx * self.sun[0] + ny * self.sun[1]) * self.cos_el + nz * self.sin_el
        shade = 0.5 + 0.62 * np.clip(lam, 0, 1)
        sc = max(1.6, float(self.radii.mean()) / 5.0)
        tex = self.clump * (
            0.65 * _value_noise(r0, r1, c0, c1, sc, self.salt) + 0.35 * _value_noise(r0, r1, c0, c1, 1.6, self.salt + 1)
        )
        f = shade * (1 + tex) * (1 - 0.18 * d2 * d2)
        _put(blk.view(r0, r1, c0, c1), m, self.colour, f)


class _Disc(_Op):
    """A trampoline-like disc: dark mat inside a coloured ring."""

    def __init__(self, cx: float, cy: float, r: float, ring: np.ndarray) -> None:
        self.layer, self.cx, self.cy, self.r, self.ring = _L_GROUND_OBJ, cx, cy, r, ring
        self.bbox = (int(cy - r) - 1, int(cy + r) + 2, int(cx - r) - 1, int(cx + r) + 2)

    def draw(self, blk: _Block, r0: int, r1: int, c0: int, c1: int) -> None:
        dx = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - self.cx
        dy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - self.cy
        d = np.sqrt(dx * dx + dy * dy)
        view = blk.view(r0, r1, c0, c1)
        _put(view, d < self.r, self.ring)
        _put(view, d < self.r - 1.6, _rgbn(30, 30, 34, 40))


class _Ground:
    """The per-pixel background: grass, dry grass and bare soil with mild texture."""

    def __init__(self, seed: int) -> None:
        self.salts = [_salt(seed, 100 + k) for k in range(5)]

    def draw(self, blk: _Block) -> None:
        r0, r1, c0, c1 = blk.r0, blk.r1, blk.c0, blk.c1
        s = self.salts
        dry = np.clip(0.45 + 1.1 * _fbm(r0, r1, c0, c1, 420.0, 2, s[0]), 0, 1)
        soil = np.clip((_fbm(r0, r1, c0, c1, 110.0, 3, s[1]) - 0.22) * 3.0, 0, 1) * 0.85
        tex = 1 + 0.06 * _value_noise(r0, r1, c0, c1, 16.0, s[2]) + 0.03 * _value_noise(r0, r1, c0, c1, 3.0, s[3])
        for k in range(4):
            band = _GRASS[k] * (1 - dry) + _GRASS_DRY[k] * dry
            band = band * (1 - soil) + _SOIL[k] * soil
            blk.canvas[k] = band * tex


# --------------------------------------------------------------------------- planning


def _choice(rng: np.random.Generator, table: Sequence[tuple[_T, float]]) -> _T:
    """Picks an item of ``((item, weight), ...)`` with probability proportional to its weight."""
    w = np.array([t[1] for t in table], dtype=np.float64)
    return table[int(rng.choice(len(table), p=w / w.sum()))][0]


@dataclass
class _Lot:
    """A lot's frame: origin (front-left corner), unit vectors along the street (s) and inwards (t)."""

    ox: float
    oy: float
    es: np.ndarray
    et: np.ndarray
    width: float
    depth: float

    def pt(self, s: float, t: float) -> tuple[float, float]:
        return (
            self.ox + s * self.es[0] + t * self.et[0],
            self.oy + s * self.es[1] + t * self.et[1],
        )

    def rect(self, s: float, t: float, hs: float, ht: float, rot: float = 0.0) -> _Rect:
        """A rectangle centred at (s, t) with half-sizes along s and t, rotated by ``rot``."""
        cx, cy = self.pt(s, t)
        d = math.cos(rot) * self.es + math.sin(rot) * self.et
        return _Rect(cx, cy, hs, ht, math.atan2(d[1], d[0]))


@dataclass(frozen=True)
class _Grid:
    """The street grid's frame: u along the streets, v across, rotated by ``angle`` about ``centre``."""

    centre: np.ndarray
    angle: float

    @property
    def eu(self) -> np.ndarray:
        return np.array([math.cos(self.angle), math.sin(self.angle)])

    @property
    def ev(self) -> np.ndarray:
        return np.array([-math.sin(self.angle), math.cos(self.angle)])

    def px(self, u: float, v: float) -> np.ndarray:
        """Pixel (col, row) of grid coordinates (u, v)."""
        return self.centre + u * self.eu + v * self.ev


class _Planner:
    """Lays out the scene as drawing operations and labels, in pixel coordinates."""

    def __init__(self, size: int, seed: int, nodata_margin: bool) -> None:
        self.size = size
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        az = math.radians(rng.uniform(125, 165))
        self.sun_el = math.radians(rng.uniform(48, 60))
        self.sun = np.array([math.sin(az), -math.cos(az)])  # towards the sun, in (col, row)
        self.shadow_len = 1.0 / math.tan(self.sun_el)  # per unit of height
        self.ops: list[_Op] = []
        self.pools: list[tuple[np.ndarray, Polygon]] = []  # (label ring, keep-out polygon)
        self.trees: list[_Crown] = []
        self.tree_cands: list[tuple[float, float, float]] = []  # (col, row, radius)
        self.footprint = self._footprint(nodata_margin)
        self.inner = shapely.buffer(self.footprint, -2.0)
        shapely.prepare(self.inner)

    # -- helpers
    def salt(self) -> int:
        return int(self.rng.integers(0, 2**32))

    def add(self, op: _Op) -> None:
        b = op.bbox
        if b[1] > 0 and b[0] < self.size and b[3] > 0 and b[2] < self.size:
            self.ops.append(op)

    def paint(self, layer: int, shape: _Shape, colour: np.ndarray, tex: float = 0.0, tex_scale: float = 4.0,
              stripes: tuple[float, float, float, float] | None = None) -> None:
        self.add(_Paint(layer, shape, colour, tex=tex, tex_scale=tex_scale, salt=self.salt(), stripes=stripes))

    def cast(self, ring: np.ndarray, height: float) -> None:
        """Adds the shadow of an object of the given footprint ring and height (px)."""
        off = -self.sun * height * self.shadow_len
        self.add(_Shadow(_hull(ring, ring + off)))

    def inside(self, ring: np.ndarray) -> bool:
        return bool(self.inner.contains(Polygon(ring)))

    def _footprint(self, margin: bool) -> Polygon:
        s = float(self.size)
        if not margin:
            return Polygon([(0, 0), (s, 0), (s, s), (0, s)])
        rng = self.rng
        inset = rng.uniform(0.035, 0.075, size=4) * s  # top, right, bottom, left
        rot = math.radians(rng.uniform(-1.2, 1.2))
        c = s / 2
        top, right, bottom, left = inset[0], s - inset[1], s - inset[2], inset[3]
        corners = [(left, top), (right, top), (right, bottom), (left, bottom)]
        ring: list[tuple[float, float]] = []
        for k in range(4):
            (x0, y0), (x1, y1) = corners[k], corners[(k + 1) % 4]
            nx, ny = (c - (x0 + x1) / 2), (c - (y0 + y1) / 2)  # inward normal
            nn = math.hypot(nx, ny)
            nx, ny = nx / nn, ny / nn
            t, depth = 0.0, 0.0
            ring.append((x0, y0))
            while True:
                t += rng.uniform(0.04, 0.16)
                if t >= 0.97:
                    break
                # seam-line steps: jump sideways, then run along the edge
                px, py = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
                ring.append((px + nx * depth, py + ny * depth))
                depth = rng.uniform(0, 0.012) * s * (rng.random() < 0.7)
                ring.append((px + nx * depth, py + ny * depth))
            ring.append((x0 + (x1 - x0) * 0.985 + nx * depth, y0 + (y1 - y0) * 0.985 + ny * depth))
        xy = np.array(ring) - c
        rx = xy[:, 0] * math.cos(rot) - xy[:, 1] * math.sin(rot) + c
        ry = xy[:, 0] * math.sin(rot) + xy[:, 1] * math.cos(rot) + c
        poly = Polygon(np.stack([rx, ry], axis=1))
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
            if poly.geom_type != "Polygon":
                poly = max(poly.geoms, key=lambda g: g.area)
        return poly

    # -- layout
    def plan(self) -> None:
        rng = self.rng
        size = float(self.size)
        alpha = rng.uniform(-0.2, 0.2)
        centre = np.array([size / 2, size / 2]) + rng.uniform(-120, 120, size=2)
        grid = self.grid = _Grid(centre, alpha)
        to_px = grid.px
        self.road_hw = rng.uniform(13.5, 16.0)  # half-width of the asphalt
        verge, walk = 5.0, 5.0
        self.cw = self.road_hw + verge + walk  # half-width of the street corridor
        lot_depth = rng.uniform(108, 122)
        pv = 2 * lot_depth + 2 * self.cw
        pu = rng.uniform(640, 760)
        rural_dir = rng.normal(size=2)
        rural_dir /= np.linalg.norm(rural_dir)
        rural_at = 0.26 * size

        # block grid covering the scene
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]]) - centre
        us, vs = corners @ grid.eu, corners @ grid.ev
        bis = range(int(math.floor(us.min() / pu)) - 1, int(math.floor(us.max() / pu)) + 1)
        bjs = range(int(math.floor(vs.min() / pv)) - 1, int(math.floor(vs.max() / pv)) + 1)

        def visible(u0: float, u1: float, v0: float, v1: float, pad: float = 60) -> bool:
            pts = np.array([to_px(u, v) for u in (u0, u1) for v in (v0, v1)])
            return bool((pts.max(axis=0) > -pad).all() and (pts.min(axis=0) < size + pad).all())

        kinds: dict[tuple[int, int], str] = {}
        for bi in range(bis.start - 1, bis.stop + 1):
            for bj in range(bjs.start - 1, bjs.stop + 1):
                p = to_px((bi + 0.5) * pu, (bj + 0.5) * pv)
                if float((p - size / 2) @ rural_dir) > rural_at:
                    kinds[(bi, bj)] = "meadow" if rng.random() < 0.5 else "field"
                else:
                    kinds[(bi, bj)] = "park" if rng.random() < 0.06 else "houses"

        # streets
        for bi in bis:
            for bj in bjs:
                for horizontal in (True, False):
                    if horizontal:
                        a, b = kinds[(bi, bj - 1)], kinds[(bi, bj)]
                        u0, u1, v0, v1 = bi * pu, (bi + 1) * pu, bj * pv, bj * pv
                        arterial = bj % 3 == 0
                    else:
                        a, b = kinds[(bi - 1, bj)], kinds[(bi, bj)]
                        u0, u1, v0, v1 = bi * pu, bi * pu, bj * pv, (bj + 1) * pv
                        arterial = bi % 2 == 0
                    if not visible(u0, u1, v0, v1, pad=self.cw + 60):
                        continue
                    urban = a in ("houses", "park") or b in ("houses", "park")
                    if not urban and not arterial:
                        if rng.random() < 0.35:
                            self._tree_row(to_px(u0, v0), to_px(u1, v1), 0.0, rng.uniform(30, 40))
                        continue
                    self._street(to_px(u0, v0), to_px(u1, v1), urban, arterial and urban)

        # block contents
        for bi in bis:
            for bj in bjs:
                u0, u1 = bi * pu + self.cw, (bi + 1) * pu - self.cw
                v0, v1 = bj * pv + self.cw, (bj + 1) * pv - self.cw
                if not visible(u0, u1, v0, v1):
                    continue
                kind = kinds[(bi, bj)]
                if kind == "houses":
                    self._house_block(u0, u1, v0, v1, lot_depth)
                elif kind == "park":
                    self._park(u0, u1, v0, v1)
                elif kind == "field":
                    self._fields(u0, u1, v0, v1)
                else:
                    self._meadow(u0, u1, v0, v1)
        self._finish_trees()

    def _street(self, p0: np.ndarray, p1: np.ndarray, urban: bool, arterial: bool) -> None:
        """A street from p0 to p1: sidewalks, verges and asphalt (or a country road), trees, parked cars."""
        rng = self.rng
        d = p1 - p0
        length = float(np.linalg.norm(d))
        ang = math.atan2(d[1], d[0])
        c = (p0 + p1) / 2
        if urban:
            hw = self.road_hw + (3.0 if arterial else 0.0)
            self.paint(_L_SIDEWALK, _Rect(c[0], c[1], length / 2 + self.cw, self.cw, ang), _SIDEWALK, 0.03, 3.0)
            self.paint(_L_VERGE, _Rect(c[0], c[1], length / 2 + self.cw, self.cw - 5.0, ang), _GRASS * 0.95, 0.06, 5.0)
            self.paint(_L_ROAD, _Rect(c[0], c[1], length / 2 + hw, hw, ang), _ASPHALT, 0.05, 9.0)
            if arterial:
                e = d / length
                n_dash = int(length // 26)
                for k in range(1, n_dash):
                    q = p0 + e * (k * 26.0)
                    self.paint(_L_MARK, _Rect(q[0], q[1], 6.0, 0.75, ang), _rgbn(222, 206, 140, 190))
            if rng.random() < 0.3:
                off = self.road_hw + 5.0
                spacing = rng.uniform(30, 44)
                for side in (-1, 1):
                    if rng.random() < 0.8:
                        self._tree_row(p0, p1, side * off, spacing, margin=self.cw + 14)
            for _ in range(int(rng.poisson(length / 260))):
                t = rng.uniform(self.cw + 20, length - self.cw - 20)
                side = rng.choice([-1, 1])
                q = p0 + d * (t / length)
                n = np.array([-d[1], d[0]]) / length
                q = q + n * side * (self.road_hw - 4.5)
                self._car(q[0], q[1], ang + (0 if rng.random() < 0.5 else math.pi))
        else:
            hw = rng.uniform(8.0, 11.0)
            colour = _ASPHALT_OLD if rng.random() < 0.6 else _DIRT_ROAD
            self.paint(_L_ROAD, _Rect(c[0], c[1], length / 2 + hw, hw, ang), colour, 0.05, 9.0)
            if rng.random() < 0.3:
                self._tree_row(p0, p1, (hw + 8.0) * rng.choice([-1, 1]), rng.uniform(28, 40), margin=20)

    def _tree_row(self, p0: np.ndarray, p1: np.ndarray, offset: float, spacing: float, margin: float = 10) -> None:
        """Trees of a similar size every ``spacing`` px along p0-p1, ``offset`` px to its side."""
        rng = self.rng
        d = p1 - p0
        length = float(np.linalg.norm(d))
        e = d / length
        n = np.array([-e[1], e[0]])
        diam = rng.uniform(14, 30)
        t = margin + rng.uniform(0, spacing / 2)
        while t < length - margin:
            if rng.random() < 0.88:
                q = p0 + e * t + n * (offset + rng.normal(0, 1.0))
                self.tree_cands.append((q[0], q[1], float(np.clip(diam * rng.uniform(0.8, 1.15), 10, 40)) / 2))
            t += spacing * rng.uniform(0.9, 1.1)

    def _car(self, cx: float, cy: float, ang: float) -> None:
        """A car with windscreen, rear window and shadow."""
        rng = self.rng
        colour = _choice(rng, _CARS)
        length, width = rng.uniform(7.0, 8.2), rng.uniform(2.9, 3.3)
        body = _Rect(cx, cy, length, width, ang)
        self.cast(body.ring(), 4.5)
        self.paint(_L_GROUND_OBJ, body, colour)
        ca, sa = math.cos(ang), math.sin(ang)
        glass = _rgbn(40, 44, 52, 40)
        self.paint(_L_GROUND_OBJ, _Rect(cx + ca * length * 0.35, cy + sa * length * 0.35, 1.3, width * 0.8, ang), glass)
        self.paint(_L_GROUND_OBJ, _Rect(cx - ca * length * 0.5, cy - sa * length * 0.5, 0.9, width * 0.75, ang), glass)

    def _crown(self, cx: float, cy: float, r: float, bush: bool = False) -> _Crown:
        """An irregular crown outline (16-gon for trees, 12-gon for shrubs) around (cx, cy)."""
        rng = self.rng
        n = 12 if bush else 16
        phase = rng.uniform(0, 2 * math.pi)
        theta = phase + np.arange(n) * (2 * math.pi / n)
        theta = (theta + math.pi) % (2 * math.pi) - math.pi
        order = np.argsort(theta)
        theta = theta[order]
        k = np.arange(n)[order]
        lobes = np.zeros(n)
        for h, a in ((2, 0.06), (3, 0.07), (5, 0.05)):
            lobes += a * rng.uniform(0.3, 1.0) * np.cos(h * k * 2 * math.pi / n + rng.uniform(0, 2 * math.pi))
        radii = r * np.clip(1 + lobes + rng.normal(0, 0.035, n), 0.82, 1.12)
        if bush:
            colour = _BUSH * rng.uniform(0.9, 1.08)
            return _Crown(_L_BUSH, cx, cy, theta, radii, colour, self.sun, self.sun_el, self.salt(), 0.12)
        colour = _choice(rng, _TREE_GREENS) * rng.uniform(0.88, 1.1)
        colour = colour.astype(np.float32)
        colour[3] = colour[3] * rng.uniform(0.95, 1.05)
        return _Crown(_L_CROWN, cx, cy, theta, radii, colour, self.sun, self.sun_el, self.salt(), 0.3)

    def _bush(self, cx: float, cy: float, r: float) -> None:
        c = self._crown(cx, cy, r, bush=True)
        self.cast(c.xy, r * 1.3)
        self.add(c)

    def _cluster(self, cx: float, cy: float, n: int, rmin: float, rmax: float) -> None:
        """A dense stand of trees whose crowns touch and overlap."""
        rng = self.rng
        pts: list[tuple[float, float, float]] = [(cx, cy, rng.uniform(rmin, rmax))]
        tries = 0
        while len(pts) < n and tries < n * 30:
            tries += 1
            bx, by, br = pts[int(rng.integers(len(pts)))]
            r = rng.uniform(rmin, rmax)
            a = rng.uniform(0, 2 * math.pi)
            dist = (br + r) * rng.uniform(0.6, 0.95)
            x, y = bx + dist * math.cos(a), by + dist * math.sin(a)
            if all(math.hypot(x - px, y - py) > 0.58 * (r + pr) for px, py, pr in pts):
                pts.append((x, y, r))
        for x, y, r in pts:
            self.tree_cands.append((x, y, r))

    def _house_block(self, u0: float, u1: float, v0: float, v1: float, lot_depth: float) -> None:
        """Two rows of lots back to back, each facing its street."""
        rng = self.rng
        to_px, eu, ev = self.grid.px, self.grid.eu, self.grid.ev
        length = u1 - u0
        widths = []
        while sum(widths) < length - 30:
            widths.append(rng.uniform(52, 78))
        widths = np.array(widths) * (length / sum(widths))
        for front_v, et in ((v0, ev), (v1, -ev)):
            s0 = 0.0
            for w in widths:
                o = to_px(u0 + s0, front_v)
                lot = _Lot(float(o[0]), float(o[1]), eu, et, float(w), float(lot_depth))
                s0 += w
                c = np.array(lot.pt(w / 2, lot_depth / 2))
                if (c < -150).any() or (c > self.size + 150).any():
                    continue
                self._lot(lot)
        # groups of trees where the back yards meet
        for _ in range(int(rng.poisson(length / 500))):
            q = to_px(rng.uniform(u0 + 20, u1 - 20), (v0 + v1) / 2 + rng.normal(0, 6))
            self._cluster(q[0], q[1], int(rng.integers(3, 8)), 6, 13)

    def _lot(self, lot: _Lot) -> None:
        """A house lot: lawn, house with garage or wing, driveway, walls, pool, yard things, shrubs, trees."""
        rng = self.rng
        w, depth = lot.width, lot.depth
        # yards
        lawn = _choice(rng, _LAWNS) * rng.uniform(0.94, 1.06)
        self.paint(_L_LAWN, lot.rect(w / 2, depth / 2, w / 2, depth / 2), lawn, 0.07, rng.uniform(10, 16))
        if rng.random() < 0.05:  # vacant lot
            dirt = _SOIL * rng.uniform(1.0, 1.15)
            self.paint(_L_LAWN, lot.rect(w / 2, depth / 2, w / 2 - 2, depth / 2 - 2), dirt, 0.06, 6)
            return
        # house
        hw = float(np.clip(w * rng.uniform(0.55, 0.78), 34, 70)) / 2
        hd = rng.uniform(28, 42) / 2
        setback = rng.uniform(13, 22)
        hs = rng.uniform(3 + hw, max(3 + hw, w - 3 - hw))
        ht = setback + hd
        main = lot.rect(hs, ht, hw, hd)
        roof = _choice(rng, _ROOFS) * rng.uniform(0.92, 1.08)
        kind = "hip" if rng.random() < 0.55 else ("gable" if rng.random() < 0.8 else "flat")
        height = rng.uniform(16, 26) if rng.random() < 0.7 else rng.uniform(26, 36)
        back = ht + hd  # t of the house's back wall
        parts = [main]
        wing_kind = rng.choice(["none", "garage", "wing"], p=[0.35, 0.35, 0.3])
        g_side = rng.choice([-1, 1])
        dw_s = hs + g_side * (hw - 10)  # driveway position
        if wing_kind == "garage":
            gw = rng.uniform(10, 12)
            g_front = max(6.0, setback - rng.uniform(6, 12))
            gd = (setback + 8 - g_front) / 2
            gs = hs + g_side * (hw - gw)
            parts.insert(0, lot.rect(gs, g_front + gd, gw, gd))
            dw_s = gs
            drive_end = g_front
        else:
            drive_end = setback
            if wing_kind == "wing":
                ww = hw * rng.uniform(0.35, 0.55)
                wd = rng.uniform(7, 13)
                ws = hs - g_side * (hw - ww)
                parts.insert(0, lot.rect(ws, back + wd - 4, ww, wd))
                back = back + 2 * wd - 4
        # driveway, walls, front path
        drive = lot.rect(dw_s, drive_end / 2, 9.0, drive_end / 2 + 0.5)
        self.paint(_L_PAVE, drive, _CONCRETE * rng.uniform(0.92, 1.04), 0.03, 4)
        wall_t0 = ht
        walls = [lot.rect(w - 1.0, (wall_t0 + depth) / 2, 1.0, (depth - wall_t0) / 2),
                 lot.rect(w / 2, depth - 1.0, w / 2, 1.0)]
        if rng.random() < 0.4:
            walls.append(lot.rect(1.0, (wall_t0 + depth) / 2, 1.0, (depth - wall_t0) / 2))
        for wr in walls:
            self.paint(_L_WALL, wr, _WALL, 0.03, 3)
            self.cast(wr.ring(), 4.0)
        # pool and deck in the back yard
        keep: list[tuple[float, float, float, float]] = []  # occupied (s0, s1, t0, t1) in lot frame
        yard = (5.0, w - 5.0, back + 6.0, depth - 6.0)
        if rng.random() < 0.8:
            box_ = self._pool(lot, yard)
            if box_ is not None:
                keep.append(box_)
        # extras in the yard: shed, trampoline, tarp
        if rng.random() < 0.2:
            a, b = rng.uniform(6, 11), rng.uniform(6, 9)
            spot = self._free_spot(yard, a, b, keep)
            if spot is not None:
                shed = lot.rect(spot[0], spot[1], a, b)
                self.cast(shed.ring(), 9)
                shed_kind = "flat" if rng.random() < 0.5 else "gable"
                self.add(_Roof(shed, _choice(rng, _ROOFS) * 1.05, shed_kind, self.sun, self.salt()))
                keep.append((spot[0] - a, spot[0] + a, spot[1] - b, spot[1] + b))
        if rng.random() < 0.07:
            r = rng.uniform(6, 8)
            spot = self._free_spot(yard, r, r, keep)
            if spot is not None:
                x, y = lot.pt(*spot)
                ang = np.linspace(0, 2 * math.pi, 12, endpoint=False)
                self.cast(np.stack([x + r * np.cos(ang), y + r * np.sin(ang)], axis=1), 3)
                pad_colour = _TARPS[int(rng.integers(3))] if rng.random() < 0.6 else _rgbn(60, 140, 80, 120)
                self.add(_Disc(x, y, r, pad_colour))
                keep.append((spot[0] - r, spot[0] + r, spot[1] - r, spot[1] + r))
        if rng.random() < 0.06:
            a, b = rng.uniform(4, 8), rng.uniform(3, 6)
            spot = self._free_spot(yard, a, b, keep)
            if spot is not None:
                self.paint(_L_GROUND_OBJ, lot.rect(spot[0], spot[1], a, b, rng.uniform(-0.5, 0.5)),
                           _TARPS[int(rng.integers(3))], 0.12, 1.5)
                keep.append((spot[0] - a - 2, spot[0] + a + 2, spot[1] - a - 2, spot[1] + a + 2))
        # house: shadow, roofs, roof objects
        for part in parts:
            self.cast(part.ring(), height)
        for part in parts:
            self.add(_Roof(part, roof, kind, self.sun, self.salt()))
        if kind != "flat" and rng.random() < 0.12:  # solar panels on the sunnier half
            vx, vy = -main.sa, main.ca  # the roof's across axis
            side = 1.0 if vx * self.sun[0] + vy * self.sun[1] > 0 else -1.0
            off = side * hd * 0.5
            panel = _Rect(main.cx + off * vx, main.cy + off * vy, hw * rng.uniform(0.35, 0.6), hd * 0.28, main.ang)
            self.paint(_L_ROOF_OBJ, panel, _rgbn(36, 46, 78, 50), stripes=(main.ca, main.sa, 3.2, 0.25))
        elif rng.random() < 0.02:
            tarp = lot.rect(hs + rng.uniform(-hw / 2, hw / 2), ht, rng.uniform(4, 8), rng.uniform(3, 6))
            self.paint(_L_ROOF_OBJ, tarp, _TARPS[int(rng.integers(3))], 0.1, 1.5)
        # car(s) on the driveway
        if rng.random() < 0.55 and drive_end > 17:
            x, y = lot.pt(dw_s + rng.uniform(-3, 3), drive_end / 2 + rng.uniform(-2, 2))
            self._car(x, y, math.atan2(lot.et[1], lot.et[0]) + (0 if rng.random() < 0.5 else math.pi))
        # shrubs along the front of the house and the walls
        for _ in range(int(rng.integers(0, 6))):
            r = rng.uniform(2.2, 3.8)
            s = rng.uniform(hs - hw, hs + hw)
            if abs(s - dw_s) < 11 + r:
                continue
            self._bush(*lot.pt(s, setback - r - 0.5), r)
        for _ in range(int(rng.integers(0, 5))):
            r = rng.uniform(2.2, 3.8)
            spot = self._free_spot((3 + r, w - 3 - r, back + 2 + r, depth - 3 - r), r, r, keep, edge=True)
            if spot is not None:
                self._bush(*lot.pt(*spot), r)
                keep.append((spot[0] - r, spot[0] + r, spot[1] - r, spot[1] + r))
        # yard trees
        n_trees = int(rng.choice([0, 1, 1, 1, 2, 2, 3, 4]))
        for _ in range(n_trees):
            r = float(np.clip(rng.gamma(6.0, 1.7), 4.2, 22.0))
            if rng.random() < 0.5:  # front yard
                s, t = rng.uniform(4, w - 4), rng.uniform(3, max(4, setback - 3))
            else:
                s, t = rng.uniform(4, w - 4), rng.uniform(min(back + 2, depth - 6), depth - 4)
            if abs(s - hs) < hw + 0.4 * r and abs(t - ht) < hd + 0.4 * r:
                continue
            if any(b0 - r - 2 < s < b1 + r + 2 and b2 - r - 2 < t < b3 + r + 2 for b0, b1, b2, b3 in keep):
                continue
            x, y = lot.pt(s, t)
            self.tree_cands.append((x, y, r))
            if rng.random() < 0.25:  # a small group at the back
                dx, dy = rng.uniform(-1, 1, size=2) * r
                self.tree_cands.append((x + dx, y + dy, r * rng.uniform(0.6, 0.9)))

    def _free_spot(self, area: tuple[float, float, float, float], a: float, b: float,
                   keep: list[tuple[float, float, float, float]], edge: bool = False) -> tuple[float, float] | None:
        """A centre (s, t) for a 2a x 2b object in ``area`` clear of the ``keep`` boxes, or None."""
        rng = self.rng
        s0, s1, t0, t1 = area
        if s1 - s0 < 2 * a or t1 - t0 < 2 * b:
            return None
        for _ in range(12):
            s = rng.uniform(s0 + a, s1 - a)
            t = rng.uniform(t0 + b, t1 - b)
            if edge:  # hug the yard's edge
                if rng.random() < 0.5:
                    s = s0 + a if rng.random() < 0.5 else s1 - a
                else:
                    t = t1 - b
            if not any(k0 - a - 3 < s < k1 + a + 3 and k2 - b - 3 < t < k3 + b + 3 for k0, k1, k2, k3 in keep):
                return s, t
        return None

    def _pool(self, lot: _Lot, yard: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
        """Places a pool in the yard; returns its occupied box in the lot frame (or None)."""
        rng = self.rng
        s0, s1, t0, t1 = yard
        avail_s, avail_t = s1 - s0, t1 - t0
        deck = rng.uniform(3, 8) if rng.random() < 0.55 else 0.0
        coping = rng.uniform(1.6, 2.6)
        along_s = avail_s >= avail_t or rng.random() < 0.15
        big, small = (avail_s, avail_t) if along_s else (avail_t, avail_s)
        if small - 2 * (deck + coping + 1) < 12:  # shrink the deck, or leave it out
            deck = (small - 12) / 2 - coping - 1
            deck = deck if deck >= 2 else 0.0
        pad = deck + coping + 1
        long_avail, short_avail = big - 2 * pad, small - 2 * pad
        if short_avail < 10 or long_avail < 14:
            return None
        length = min(rng.uniform(18, 56), long_avail)
        width = min(rng.uniform(10, 22), short_avail, length * 0.7)
        if width < 9:
            return None
        length = max(length, width * 1.25)
        if length > long_avail:
            return None
        rot = (0.0 if along_s else math.pi / 2)
        if rng.random() < 0.3:
            rot += rng.normal(0, 0.06)
        elif rng.random() < 0.12:
            rot += rng.uniform(-0.5, 0.5)
        a, b = length / 2, width / 2
        ext_s = abs(math.cos(rot)) * (a + pad) + abs(math.sin(rot)) * (b + pad)
        ext_t = abs(math.sin(rot)) * (a + pad) + abs(math.cos(rot)) * (b + pad)
        if 2 * ext_s > avail_s or 2 * ext_t > avail_t:
            return None
        s = rng.uniform(s0 + ext_s, s1 - ext_s)
        t = rng.uniform(t0 + ext_t, t1 - ext_t)
        shape_kind = _choice(rng, (("rect", 0.55), ("rounded", 0.25), ("kidney", 0.12), ("free", 0.08)))
        frame = lot.rect(s, t, a, b, rot)
        if shape_kind == "rect":
            water: _Shape = frame
            coping_shape: _Shape = _Rect(frame.cx, frame.cy, a + coping, b + coping, frame.ang)
        else:
            if shape_kind == "rounded":
                rr = b * rng.uniform(0.3, 0.95)
                local = shapely.box(-a + rr, -b + rr, a - rr, b - rr).buffer(rr, quad_segs=4)
                xy = np.asarray(local.exterior.coords)[:-1]
            else:
                tt = np.linspace(0, 2 * math.pi, 40, endpoint=False)
                x, y = np.cos(tt), np.sin(tt)
                if shape_kind == "kidney":
                    y = y * (1 + 0.25 * x) - rng.uniform(0.25, 0.45) * (1 - x * x)
                else:
                    rad = 1 + 0.07 * np.cos(2 * tt + rng.uniform(0, 6.3)) + 0.05 * np.cos(3 * tt + rng.uniform(0, 6.3))
                    x, y = x * rad, y * rad
                # normalise to the requested extent
                x = (x - (x.max() + x.min()) / 2) / ((x.max() - x.min()) / 2) * a
                y = (y - (y.max() + y.min()) / 2) / ((y.max() - y.min()) / 2) * b
                xy = np.stack([x, y], axis=1)
            ca, sa = frame.ca, frame.sa
            pxy = np.stack([frame.cx + xy[:, 0] * ca - xy[:, 1] * sa, frame.cy + xy[:, 0] * sa + xy[:, 1] * ca], axis=1)
            poly = Polygon(pxy)
            if not poly.is_valid:
                return None
            water = _Poly(pxy)
            coping_shape = _Poly(np.asarray(poly.buffer(coping, quad_segs=3).exterior.coords)[:-1])
        keepout = Polygon(coping_shape.ring()).buffer(2.0, quad_segs=2)
        if not self.inside(coping_shape.ring()):
            return None
        if deck:
            deck_b = b + coping + deck * rng.uniform(0.4, 1.0)
            deck_rect = _Rect(frame.cx, frame.cy, a + coping + deck, deck_b, frame.ang)
            self.paint(_L_PAVE, deck_rect, _CONCRETE if rng.random() < 0.6 else _PAVERS, 0.03, 2.5)
        colours = _choice(rng, _WATERS)
        jit = rng.uniform(0.94, 1.05)
        colours = (colours[0] * jit, colours[1] * jit)
        if rng.random() < 0.5:
            colours = colours[::-1] if rng.random() < 0.3 else colours
        sign = 1 if rng.random() < 0.5 else -1
        axis = (frame.cx, frame.cy, sign * frame.ca * a, sign * frame.sa * a)
        self.add(_Pool(water, coping_shape, axis, colours, self.sun, self.salt()))
        self.pools.append((water.ring().copy(), keepout))
        return (s - ext_s, s + ext_s, t - ext_t, t + ext_t)

    def _park(self, u0: float, u1: float, v0: float, v1: float) -> None:
        """A lawn with a footpath, maybe a sports court, and groups of trees."""
        rng = self.rng
        to_px, alpha, eu, ev = self.grid.px, self.grid.angle, self.grid.eu, self.grid.ev
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        c = to_px(cu, cv)
        self.paint(_L_LAWN, _Rect(c[0], c[1], (u1 - u0) / 2, (v1 - v0) / 2, alpha), _LAWNS[0][0] * 1.03, 0.08, 12)
        # a footpath across the park
        p = to_px(rng.uniform(u0, u1), v0)
        q = to_px(rng.uniform(u0, u1), v1)
        d = q - p
        self.paint(_L_PAVE, _Rect(*(p + q) / 2, np.linalg.norm(d) / 2, 3.5, math.atan2(d[1], d[0])), _CONCRETE, 0.03, 4)
        # a sports court (a big pool look-alike)
        if rng.random() < 0.7:
            cs = rng.uniform(u0 + 80, u1 - 80)
            ct = rng.uniform(v0 + 45, v1 - 45)
            cc = to_px(cs, ct)
            outer = _rgbn(70, 120, 90, 110) if rng.random() < 0.5 else _rgbn(150, 80, 70, 110)
            self.paint(_L_PAVE, _Rect(cc[0], cc[1], 62, 32, alpha), outer)
            inner = _rgbn(50, 100, 170, 80) if rng.random() < 0.6 else _rgbn(60, 130, 90, 110)
            self.paint(_L_PAVE, _Rect(cc[0], cc[1], 40, 18, alpha), inner)
            white = _rgbn(235, 235, 230, 210)
            lines = ((0, -18, 40, 0.6), (0, 18, 40, 0.6), (-40, 0, 0.6, 18), (40, 0, 0.6, 18), (0, 0, 0.8, 19),
                     (-21, 0, 0.5, 14), (21, 0, 0.5, 14), (0, -14, 40, 0.5), (0, 14, 40, 0.5))
            for du, dv, a, b in lines:  # tennis-court markings
                q2 = cc + du * eu + dv * ev
                self.paint(_L_PAVE, _Rect(q2[0], q2[1], a, b, alpha), white)
        for _ in range(int(rng.integers(2, 5))):
            q2 = to_px(rng.uniform(u0 + 30, u1 - 30), rng.uniform(v0 + 30, v1 - 30))
            self._cluster(q2[0], q2[1], int(rng.integers(4, 12)), 7, 16)
        for _ in range(int(rng.integers(3, 9))):
            q2 = to_px(rng.uniform(u0 + 10, u1 - 10), rng.uniform(v0 + 10, v1 - 10))
            self.tree_cands.append((q2[0], q2[1], rng.uniform(6, 19)))

    def _fields(self, u0: float, u1: float, v0: float, v1: float) -> None:
        """One to three crop fields with furrows, maybe a hedgerow."""
        rng = self.rng
        to_px, alpha, eu, ev = self.grid.px, self.grid.angle, self.grid.eu, self.grid.ev
        n = int(rng.integers(1, 4))
        cuts = np.sort(rng.uniform(u0, u1, n - 1)) if n > 1 else np.array([])
        edges = np.concatenate([[u0], cuts, [u1]])
        for a, b in zip(edges[:-1], edges[1:]):
            if b - a < 40:
                continue
            c = to_px((a + b) / 2, (v0 + v1) / 2)
            crop = _choice(rng, _CROPS) * rng.uniform(0.92, 1.08)
            d = eu if rng.random() < 0.5 else ev
            period = rng.uniform(5, 9)
            self.paint(_L_FIELD, _Rect(c[0], c[1], (b - a) / 2 - 3, (v1 - v0) / 2 - 3, alpha), crop, 0.06, 14,
                       stripes=(float(d[0]), float(d[1]), period, rng.uniform(0.04, 0.08)))
        if rng.random() < 0.5:  # a hedgerow along one edge
            v = v0 - 2 if rng.random() < 0.5 else v1 + 2
            self._tree_row(to_px(u0, v), to_px(u1, v), 0.0, rng.uniform(16, 26), margin=12)

    def _meadow(self, u0: float, u1: float, v0: float, v1: float) -> None:
        """Rough grass with copses (dense tree stands), lone trees and shrubs."""
        rng = self.rng
        to_px = self.grid.px
        for _ in range(int(rng.integers(1, 3))):
            q = to_px(rng.uniform(u0 + 60, u1 - 60), rng.uniform(v0 + 50, v1 - 50))
            self._cluster(q[0], q[1], int(rng.integers(10, 34)), 8, 20)
        for _ in range(int(rng.integers(2, 8))):
            q = to_px(rng.uniform(u0, u1), rng.uniform(v0, v1))
            self.tree_cands.append((q[0], q[1], rng.uniform(7, 20)))
        for _ in range(int(rng.integers(4, 14))):
            q = to_px(rng.uniform(u0, u1), rng.uniform(v0, v1))
            self._bush(q[0], q[1], rng.uniform(2.5, 4))

    def _finish_trees(self) -> None:
        """Turns tree candidates into crowns, dropping those on pools or off the footprint."""
        rng = self.rng
        crowns = [self._crown(x, y, min(max(r, 5.0), 20.0)) for x, y, r in self.tree_cands]
        if not crowns:
            return
        polys = shapely.polygons([c.xy for c in crowns])
        ok = shapely.contains(self.inner, polys)
        if self.pools:
            tree = shapely.STRtree([k for _, k in self.pools])
            hit = tree.query(polys, predicate="intersects")
            ok[np.unique(hit[0])] = False
        kept = [c for c, k in zip(crowns, ok) if k]
        for c in kept:
            r = float(c.radii.mean())
            self.cast(c.xy * 0.9 + np.array([c.cx, c.cy]) * 0.1, 2 * r * rng.uniform(1.0, 1.4) + 4)
        # big crowns first, so that small trees stay visible
        order = sorted(range(len(kept)), key=lambda i: (-round(float(kept[i].radii.mean()), 3), i))
        for i in order:
            self.trees.append(kept[i])
            self.ops.append(kept[i])


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class SceneFiles:
    """Paths of the files written by :func:`make_scene`.

    Attributes:
        raster: the GeoTIFF.
        labels: GeoPackage of object polygons, in the raster's CRS.
        labels_4326: the same polygons in EPSG:4326 (longitude, latitude).

    Examples:
        See :func:`make_scene`, which returns it.
    """

    raster: Path
    labels: Path
    labels_4326: Path


def _to_dtype(block: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.clip(np.rint(block), 1, 255).astype(np.uint8)
    refl = (np.clip(block, 0, None) / 255.0) ** 2 * 0.85
    return np.clip(np.rint(refl * 10000), 1, 10000).astype(np.uint16)


def make_scene(
    out_dir: str | Path,
    size: int = 2560,
    *,
    seed: int = 0,
    crs: str = "EPSG:32633",
    pixel_size: float = 0.3,
    origin: tuple[float, float] = (500000.0, 4650000.0),
    bands: int = 3,
    dtype: str = "uint8",
    nodata_margin: bool = True,
    name: str = "scene",
) -> SceneFiles:
    """Writes a synthetic suburban aerial scene and its pool and tree labels.

    The raster is a north-up GeoTIFF of ``size`` x ``size`` pixels, tiled
    256 x 256, DEFLATE-compressed with horizontal differencing, nodata 0. The
    content is laid out in pixels for a ~0.3 m ground resolution (pools 12-60
    px long, tree crowns 8-45 px across) whatever ``pixel_size`` says;
    ``pixel_size``, ``origin`` and ``crs`` only georeference it.

    Existing files of the same names are replaced.

    Args:
        out_dir: folder to write into (created if missing).
        size: width and height in pixels, at least 64. Default 2560 (768 m at 0.3 m).
        seed: random seed; the same arguments give identical files' contents. Default 0.
        crs: a projected CRS (metres) for the raster and the labels. Default ``"EPSG:32633"``
            (UTM zone 33N).
        pixel_size: ground size of a pixel in CRS units (metres), > 0. Default 0.3.
        origin: map coordinates (x, y) of the raster's top-left corner, CRS units.
            Default ``(500000.0, 4650000.0)``.
        bands: 3 (red, green, blue; the default) or 4 (red, green, blue, near-infrared).
        dtype: ``"uint8"`` (natural colour 1..255; the default) or ``"uint16"``
            (reflectance x 10000, like a satellite product).
        nodata_margin: surround the valid area with an irregular nodata (0)
            margin, like the edge of an orthophoto mosaic. Valid pixels are
            never 0 in any band. Default True.
        name: stem of the file names. Default ``"scene"``.

    Returns:
        The paths of ``<name>.tif``, ``<name>_labels.gpkg`` and
        ``<name>_labels_4326.gpkg``. The labels have columns ``Classvalue``
        (1 pool, 2 tree), ``Classname`` and the polygon ``geometry``.

    Raises:
        ValueError: a size that is not an integer >= 64, a band count other than 3 or 4, a
            dtype other than ``"uint8"``/``"uint16"``, or a ``pixel_size`` <= 0.

    Examples:
        >>> import tempfile
        >>> import geopandas as gpd, rasterio
        >>> files = make_scene(tempfile.mkdtemp(), size=256, seed=1, bands=4, dtype="uint16")
        >>> with rasterio.open(files.raster) as src:
        ...     print(src.width, src.height, src.count, src.dtypes[0], src.crs, src.res)
        256 256 4 uint16 EPSG:32633 (0.3, 0.3)
        >>> sorted(gpd.read_file(files.labels)["Classname"].unique())
        ['pool', 'tree']
    """
    import geopandas as gpd
    import pandas as pd
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    if int(size) != size or size < 64:
        raise ValueError(f"size must be an integer >= 64, got {size!r}")
    if bands not in (3, 4):
        raise ValueError(f"bands must be 3 or 4, got {bands!r}")
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")
    if pixel_size <= 0:
        raise ValueError(f"pixel_size must be positive, got {pixel_size!r}")
    size = int(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = SceneFiles(out / f"{name}.tif", out / f"{name}_labels.gpkg", out / f"{name}_labels_4326.gpkg")

    t0 = time.perf_counter()
    planner = _Planner(size, seed, nodata_margin)
    planner.plan()
    ops = sorted(planner.ops, key=lambda o: o.layer)  # stable: keeps the planning order within a layer
    bboxes = np.array([o.bbox for o in ops], dtype=np.int64).reshape(-1, 4)
    layers = np.array([o.layer for o in ops], dtype=np.int64)
    n_before_shadow = int(np.searchsorted(layers, _L_SHADOW, side="right"))
    ground = _Ground(seed)
    fp_xy = np.asarray(planner.footprint.exterior.coords)[:-1]
    shapely.prepare(planner.footprint)
    logger.info("planned %d drawing operations, %d pools, %d trees in %.1f s",
                len(ops), len(planner.pools), len(planner.trees), time.perf_counter() - t0)

    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])  # north-up
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 9,
        "interleave": "pixel",
        "bigtiff": "if_safer",
    }
    if bands == 3 and dtype == "uint8":
        profile["photometric"] = "RGB"
    t1 = time.perf_counter()
    # a small block cache: dirty tiles are compressed and flushed as we go
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(files.raster, "w", **profile) as dst:
        for i, desc in enumerate(("red", "green", "blue", "nir")[:bands], start=1):
            dst.set_band_description(i, desc)
        for r0 in range(0, size, _BLOCK):
            for c0 in range(0, size, _BLOCK):
                r1, c1 = min(r0 + _BLOCK, size), min(c0 + _BLOCK, size)
                blk = _Block(r0, r1, c0, c1)
                ground.draw(blk)
                hit = (bboxes[:, 0] < r1) & (bboxes[:, 1] > r0) & (bboxes[:, 2] < c1) & (bboxes[:, 3] > c0)
                sel = np.nonzero(hit)[0]
                shadow_done = False
                for i in sel:
                    if not shadow_done and i >= n_before_shadow:
                        blk.canvas[:, blk.shadow] *= _SHADOW_FACTOR[:, None]
                        shadow_done = True
                    ops[i].render(blk)
                if not shadow_done:
                    blk.canvas[:, blk.shadow] *= _SHADOW_FACTOR[:, None]
                data = _to_dtype(blk.canvas[:bands], dtype)
                cell = shapely.box(c0, r0, c1, r1)
                if not planner.footprint.contains(cell):
                    valid = _poly_mask(fp_xy, r0, r1, c0, c1)
                    data[:, ~valid] = 0
                dst.write(data, window=Window(c0, r0, c1 - c0, r1 - r0))
    logger.info("wrote %s (%d x %d, %d bands %s) in %.1f s", files.raster, size, size, bands, dtype,
                time.perf_counter() - t1)

    # labels: pixel (col, row) -> map through the affine
    coef = [transform.a, transform.b, transform.d, transform.e, transform.xoff, transform.yoff]
    rings = [ring for ring, _ in planner.pools] + [c.xy for c in planner.trees]
    values = [_POOL] * len(planner.pools) + [_TREE] * len(planner.trees)
    geoms = [shapely.affinity.affine_transform(Polygon(r), coef) for r in rings]
    gdf = gpd.GeoDataFrame(
        {
            "Classvalue": np.array(values, dtype=np.int32),
            "Classname": pd.Series([CLASSES[v] for v in values], dtype=str),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
        crs=crs,
    )
    for path, frame in ((files.labels, gdf), (files.labels_4326, gdf.to_crs("EPSG:4326"))):
        path.unlink(missing_ok=True)
        frame.to_file(path, driver="GPKG", engine="pyogrio", layer=path.stem, geometry_type="Polygon")
    logger.info("wrote %d labels (%d pools, %d trees) in %.1f s total", len(gdf), len(planner.pools),
                len(planner.trees), time.perf_counter() - t0)
    return files
