"""The scene's house lots: lawn, house with garage or wing, driveway, walls, back yard, pool, garden.

:class:`HouseLots` is a part of :class:`~geolearn.sample.planner.Planner` (a mixin): its methods
draw from the planner's random generator and add to its drawing operations, in a fixed order on
which the scene of a seed depends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon

from geolearn.sample import palette, render, shapes

_Box = tuple[float, float, float, float]  # occupied (s0, s1, t0, t1) in a lot's frame


@dataclass
class Lot:
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

    def rect(self, s: float, t: float, hs: float, ht: float, rot: float = 0.0) -> shapes.Rect:
        """A rectangle centred at (s, t) with half-sizes along s and t, rotated by ``rot``."""
        cx, cy = self.pt(s, t)
        d = math.cos(rot) * self.es + math.sin(rot) * self.et
        return shapes.Rect(cx, cy, hs, ht, math.atan2(d[1], d[0]))


@dataclass
class House:
    """A house as planned in its lot's frame (s along the street, t inwards)."""

    hs: float  # centre of the main block along the street
    hw: float  # half width of the main block
    hd: float  # half depth of the main block
    ht: float  # centre of the main block inwards
    setback: float  # distance of the front wall from the street
    back: float  # t of the house's back wall (the wing included)
    parts: list[shapes.Rect]  # the blocks' rectangles, garage or wing first
    main: shapes.Rect  # the main block's rectangle
    roof: np.ndarray  # roof colour
    kind: str  # "hip", "gable" or "flat"
    height: float  # for the shadow
    drive_s: float  # the driveway's position along the street
    drive_end: float  # where the driveway ends inwards


