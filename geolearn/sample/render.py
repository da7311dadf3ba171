"""Drawing operations: each paints its shape on a block of the raster (materials, shadows, roofs, pools, crowns)."""

from __future__ import annotations

import math

import numpy as np

from geolearn.sample import noise, palette, shapes


class Block:
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


class Op:
    """A drawing operation; subclasses implement :meth:`draw` on a window."""

    layer: int
    bbox: tuple[int, int, int, int]

    def render(self, blk: Block) -> None:
        win = blk.clip(self.bbox)
        if win is not None:
            self.draw(blk, *win)

    def draw(self, blk: Block, r0: int, r1: int, c0: int, c1: int) -> None:
        raise NotImplementedError


class Paint(Op):
    """Fills a shape with a material: colour, optional value-noise texture and stripes."""

    def __init__(
        self,
        layer: int,
        shape: shapes.Shape,
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

    def draw(self, blk: Block, r0: int, r1: int, c0: int, c1: int) -> None:
        m = self.shape.mask(r0, r1, c0, c1)
        if not m.any():
            return
        f: np.ndarray | float = 1.0
        if self.tex:
            f = 1 + np.float32(self.tex) * noise.value_noise(r0, r1, c0, c1, self.tex_scale, self.salt)
        if self.stripes is not None:
            dx, dy, period, amp = self.stripes
            x = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
            y = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
            ph = (x * dx + y * dy) / period
            tri = np.abs(ph - np.floor(ph) - 0.5) * 4 - 1  # triangle wave in [-1, 1]
            f = f * (1 + np.float32(amp) * tri)
        _put(blk.view(r0, r1, c0, c1), m, self.colour, f)


class Shadow(Op):
    """Marks a shape as shadowed (the shadow is applied once per pixel)."""

    def __init__(self, shape: shapes.Shape) -> None:
        self.layer, self.shape, self.bbox = palette.L_SHADOW, shape, shape.bbox

    def draw(self, blk: Block, r0: int, r1: int, c0: int, c1: int) -> None:
        blk.shadow_view(r0, r1, c0, c1)[...] |= self.shape.mask(r0, r1, c0, c1)


class Roof(Op):
    """A pitched (hip or gable) or flat roof on a rotated rectangle, lit by the sun."""

    def __init__(self, rect: shapes.Rect, colour: np.ndarray, kind: str, sun: np.ndarray, salt: int) -> None:
        self.layer, self.rect, self.colour, self.kind, self.salt = palette.L_ROOF, rect, colour, kind, salt
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

    def draw(self, blk: Block, r0: int, r1: int, c0: int, c1: int) -> None:
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
            f *= 1 + np.float32(0.03) * noise.value_noise(r0, r1, c0, c1, 5.0, self.salt)
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
            f *= 1 + np.float32(0.025) * noise.value_noise(r0, r1, c0, c1, 4.0, self.salt)
        _put(blk.view(r0, r1, c0, c1), m, self.colour, f)


class Pool(Op):
    """A swimming pool: light coping, then water shaded from shallow to deep end."""

    def __init__(
        self,
        water: shapes.Shape,
        coping: shapes.Shape,
        axis: tuple[float, float, float, float],
        colours: tuple[np.ndarray, np.ndarray],
        sun: np.ndarray,
        salt: int,
    ) -> None:
        self.layer, self.water, self.coping, self.axis, self.colours = palette.L_POOL, water, coping, axis, colours
        self.salt = salt
        self.bbox = coping.bbox
        self.wall_shadow = water.shifted(-1.8 * sun[0], -1.8 * sun[1])
        self.wall_lit = water.shifted(1.5 * sun[0], 1.5 * sun[1])

    def draw(self, blk: Block, r0: int, r1: int, c0: int, c1: int) -> None:
        view = blk.view(r0, r1, c0, c1)
        mc = self.coping.mask(r0, r1, c0, c1)
        if mc.any():
            _put(view, mc, palette.COPING, 1 + 0.03 * noise.value_noise(r0, r1, c0, c1, 2.0, self.salt + 1))
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
        ripple = 0.035 * noise.value_noise(r0, r1, c0, c1, 2.5, self.salt) + 0.03 * noise.value_noise(
            r0, r1, c0, c1, 7.0, self.salt + 2
        )
        col = col * (1 + ripple)
        shade = m & ~self.wall_shadow.mask(r0, r1, c0, c1)
        lit = m & ~self.wall_lit.mask(r0, r1, c0, c1)
        col[:, shade] *= np.array([0.72, 0.8, 0.86, 0.8], np.float32)[:, None]
        col[:, lit & ~shade] *= np.float32(1.1)
        _put(view, m, shallow, col)


class Crown(Op):
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
        self.bbox = shapes.bbox_of(self.xy)

    def draw(self, blk: Block, r0: int, r1: int, c0: int, c1: int) -> None:
        m = shapes.poly_mask(self.xy, r0, r1, c0, c1)
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
            0.65 * noise.value_noise(r0, r1, c0, c1, sc, self.salt) + 0.35 * noise.value_noise(r0, r1, c0, c1, 1.6, self.salt + 1)
        )
        f = shade * (1 + tex) * (1 - 0.18 * d2 * d2)
        _put(blk.view(r0, r1, c0, c1), m, self.colour, f)


class Disc(Op):
    """A trampoline-like disc: dark mat inside a coloured ring."""

    def __init__(self, cx: float, cy: float, r: float, ring: np.ndarray) -> None:
        self.layer, self.cx, self.cy, self.r, self.ring = palette.L_GROUND_OBJ, cx, cy, r, ring
        self.bbox = (int(cy - r) - 1, int(cy + r) + 2, int(cx - r) - 1, int(cx + r) + 2)

    def draw(self, blk: Block, r0: int, r1: int, c0: int, c1: int) -> None:
        dx = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - self.cx
        dy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - self.cy
        d = np.sqrt(dx * dx + dy * dy)
        view = blk.view(r0, r1, c0, c1)
        _put(view, d < self.r, self.ring)
        _put(view, d < self.r - 1.6, palette.rgbn(30, 30, 34, 40))


class Ground:
    """The per-pixel background: grass, dry grass and bare soil with mild texture."""

    def __init__(self, seed: int) -> None:
        self.salts = [noise.salt(seed, 100 + k) for k in range(5)]

    def draw(self, blk: Block) -> None:
        r0, r1, c0, c1 = blk.r0, blk.r1, blk.c0, blk.c1
        s = self.salts
        dry = np.clip(0.45 + 1.1 * noise.fbm(r0, r1, c0, c1, 420.0, 2, s[0]), 0, 1)
        soil = np.clip((noise.fbm(r0, r1, c0, c1, 110.0, 3, s[1]) - 0.22) * 3.0, 0, 1) * 0.85
        tex = 1 + 0.06 * noise.value_noise(r0, r1, c0, c1, 16.0, s[2]) + 0.03 * noise.value_noise(r0, r1, c0, c1, 3.0, s[3])
        for k in range(4):
            band = palette.GRASS[k] * (1 - dry) + palette.GRASS_DRY[k] * dry
            band = band * (1 - soil) + palette.SOIL[k] * soil
            blk.canvas[k] = band * tex
