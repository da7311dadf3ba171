"""geolearn.inference.merge: joining pieces cut by tile seams, and the final NMS (hand-made cases)."""

from __future__ import annotations

import geopandas as gpd
import pytest
from shapely.geometry import box

from geolearn.inference.merge import merge_tile_seams, suppress_overlaps

# Two 10 x 10 tiles side by side, sharing the seam x = 10.
LEFT, RIGHT = box(0, 0, 10, 10), box(10, 0, 20, 10)


def frame(rows, crs="EPSG:32633"):
    """rows: (geometry, class, confidence, tile)."""
    geoms, classes, scores, tiles = zip(*rows) if rows else ((), (), (), ())
    return gpd.GeoDataFrame({"Class": list(classes), "Confidence": list(scores), "tile": list(tiles)},
                            geometry=list(geoms), crs=crs)


def test_an_object_cut_by_the_seam_becomes_one_feature():
    pieces = frame([(box(7, 2, 10, 5), "tree", 80.0, 0), (box(10, 2.2, 12, 5.1), "tree", 90.0, 1),
                    (box(1, 1, 3, 3), "tree", 70.0, 0)])
    merged = merge_tile_seams(pieces, [LEFT, RIGHT])
    assert len(merged) == 2
    # the joined feature is the box of both pieces, in place of the first piece, with the best score
    assert merged.geometry[0].bounds == (7, 2, 12, 5.1)
    assert merged.Confidence[0] == 90.0 and merged.tile[0] == 1
    assert merged.geometry[1].equals(box(1, 1, 3, 3))
    assert merged.crs == pieces.crs


def test_pieces_of_different_classes_stay_apart_unless_class_agnostic():
    pieces = frame([(box(7, 2, 10, 5), "tree", 80.0, 0), (box(10, 2, 12, 5), "pool", 90.0, 1)])
    assert len(merge_tile_seams(pieces, [LEFT, RIGHT])) == 2
    assert len(merge_tile_seams(pieces, [LEFT, RIGHT], class_agnostic=True)) == 1


def test_objects_touching_only_corner_to_corner_across_the_seam_stay_apart():
    # along the seam (y) the extents [2, 5] and [5, 8] overlap by 0 of the shorter 3
    pieces = frame([(box(7, 2, 10, 5), "tree", 80.0, 0), (box(10, 5, 12, 8), "tree", 90.0, 1)])
    assert len(merge_tile_seams(pieces, [LEFT, RIGHT])) == 2
    # [2, 5] and [3.5, 8]: 1.5 / 3 = 0.5 overlap, the default minimum
    pieces = frame([(box(7, 2, 10, 5), "tree", 80.0, 0), (box(10, 3.5, 12, 8), "tree", 90.0, 1)])
    assert len(merge_tile_seams(pieces, [LEFT, RIGHT])) == 1
    assert len(merge_tile_seams(pieces, [LEFT, RIGHT], min_seam_overlap=0.6)) == 2


def test_a_gap_within_the_tolerance_is_bridged():
    pieces = frame([(box(7, 2, 9.7, 5), "tree", 80.0, 0), (box(10, 2, 12, 5), "tree", 90.0, 1)])
    assert len(merge_tile_seams(pieces, [LEFT, RIGHT])) == 2  # 0.3 apart, and not at its tile's edge
    merged = merge_tile_seams(pieces, [LEFT, RIGHT], tolerance=0.5)
    assert len(merged) == 1 and merged.geometry[0].bounds == (7, 2, 12, 5)


def test_neighbours_within_one_tile_and_objects_at_outer_edges_are_left_alone():
    pieces = frame([
        (box(2, 2, 5, 5), "tree", 80.0, 0), (box(5, 2, 8, 5), "tree", 70.0, 0),  # touching, same tile
        (box(0, 6, 2, 9), "tree", 60.0, 0),  # cut by the mosaic's outer edge x = 0
        (box(18, 6, 20, 9), "tree", 60.0, 1),  # and x = 20
    ])
    merged = merge_tile_seams(pieces, [LEFT, RIGHT])
    assert merged.drop(columns="geometry").equals(pieces.drop(columns="geometry"))
    assert all(a.equals(b) for a, b in zip(merged.geometry, pieces.geometry))