class HouseLots:
    """The lot-level steps of :class:`~geolearn.sample.planner.Planner` (which provides ``rng``,
    ``paint``, ``cast``, ``add``, ``salt``, ``sun``, ``pools``, ``tree_cands``, ``_car`` and ``_bush``)."""

    def _lot(self, lot: Lot) -> None:
        """A house lot: lawn, house with garage or wing, driveway, walls, pool, yard things, shrubs, trees."""
        rng = self.rng
        w, depth = lot.width, lot.depth
        # yards
        lawn = palette.pick(rng, palette.LAWNS) * rng.uniform(0.94, 1.06)
        self.paint(palette.L_LAWN, lot.rect(w / 2, depth / 2, w / 2, depth / 2), lawn, 0.07, rng.uniform(10, 16))
        if rng.random() < 0.05:  # vacant lot
            dirt = palette.SOIL * rng.uniform(1.0, 1.15)
            self.paint(palette.L_LAWN, lot.rect(w / 2, depth / 2, w / 2 - 2, depth / 2 - 2), dirt, 0.06, 6)
            return
        # The steps below draw from self.rng in this order; the scene of a seed depends on it.
        house = self._house(lot)
        self._drive_and_walls(lot, house)
        keep = self._back_yard(lot, house)
        self._roofs(lot, house)
        self._garden(lot, house, keep)

    def _house(self, lot: Lot) -> House:
        """Where the house, its garage or wing and the driveway go, and how its roof looks."""
        rng = self.rng
        w = lot.width
        hw = float(np.clip(w * rng.uniform(0.55, 0.78), 34, 70)) / 2
        hd = rng.uniform(28, 42) / 2
        setback = rng.uniform(13, 22)
        hs = rng.uniform(3 + hw, max(3 + hw, w - 3 - hw))
        ht = setback + hd
        main = lot.rect(hs, ht, hw, hd)
        roof = palette.pick(rng, palette.ROOFS) * rng.uniform(0.92, 1.08)
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
        return House(hs, hw, hd, ht, setback, back, parts, main, roof, kind, height, dw_s, drive_end)

    def _drive_and_walls(self, lot: Lot, h: House) -> None:
        """The driveway and the walls along the back and sides of the lot."""
        rng = self.rng
        w, depth = lot.width, lot.depth
        dw_s, drive_end, ht = h.drive_s, h.drive_end, h.ht
        drive = lot.rect(dw_s, drive_end / 2, 9.0, drive_end / 2 + 0.5)
        self.paint(palette.L_PAVE, drive, palette.CONCRETE * rng.uniform(0.92, 1.04), 0.03, 4)
        wall_t0 = ht
        walls = [lot.rect(w - 1.0, (wall_t0 + depth) / 2, 1.0, (depth - wall_t0) / 2),
                 lot.rect(w / 2, depth - 1.0, w / 2, 1.0)]
        if rng.random() < 0.4:
            walls.append(lot.rect(1.0, (wall_t0 + depth) / 2, 1.0, (depth - wall_t0) / 2))
        for wr in walls:
            self.paint(palette.L_WALL, wr, palette.WALL, 0.03, 3)
            self.cast(wr.ring(), 4.0)

    def _back_yard(self, lot: Lot, h: House) -> list[_Box]:
        """Pool, shed, trampoline and tarp in the back yard; returns the boxes they occupy."""
        rng = self.rng
        w, depth, back = lot.width, lot.depth, h.back
        keep: list[_Box] = []  # occupied (s0, s1, t0, t1) in lot frame
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
                self.add(render.Roof(shed, palette.pick(rng, palette.ROOFS) * 1.05, shed_kind, self.sun, self.salt()))
                keep.append((spot[0] - a, spot[0] + a, spot[1] - b, spot[1] + b))
        if rng.random() < 0.07:
            r = rng.uniform(6, 8)
            spot = self._free_spot(yard, r, r, keep)
            if spot is not None:
                x, y = lot.pt(*spot)
                ang = np.linspace(0, 2 * math.pi, 12, endpoint=False)
                self.cast(np.stack([x + r * np.cos(ang), y + r * np.sin(ang)], axis=1), 3)
                pad_colour = palette.TARPS[int(rng.integers(3))] if rng.random() < 0.6 else palette.rgbn(60, 140, 80, 120)
                self.add(render.Disc(x, y, r, pad_colour))
                keep.append((spot[0] - r, spot[0] + r, spot[1] - r, spot[1] + r))
        if rng.random() < 0.06:
            a, b = rng.uniform(4, 8), rng.uniform(3, 6)
            spot = self._free_spot(yard, a, b, keep)
            if spot is not None:
                self.paint(palette.L_GROUND_OBJ, lot.rect(spot[0], spot[1], a, b, rng.uniform(-0.5, 0.5)),
                           palette.TARPS[int(rng.integers(3))], 0.12, 1.5)
                keep.append((spot[0] - a - 2, spot[0] + a + 2, spot[1] - a - 2, spot[1] + a + 2))
        return keep

    def _roofs(self, lot: Lot, h: House) -> None:
        """The house's shadow and roofs, and solar panels or a tarp on them."""
        rng = self.rng
        hs, hw, hd, ht, parts, main = h.hs, h.hw, h.hd, h.ht, h.parts, h.main
        roof, kind, height = h.roof, h.kind, h.height
        for part in parts:
            self.cast(part.ring(), height)
        for part in parts:
            self.add(render.Roof(part, roof, kind, self.sun, self.salt()))
        if kind != "flat" and rng.random() < 0.12:  # solar panels on the sunnier half
            vx, vy = -main.sa, main.ca  # the roof's across axis
            side = 1.0 if vx * self.sun[0] + vy * self.sun[1] > 0 else -1.0
            off = side * hd * 0.5
            panel = shapes.Rect(main.cx + off * vx, main.cy + off * vy, hw * rng.uniform(0.35, 0.6), hd * 0.28, main.ang)
            self.paint(palette.L_ROOF_OBJ, panel, palette.rgbn(36, 46, 78, 50), stripes=(main.ca, main.sa, 3.2, 0.25))
        elif rng.random() < 0.02:
            tarp = lot.rect(hs + rng.uniform(-hw / 2, hw / 2), ht, rng.uniform(4, 8), rng.uniform(3, 6))
            self.paint(palette.L_ROOF_OBJ, tarp, palette.TARPS[int(rng.integers(3))], 0.1, 1.5)

    def _garden(self, lot: Lot, h: House, keep: list[_Box]) -> None:
        """A car on the driveway, shrubs along the house and the walls, and yard trees."""
        rng = self.rng
        w, depth = lot.width, lot.depth
        hs, hw, hd, ht, setback, back = h.hs, h.hw, h.hd, h.ht, h.setback, h.back
        dw_s, drive_end = h.drive_s, h.drive_end
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
                   keep: list[_Box], edge: bool = False) -> tuple[float, float] | None:
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

    def _pool(self, lot: Lot, yard: tuple[float, float, float, float]) -> _Box | None:
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
        shape_kind = palette.pick(rng, (("rect", 0.55), ("rounded", 0.25), ("kidney", 0.12), ("free", 0.08)))
        frame = lot.rect(s, t, a, b, rot)
        if shape_kind == "rect":
            water: shapes.Shape = frame
            coping_shape: shapes.Shape = shapes.Rect(frame.cx, frame.cy, a + coping, b + coping, frame.ang)
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
            water = shapes.Poly(pxy)
            coping_shape = shapes.Poly(np.asarray(poly.buffer(coping, quad_segs=3).exterior.coords)[:-1])
        keepout = Polygon(coping_shape.ring()).buffer(2.0, quad_segs=2)
        if not self.inside(coping_shape.ring()):
            return None
        if deck:
            deck_b = b + coping + deck * rng.uniform(0.4, 1.0)
            deck_rect = shapes.Rect(frame.cx, frame.cy, a + coping + deck, deck_b, frame.ang)
            self.paint(palette.L_PAVE, deck_rect, palette.CONCRETE if rng.random() < 0.6 else palette.PAVERS, 0.03, 2.5)
        colours = palette.pick(rng, palette.WATERS)
        jit = rng.uniform(0.94, 1.05)
        colours = (colours[0] * jit, colours[1] * jit)
        if rng.random() < 0.5:
            colours = colours[::-1] if rng.random() < 0.3 else colours
        sign = 1 if rng.random() < 0.5 else -1
        axis = (frame.cx, frame.cy, sign * frame.ca * a, sign * frame.sa * a)
        self.add(render.Pool(water, coping_shape, axis, colours, self.sun, self.salt()))
        self.pools.append((water.ring().copy(), keepout))
        return (s - ext_s, s + ext_s, t - ext_t, t + ext_t)
