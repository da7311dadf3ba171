"""The sample scene's materials and draw order: colours (red, green, blue, near-infrared) and layers."""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

_T = TypeVar("_T")

# Draw layers, in order. Shadows are collected into one mask and applied once,
# after every layer up to L_SHADOW, so that overlapping shadows do not stack.
L_FIELD, L_LAWN, L_SIDEWALK, L_VERGE, L_ROAD, L_MARK = 0, 1, 2, 3, 4, 5
L_PAVE, L_POOL, L_SHADOW = 6, 7, 8
L_WALL, L_GROUND_OBJ, L_ROOF, L_ROOF_OBJ, L_BUSH, L_CROWN = 9, 10, 11, 12, 13, 14


def pick(rng: np.random.Generator, table: Sequence[tuple[_T, float]]) -> _T:
    """Picks an item of ``((item, weight), ...)`` with probability proportional to its weight."""
    w = np.array([t[1] for t in table], dtype=np.float64)
    return table[int(rng.choice(len(table), p=w / w.sum()))][0]


def rgbn(r: float, g: float, b: float, n: float) -> np.ndarray:
    """A colour as display values 0..255 of the red, green, blue and near-infrared bands."""
    return np.array([r, g, b, n], dtype=np.float32)


# Materials (R, G, B, NIR).
GRASS = rgbn(98, 118, 66, 178)
GRASS_DRY = rgbn(150, 140, 98, 150)
SOIL = rgbn(138, 116, 92, 122)
LAWNS = (
    (rgbn(78, 122, 56, 195), 0.55),  # irrigated lawn
    (rgbn(104, 124, 70, 175), 0.22),  # patchy lawn
    (rgbn(170, 152, 126, 150), 0.15),  # gravel / desert landscaping
    (rgbn(142, 132, 96, 150), 0.08),  # dry lawn
)
ASPHALT = rgbn(84, 85, 89, 72)
ASPHALT_OLD = rgbn(112, 110, 106, 96)
DIRT_ROAD = rgbn(160, 138, 112, 132)
SIDEWALK = rgbn(176, 173, 164, 168)
CONCRETE = rgbn(188, 183, 172, 176)
PAVERS = rgbn(176, 150, 126, 160)
WALL = rgbn(192, 182, 164, 178)
COPING = rgbn(218, 212, 198, 196)
SHADOW_FACTOR = np.array([0.40, 0.44, 0.54, 0.42], dtype=np.float32)
ROOFS = (
    (rgbn(176, 96, 72, 150), 0.22),  # terracotta
    (rgbn(140, 78, 62, 128), 0.10),  # red-brown tiles
    (rgbn(116, 98, 84, 118), 0.14),  # brown shingles
    (rgbn(74, 76, 82, 88), 0.16),  # dark grey
    (rgbn(128, 128, 126, 124), 0.14),  # mid grey
    (rgbn(196, 186, 160, 178), 0.10),  # sand
    (rgbn(206, 206, 200, 196), 0.06),  # white / light metal
    (rgbn(64, 96, 150, 104), 0.05),  # blue roof (pool look-alike)
    (rgbn(74, 108, 88, 100), 0.03),  # green metal roof
)
WATERS = (  # (shallow end, deep end), weights
    ((rgbn(98, 204, 214, 18), rgbn(40, 134, 188, 10)), 0.45),  # cyan
    ((rgbn(112, 212, 204, 20), rgbn(52, 158, 182, 12)), 0.25),  # turquoise
    ((rgbn(78, 156, 214, 16), rgbn(30, 92, 172, 9)), 0.24),  # deep blue
    ((rgbn(100, 170, 142, 30), rgbn(64, 128, 110, 22)), 0.06),  # greenish
)
TREE_GREENS = (
    (rgbn(46, 74, 38, 205), 0.35),
    (rgbn(60, 88, 44, 215), 0.30),
    (rgbn(78, 92, 54, 196), 0.15),  # olive
    (rgbn(38, 62, 50, 180), 0.15),  # blue-green conifer
    (rgbn(92, 86, 48, 185), 0.05),  # yellowing
)
BUSH = rgbn(112, 142, 72, 190)
CARS = (
    (rgbn(214, 214, 212, 180), 0.25),
    (rgbn(36, 36, 40, 40), 0.20),
    (rgbn(160, 162, 166, 140), 0.22),
    (rgbn(150, 40, 40, 90), 0.10),
    (rgbn(38, 72, 160, 70), 0.13),  # blue car (pool look-alike)
    (rgbn(90, 96, 104, 80), 0.10),
)
TARPS = (rgbn(36, 92, 196, 60), rgbn(64, 150, 206, 70), rgbn(44, 110, 170, 64))
CROPS = (
    (rgbn(96, 128, 62, 200), 0.35),  # green crop
    (rgbn(150, 118, 88, 118), 0.25),  # ploughed soil
    (rgbn(188, 168, 112, 156), 0.25),  # stubble
    (rgbn(124, 138, 80, 176), 0.15),  # young crop
)
