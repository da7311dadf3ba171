"""The scene's layout: streets, blocks of house lots (geolearn/sample/lots.py), parks, fields and trees, planned as drawing operations and labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon

from geolearn.sample import palette, render, shapes
from geolearn.sample.lots import HouseLots, Lot

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


class Planner(HouseLots):
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
        self.ops: list[render.Op] = []
        self.pools: list[tuple[np.ndarray, Polygon]] = []  # (label ring, keep-out polygon)
        self.trees: list[render.Crown] = []
        self.tree_cands: list[tuple[float, float, float]] = []  # (col, row, radius)
        self.footprint = self._footprint(nodata_margin)
        self.inner = shapely.buffer(self.footprint, -2.0)
        shapely.prepare(self.inner)

    # -- helpers
    def salt(self) -> int:
        return int(self.rng.integers(0, 2**32))

    def add(self, op: render.Op) -> None:
        b = op.bbox
        if b[1] > 0 and b[0] < self.size and b[3] > 0 and b[2] < self.size:
            self.ops.append(op)

    def paint(self, layer: int, shape: shapes.Shape, colour: np.ndarray, tex: float = 0.0, tex_scale: float = 4.0,
              stripes: tuple[float, float, float, float] | None = None) -> None:
        self.add(render.Paint(layer, shape, colour, tex=tex, tex_scale=tex_scale, salt=self.salt(), stripes=stripes))

    def cast(self, ring: np.ndarray, height: float) -> None:
        """Adds the shadow of an object of the given footprint ring and height (px)."""
        off = -self.sun * height * self.shadow_len
        self.add(render.Shadow(shapes.hull(ring, ring + off)))

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
            self.paint(palette.L_SIDEWALK, shapes.Rect(c[0], c[1], length / 2 + self.cw, self.cw, ang), palette.SIDEWALK, 0.03, 3.0)
            self.paint(palette.L_VERGE, shapes.Rect(c[0], c[1], length / 2 + self.cw, self.cw - 5.0, ang), palette.GRASS * 0.95, 0.06, 5.0)
            self.paint(palette.L_ROAD, shapes.Rect(c[0], c[1], length / 2 + hw, hw, ang), palette.ASPHALT, 0.05, 9.0)
            if arterial:
                e = d / length
                n_dash = int(length // 26)
                for k in range(1, n_dash):
                    q = p0 + e * (k * 26.0)
                    self.paint(palette.L_MARK, shapes.Rect(q[0], q[1], 6.0, 0.75, ang), palette.rgbn(222, 206, 140, 190))
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
            colour = palette.ASPHALT_OLD if rng.random() < 0.6 else palette.DIRT_ROAD
            self.paint(palette.L_ROAD, shapes.Rect(c[0], c[1], length / 2 + hw, hw, ang), colour, 0.05, 9.0)
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
        colour = palette.pick(rng, palette.CARS)
        length, width = rng.uniform(7.0, 8.2), rng.uniform(2.9, 3.3)
        body = shapes.Rect(cx, cy, length, width, ang)
        self.cast(body.ring(), 4.5)
        self.paint(palette.L_GROUND_OBJ, body, colour)
        ca, sa = math.cos(ang), math.sin(ang)
        glass = palette.rgbn(40, 44, 52, 40)
        self.paint(palette.L_GROUND_OBJ, shapes.Rect(cx + ca * length * 0.35, cy + sa * length * 0.35, 1.3, width * 0.8, ang), glass)
        self.paint(palette.L_GROUND_OBJ, shapes.Rect(cx - ca * length * 0.5, cy - sa * length * 0.5, 0.9, width * 0.75, ang), glass)

    def _crown(self, cx: float, cy: float, r: float, bush: bool = False) -> render.Crown:
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
            colour = palette.BUSH * rng.uniform(0.9, 1.08)
            return render.Crown(palette.L_BUSH, cx, cy, theta, radii, colour, self.sun, self.sun_el, self.salt(), 0.12)
        colour = palette.pick(rng, palette.TREE_GREENS) * rng.uniform(0.88, 1.1)
        colour = colour.astype(np.float32)
        colour[3] = colour[3] * rng.uniform(0.95, 1.05)
        return render.Crown(palette.L_CROWN, cx, cy, theta, radii, colour, self.sun, self.sun_el, self.salt(), 0.3)

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
                lot = Lot(float(o[0]), float(o[1]), eu, et, float(w), float(lot_depth))
                s0 += w
                c = np.array(lot.pt(w / 2, lot_depth / 2))
                if (c < -150).any() or (c > self.size + 150).any():
                    continue
                self._lot(lot)
        # groups of trees where the back yards meet
        for _ in range(int(rng.poisson(length / 500))):
            q = to_px(rng.uniform(u0 + 20, u1 - 20), (v0 + v1) / 2 + rng.normal(0, 6))
            self._cluster(q[0], q[1], int(rng.integers(3, 8)), 6, 13)

    def _park(self, u0: float, u1: float, v0: float, v1: float) -> None:
        """A lawn with a footpath, maybe a sports court, and groups of trees."""
        rng = self.rng
        to_px, alpha, eu, ev = self.grid.px, self.grid.angle, self.grid.eu, self.grid.ev
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        c = to_px(cu, cv)
        self.paint(palette.L_LAWN, shapes.Rect(c[0], c[1], (u1 - u0) / 2, (v1 - v0) / 2, alpha), palette.LAWNS[0][0] * 1.03, 0.08, 12)
        # a footpath across the park
        p = to_px(rng.uniform(u0, u1), v0)
        q = to_px(rng.uniform(u0, u1), v1)
        d = q - p
        self.paint(palette.L_PAVE, shapes.Rect(*(p + q) / 2, np.linalg.norm(d) / 2, 3.5, math.atan2(d[1], d[0])), palette.CONCRETE, 0.03, 4)
        # a sports court (a big pool look-alike)
        if rng.random() < 0.7:
            cs = rng.uniform(u0 + 80, u1 - 80)
            ct = rng.uniform(v0 + 45, v1 - 45)
            cc = to_px(cs, ct)
            outer = palette.rgbn(70, 120, 90, 110) if rng.random() < 0.5 else palette.rgbn(150, 80, 70, 110)
            self.paint(palette.L_PAVE, shapes.Rect(cc[0], cc[1], 62, 32, alpha), outer)
            inner = palette.rgbn(50, 100, 170, 80) if rng.random() < 0.6 else palette.rgbn(60, 130, 90, 110)
            self.paint(palette.L_PAVE, shapes.Rect(cc[0], cc[1], 40, 18, alpha), inner)
            white = palette.rgbn(235, 235, 230, 210)
            lines = ((0, -18, 40, 0.6), (0, 18, 40, 0.6), (-40, 0, 0.6, 18), (40, 0, 0.6, 18), (0, 0, 0.8, 19),
                     (-21, 0, 0.5, 14), (21, 0, 0.5, 14), (0, -14, 40, 0.5), (0, 14, 40, 0.5))
            for du, dv, a, b in lines:  # tennis-court markings
                q2 = cc + du * eu + dv * ev
                self.paint(palette.L_PAVE, shapes.Rect(q2[0], q2[1], a, b, alpha), white)
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
            crop = palette.pick(rng, palette.CROPS) * rng.uniform(0.92, 1.08)
            d = eu if rng.random() < 0.5 else ev
            period = rng.uniform(5, 9)
            self.paint(palette.L_FIELD, shapes.Rect(c[0], c[1], (b - a) / 2 - 3, (v1 - v0) / 2 - 3, alpha), crop, 0.06, 14,
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
