"""Merging the detections of several input rasters into one layer.

Both steps are pure functions of GeoDataFrames already in one CRS:

* :func:`merge_tile_seams` joins the pieces of an object cut by the edge between two
  adjacent input tiles. Each raster only sees its own side of the object, so the two
  detections touch at the shared edge without overlapping: their IoU is 0 and no NMS
  can see them as one object.
* :func:`suppress_overlaps` is arcgis's final non-maximum suppression ("Max Overlap
  Ratio"): of two features of a class whose boxes overlap by more than the ratio
  (intersection over union), the less confident one is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from shapely import STRtree
from shapely.geometry.base import BaseGeometry
from torchvision.ops import batched_nms

__all__ = ["MIN_SEAM_OVERLAP", "merge_tile_seams", "suppress_overlaps"]

logger = logging.getLogger(__name__)

# Two pieces are one object when their extents along the seam overlap by at least this
# fraction of the shorter one. A crown cut by a vertical seam gives two pieces with nearly
# the same north-south extent (overlap ~1); two separate objects that only touch corner to
# corner across the seam overlap ~0.
MIN_SEAM_OVERLAP = 0.5


def _seam_direction(seam: BaseGeometry, tolerance: float) -> np.ndarray | None:
    """Unit vector along the longest straight segment of a seam line; None for a corner contact.

    Tiles that meet only at a corner share a seam no longer than the tolerance: an object
    cut there is joined through its pieces in the two edge-adjacent tiles instead.
    """
    coords = [shapely.get_coordinates(part) for part in shapely.get_parts(seam)]
    segments = [c[1:] - c[:-1] for c in coords if len(c) > 1]
    if not segments:
        return None
    steps = np.concatenate(segments)
    lengths = np.hypot(steps[:, 0], steps[:, 1])
    longest = int(np.argmax(lengths))
    if lengths[longest] <= 2 * tolerance or lengths[longest] == 0:
        return None
    return steps[longest] / lengths[longest]


def _interval(geom: BaseGeometry, direction: np.ndarray) -> tuple[float, float]:
    projected = shapely.get_coordinates(geom) @ direction
    return float(projected.min()), float(projected.max())


def _along_seam_overlap(first: BaseGeometry, second: BaseGeometry, direction: np.ndarray) -> float:
    """Overlap of the two geometries' extents along ``direction``, over the shorter extent (0..1)."""
    lo1, hi1 = _interval(first, direction)
    lo2, hi2 = _interval(second, direction)
    shorter = min(hi1 - lo1, hi2 - lo2)
    if shorter <= 0:
        return 0.0
    return max(0.0, min(hi1, hi2) - max(lo1, lo2)) / shorter


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def merge_tile_seams(
    frame: gpd.GeoDataFrame,
    footprints: Sequence[BaseGeometry],
    *,
    tile_column: str = "tile",
    class_column: str = "Class",
    score_column: str = "Confidence",
    tolerance: float = 0.0,
    min_seam_overlap: float = MIN_SEAM_OVERLAP,
    class_agnostic: bool = False,
) -> gpd.GeoDataFrame:
    """Joins the pieces of objects cut by the edges between adjacent input tiles.

    Two features are pieces of one object when all of these hold:

    * they come from different tiles ``a`` and ``b`` (``frame[tile_column]``, an index into
      ``footprints``) whose footprints share an edge (the seam);
    * each lies within ``tolerance`` of its own tile's edge where that edge runs along or
      inside the other tile, i.e. each was cut by the seam;
    * they lie within ``tolerance`` of each other (touch or overlap);
    * they have the same class (unless ``class_agnostic``);
    * their extents along the seam overlap by at least ``min_seam_overlap`` of the shorter.

    Pieces are joined transitively, so an object cut by the corner of four tiles becomes one
    feature. A joined feature is the bounding box of the union of its pieces (detections are
    boxes) and takes the other attributes of its most confident piece, whose score it keeps.

    Args:
        frame: detections of all tiles in one CRS, with the tile, class and score columns.
        footprints: polygon of each tile's extent in the frame's CRS, indexed by the tile column.
        tile_column: column holding the tile index of each feature.
        class_column: column holding the class name.
        score_column: column holding the confidence.
        tolerance: distance in CRS units within which geometries count as touching (half a
            pixel to a pixel absorbs float error in box edges).
        min_seam_overlap: in [0, 1], see above.
        class_agnostic: join pieces whatever their class.

    Returns:
        A new GeoDataFrame, joined features in place of their first piece, the index reset.
        Features not on a seam are returned unchanged.

    Raises:
        ValueError: a negative tolerance, or a tile index outside ``footprints``.

    Examples:
        >>> from shapely.geometry import box
        >>> footprints = [box(0, 0, 10, 10), box(10, 0, 20, 10)]  # two tiles side by side, seam at x = 10
        >>> frame = gpd.GeoDataFrame(
        ...     {"tile": [0, 1, 0], "Class": ["pool", "pool", "tree"], "Confidence": [70.0, 90.0, 80.0]},
        ...     geometry=[box(7, 4, 10, 6), box(10, 4, 12, 6), box(2, 2, 4, 4)],  # a pool cut by the seam, a tree
        ...     crs="EPSG:32633")
        >>> joined = merge_tile_seams(frame, footprints, tolerance=0.5)
        >>> joined[["tile", "Class", "Confidence"]].values.tolist(), joined.geometry.bounds.values.tolist()
        ([[1, 'pool', 90.0], [0, 'tree', 80.0]], [[7.0, 4.0, 12.0, 6.0], [2.0, 2.0, 4.0, 4.0]])
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 CRS units, got {tolerance!r}")
    n = len(frame)
    if n < 2 or len(footprints) < 2:
        return frame.reset_index(drop=True)
    geoms = np.asarray(frame.geometry.array, dtype=object)
    tiles = frame[tile_column].to_numpy()
    if tiles.min() < 0 or tiles.max() >= len(footprints):
        bad = int(tiles.max()) if tiles.max() >= len(footprints) else int(tiles.min())
        raise ValueError(f"{tile_column!r} holds tile {bad} but there are {len(footprints)} footprints; "
                         "pass one footprint per tile, indexed by the tile column.")
    classes = frame[class_column].to_numpy()
    sets = _UnionFind(n)
    footprint_tree = STRtree(list(footprints))
    for a, first in enumerate(footprints):
        for b in sorted(int(i) for i in footprint_tree.query(first, predicate="dwithin", distance=tolerance)):
            if b <= a:
                continue
            second = footprints[b]
            seam_a = first.exterior.intersection(second.buffer(tolerance))  # a's edge where b lies
            seam_b = second.exterior.intersection(first.buffer(tolerance))
            direction = _seam_direction(seam_a, tolerance)
            if direction is None:
                continue
            in_a = np.flatnonzero(tiles == a)
            in_b = np.flatnonzero(tiles == b)
            cut_a = in_a[shapely.dwithin(geoms[in_a], seam_a, tolerance)]
            cut_b = in_b[shapely.dwithin(geoms[in_b], seam_b, tolerance)]
            if len(cut_a) == 0 or len(cut_b) == 0:
                continue
            pairs = STRtree(geoms[cut_b]).query(geoms[cut_a], predicate="dwithin", distance=tolerance)
            for i, j in zip(cut_a[pairs[0]], cut_b[pairs[1]]):
                if not class_agnostic and classes[i] != classes[j]:
                    continue
                if _along_seam_overlap(geoms[i], geoms[j], direction) >= min_seam_overlap:
                    sets.union(int(i), int(j))

    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(sets.find(i), []).append(i)
    if all(len(members) == 1 for members in groups.values()):
        return frame.reset_index(drop=True)
    scores = frame[score_column].to_numpy()
    rows, merged_geoms = [], []
    for members in groups.values():  # dicts keep insertion order: by each group's first piece
        best = max(members, key=lambda i: (scores[i], -i))
        rows.append(best)
        merged_geoms.append(geoms[best] if len(members) == 1
                            else shapely.envelope(shapely.union_all(geoms[members])))
    joined = sum(len(m) for m in groups.values() if len(m) > 1)
    logger.info("joined %d pieces cut by tile seams into %d features",
                joined, sum(1 for m in groups.values() if len(m) > 1))
    result = frame.iloc[rows].reset_index(drop=True)
    return result.set_geometry(gpd.GeoSeries(merged_geoms, crs=frame.crs, name=frame.geometry.name))


def suppress_overlaps(
    frame: gpd.GeoDataFrame,
    max_overlap_ratio: float = 0.0,
    *,
    class_column: str = "Class",
    score_column: str = "Confidence",
    class_agnostic: bool = False,
) -> gpd.GeoDataFrame:
    """Non-maximum suppression over features: arcgis's "Max Overlap Ratio".

    Features are taken best score first; one whose box overlaps an already kept feature of
    the same class (any class with ``class_agnostic``) by an intersection over union above
    ``max_overlap_ratio`` is dropped. With the default 0 (ArcGIS's), no two kept features of a
    class overlap at all; features that merely touch (IoU 0) are both kept. Overlaps are
    measured on each feature's bounding box (the features are boxes in the raster's CRS).

    Args:
        frame: features in one projected or geographic CRS.
        max_overlap_ratio: IoU in [0, 1].
        class_column: the class column (the NMS is per class).
        score_column: the confidence column.
        class_agnostic: one NMS over all classes.

    Returns:
        The kept features, in their original order, the index reset.

    Raises:
        ValueError: ``max_overlap_ratio`` outside [0, 1].

    Examples:
        >>> from shapely.geometry import box
        >>> frame = gpd.GeoDataFrame(
        ...     {"Class": ["pool", "pool", "tree"], "Confidence": [60.0, 90.0, 80.0]},
        ...     geometry=[box(0, 0, 4, 4), box(1, 0, 5, 4), box(4, 0, 8, 4)],  # pools: IoU 0.6; the tree touches
        ...     crs="EPSG:32633")
        >>> suppress_overlaps(frame)[["Class", "Confidence"]].values.tolist()  # ArcGIS's default 0: no overlap
        [['pool', 90.0], ['tree', 80.0]]
        >>> len(suppress_overlaps(frame, max_overlap_ratio=0.7))  # overlapping objects kept up to IoU 0.7
        3
    """
    if not 0 <= max_overlap_ratio <= 1:
        raise ValueError(f"max_overlap_ratio must be in [0, 1] (an intersection over union), "
                         f"got {max_overlap_ratio!r}")
    if len(frame) < 2:
        return frame.reset_index(drop=True)
    bounds = frame.geometry.bounds.to_numpy(dtype=np.float64)
    # Map coordinates such as 4 650 000 m keep centimetres only in float64 and relative to the layer.
    origin = bounds[:, :2].min(axis=0)
    map_boxes = torch.from_numpy(bounds - np.concatenate([origin, origin]))
    scores = torch.tensor(frame[score_column].to_numpy(dtype=np.float64))
    if class_agnostic:
        groups = torch.zeros(len(frame), dtype=torch.int64)
    else:
        groups = torch.from_numpy(pd.factorize(frame[class_column])[0].astype(np.int64))
    keep = batched_nms(map_boxes, scores, groups, float(max_overlap_ratio))
    kept = np.sort(keep.numpy())
    if len(kept) < len(frame):
        logger.info("max_overlap_ratio=%s dropped %d overlapping features", max_overlap_ratio, len(frame) - len(kept))
    return frame.iloc[kept].reset_index(drop=True)