def test_pieces_at_a_corner_of_four_tiles_are_joined_through_their_edge_neighbours():
    tiles = [box(0, 10, 10, 20), box(10, 10, 20, 20), box(0, 0, 10, 10), box(10, 0, 20, 10)]
    pieces = frame([(box(8, 10, 10, 13), "pool", 50.0, 0), (box(10, 10, 11, 13), "pool", 60.0, 1),
                    (box(8, 7, 10, 10), "pool", 70.0, 2), (box(10, 7, 11, 10), "pool", 40.0, 3)])
    merged = merge_tile_seams(pieces, tiles)
    assert len(merged) == 1
    assert merged.geometry[0].bounds == (8, 7, 11, 13)
    assert merged.Confidence[0] == 70.0


def test_overlapping_tiles_join_pieces_that_overlap_in_the_shared_strip():
    # tiles overlap on x in [8, 10]; each sees the object up to its own edge
    left, right = box(0, 0, 10, 10), box(8, 0, 18, 10)
    pieces = frame([(box(6, 3, 10, 6), "tree", 80.0, 0), (box(8, 3, 12, 6), "tree", 85.0, 1)])
    merged = merge_tile_seams(pieces, [left, right])
    assert len(merged) == 1 and merged.geometry[0].bounds == (6, 3, 12, 6)


def test_tiles_that_do_not_touch_merge_nothing():
    pieces = frame([(box(7, 2, 10, 5), "tree", 80.0, 0), (box(30, 2, 32, 5), "tree", 90.0, 1)])
    assert len(merge_tile_seams(pieces, [LEFT, box(30, 0, 40, 10)])) == 2


def test_merge_tile_seams_checks_its_arguments():
    pieces = frame([(box(7, 2, 10, 5), "tree", 80.0, 0), (box(10, 2, 12, 5), "tree", 90.0, 5)])
    with pytest.raises(ValueError, match="tile 5 but there are 2 footprints"):
        merge_tile_seams(pieces, [LEFT, RIGHT])
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        merge_tile_seams(pieces, [LEFT, RIGHT], tolerance=-1)
    empty = frame([])
    assert len(merge_tile_seams(empty, [LEFT, RIGHT])) == 0


# ----------------------------------------------------------------------------- final NMS

def test_suppress_overlaps_drops_the_weaker_of_a_pair_above_the_ratio():
    # IoU of [0, 10] x [0, 10] and [5, 15] x [0, 10]: 50 / 150 = 1/3
    pair = frame([(box(0, 0, 10, 10), "tree", 60.0, 0), (box(5, 0, 15, 10), "tree", 90.0, 0)])
    assert suppress_overlaps(pair, 0.4).Confidence.tolist() == [60.0, 90.0]
    assert suppress_overlaps(pair, 0.3).Confidence.tolist() == [90.0]
    assert suppress_overlaps(pair, 0).Confidence.tolist() == [90.0]


def test_suppress_overlaps_keeps_touching_features_and_other_classes():
    touching = frame([(box(0, 0, 10, 10), "tree", 60.0, 0), (box(10, 0, 20, 10), "tree", 90.0, 0)])
    assert len(suppress_overlaps(touching, 0)) == 2
    classes = frame([(box(0, 0, 10, 10), "tree", 60.0, 0), (box(1, 0, 11, 10), "pool", 90.0, 0)])
    assert len(suppress_overlaps(classes, 0)) == 2
    assert suppress_overlaps(classes, 0, class_agnostic=True).Class.tolist() == ["pool"]


def test_suppress_overlaps_is_exact_at_large_map_coordinates():
    # 1 cm overlap at 4 650 000 m: float32 would round it away
    x, y = 500000.0, 4650000.0
    pair = frame([(box(x, y, x + 1, y + 1), "tree", 60.0, 0), (box(x + 0.99, y, x + 2, y + 1), "tree", 90.0, 0)])
    assert suppress_overlaps(pair, 0).Confidence.tolist() == [90.0]
    assert len(suppress_overlaps(pair, 0.01)) == 2


def test_suppress_overlaps_checks_the_ratio():
    with pytest.raises(ValueError, match=r"max_overlap_ratio must be in \[0, 1\]"):
        suppress_overlaps(frame([]), 1.5)
