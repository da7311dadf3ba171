"""inference/: sliding-window detection: window planning, seams, padding, merges, and the real network."""

from __future__ import annotations

import math

import pytest
import torch
from rasterio.windows import Window
from torchvision.ops import box_iou

from geolearn.data.tiling import chip_windows
from geolearn.models.anchors import make_anchors
from geolearn.inference import window_merge
from geolearn.inference.runner import detect_windows, network_runner, predict_tiles
from geolearn.inference.window_merge import ImageDetections, merge_boxes, seam_filter
from geolearn.inference.windows import plan_windows
from geolearn.models.postprocess import Detections
from geolearn.models.retinanet import build_retinanet

INF = math.inf


def ramp_image(height: int, width: int) -> torch.Tensor:
    """``[3, H, W]``: band 0 = x + 1, band 1 = y + 1, band 2 = 1, so a crop tells where it was taken."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    return torch.stack([x + 1, y + 1, torch.ones_like(x)])


class StubDetector:
    """A perfect chip detector for known objects: each window reports the objects that intersect
    it, clipped to the window, in chip pixels. The window's offset is read from the ramp image."""

    def __init__(self, boxes, labels=None, scores=None, image_size=None):
        self.boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = torch.tensor(labels if labels is not None else [1] * n, dtype=torch.int64)
        self.scores = torch.tensor(scores if scores is not None else [0.9] * n, dtype=torch.float32)
        # With the image's (H, W) every crop is checked against the ramp: the right pixels, zero padding.
        self.ramp = ramp_image(*image_size) if image_size is not None else None
        self.windows_seen: list[tuple[float, float]] = []

    def __call__(self, crops: torch.Tensor) -> list[Detections]:
        assert crops.is_contiguous(memory_format=torch.channels_last)
        results = []
        size = crops.shape[-1]
        for crop in crops:
            x0, y0 = crop[0, 0, 0].item() - 1, crop[1, 0, 0].item() - 1
            self.windows_seen.append((x0, y0))
            if self.ramp is not None:
                inside = self.ramp[:, int(y0) : int(y0) + size, int(x0) : int(x0) + size]
                expected = torch.zeros_like(crop)
                expected[:, : inside.shape[1], : inside.shape[2]] = inside
                assert torch.equal(crop, expected)
            window = torch.tensor([x0, y0, x0 + size, y0 + size])
            lo = torch.maximum(self.boxes[:, :2], window[:2])
            hi = torch.minimum(self.boxes[:, 2:], window[2:])
            hit = ((hi - lo) > 0).all(dim=1)
            chip_boxes = torch.cat([lo, hi], dim=1)[hit] - window[:2].repeat(2)
            results.append(Detections(chip_boxes, self.labels[hit], self.scores[hit]))
        return results


def as_sorted_rows(boxes: torch.Tensor) -> list[list[float]]:
    return sorted(boxes.tolist())


def test_plan_windows_hand_computed_h700_chip256_overlap64():
    plan = plan_windows(700, 300, 256, 64)
    # stride 192: rows 0, 192, 384 and 700 - 256 = 444 flush with the bottom; columns 0, 300 - 256 = 44.
    rows, cols = [0, 192, 384, 444], [0, 44]
    expected = [[c, r, c + 256, r + 256] for r in rows for c in cols]
    assert plan.windows.tolist() == expected
    assert plan.image_size == (700, 300) and plan.chip_size == 256
    # Same windows, same order as the export's chip_windows.
    assert [Window(x0, y0, 256, 256) for x0, y0, _, _ in plan.windows.int().tolist()] == chip_windows(
        300, 700, (256, 256), (192, 192)
    )
    # Neighbours' far edges: (left's x2, upper's y2, right's x1, lower's y1), ±inf on the border.
    upper = [-INF, 256, 448, 640]
    lower = [192, 384, 444, INF]
    left, right = [-INF, 256], [44, INF]
    expected_edges = [[left[c], upper[r], right[c], lower[r]] for r in range(4) for c in range(2)]
    assert plan.neighbour_edges.tolist() == expected_edges


def test_plan_windows_image_smaller_than_chip_is_one_window_with_border_sides():
    plan = plan_windows(100, 150, 256, 64)
    assert plan.windows.tolist() == [[0, 0, 256, 256]]
    assert plan.neighbour_edges.tolist() == [[-INF, -INF, INF, INF]]


@pytest.mark.parametrize("overlap", [-1, 256, 300])
def test_plan_windows_refuses_overlap_outside_chip(overlap):
    with pytest.raises(ValueError, match=rf"overlap={overlap}: .*\[0, chip_size=256\)"):
        plan_windows(700, 700, 256, overlap)


# An image three chips wide (768 px, chip 256, overlap 64): windows at 0, 192, 384, 512 on both axes.
SEAM_OBJECTS = [
    [230.0, 100.5, 280.0, 140.0],  # straddles the vertical seams x = 192..256 (windows 0 and 1)
    [236.0, 236.0, 276.25, 276.0],  # straddles the corner where windows (0,0), (1,0), (0,1), (1,1) meet
    [620.0, 400.0, 660.0, 420.0],  # straddles x = 640, the right edge of the window at 384
    [740.0, 700.0, 768.0, 768.0],  # in the bottom-right corner of the image, on its border
    [0.0, 300.0, 30.0, 330.0],  # on the left border
    [400.0, 500.0, 430.0, 530.0],  # inside one window only, away from the seams (x 384..448 is shared)
]


def test_objects_on_seams_corners_and_border_are_reported_once_and_whole():
    stub = StubDetector(SEAM_OBJECTS, labels=[1, 2, 1, 2, 1, 1], image_size=(768, 768))
    found = detect_windows(stub, ramp_image(768, 768), 256, batch_size=5)
    assert isinstance(found, ImageDetections)
    assert len(stub.windows_seen) == 16  # 4 × 4 windows, every one run once
    assert as_sorted_rows(found.image_boxes) == as_sorted_rows(torch.tensor(SEAM_OBJECTS))
    by_box = {tuple(b): label for b, label in zip(found.image_boxes.tolist(), found.labels.tolist())}
    assert [by_box[tuple(b)] for b in SEAM_OBJECTS] == [1, 2, 1, 2, 1, 1]
    assert found.scores.tolist() == pytest.approx([0.9] * 6)
    assert found.image_boxes.dtype == torch.float32 and found.labels.dtype == torch.int64


def test_without_the_seam_filter_a_cut_piece_can_win():
    # The corner object's pieces overlap the whole box with IoU > 0.1, so NMS keeps one box per
    # object — but which one is a tie at equal scores; with the cut pieces scored higher it is a piece.
    corner = [236.0, 236.0, 276.0, 276.0]
    stub = StubDetector([corner], scores=[0.9])
    original_call = stub.__call__

    def pieces_score_higher(crops):
        results = original_call(crops)
        size = crops.shape[-1]
        return [
            Detections(d.chip_boxes, d.labels, d.scores + 0.05 * ((d.chip_boxes <= 0) | (d.chip_boxes >= size)).any(dim=1))
            for d in results
        ]

    loose = detect_windows(pieces_score_higher, ramp_image(768, 768), 256, edge_tolerance=None)
    assert len(loose.image_boxes) == 1 and loose.image_boxes[0].tolist() != corner
    strict = detect_windows(pieces_score_higher, ramp_image(768, 768), 256)
    assert strict.image_boxes.tolist() == [corner]


def test_image_smaller_than_chip_is_padded_and_no_box_leaves_it():
    objects = [
        [120.0, 80.0, 150.0, 100.0],  # touching the image's right and bottom borders
        [140.0, 90.0, 200.0, 130.0],  # what a detector might report reaching into the padding
        [200.0, 200.0, 240.0, 240.0],  # entirely in the padding
        [10.0, 10.0, 30.0, 40.0],
    ]
    stub = StubDetector(objects, scores=[0.9, 0.8, 0.7, 0.6], image_size=(100, 150))
    found = detect_windows(stub, ramp_image(100, 150), 256, nms_overlap=0.5)
    assert stub.windows_seen == [(0.0, 0.0)]
    assert found.image_boxes.tolist() == [[120.0, 80.0, 150.0, 100.0], [140.0, 90.0, 150.0, 100.0], [10.0, 10.0, 30.0, 40.0]]
    assert (found.image_boxes[:, 0::2] <= 150).all() and (found.image_boxes[:, 1::2] <= 100).all()


def test_empty_image_gives_no_detections():
    found = detect_windows(StubDetector([]), ramp_image(300, 500), 128)
    assert found.image_boxes.shape == (0, 4) and found.labels.shape == (0,) and found.scores.shape == (0,)


def test_non_square_image():
    # 300 × 520, chip 128, overlap 32: rows 0, 96, 172; columns 0, 96, 192, 288, 384, 392.
    objects = [
        [80.0, 20.0, 110.0, 50.0],  # across the seam at x = 96..128
        [300.0, 110.0, 330.0, 135.0],  # across the horizontal seam at y = 96..128 and x = 288..320
        [385.0, 180.0, 400.0, 230.0],  # in the region shared by the columns at 384 and the flush 392
        [500.0, 280.0, 520.0, 300.0],  # bottom-right corner
    ]
    stub = StubDetector(objects, image_size=(300, 520))
    found = detect_windows(stub, ramp_image(300, 520), 128, batch_size=4)
    assert len(stub.windows_seen) == 3 * 6
    assert as_sorted_rows(found.image_boxes) == as_sorted_rows(torch.tensor(objects))


def test_class_aware_merge_keeps_overlapping_objects_of_different_classes():
    objects = [[50.0, 50.0, 100.0, 100.0], [60.0, 60.0, 110.0, 110.0]]  # IoU 0.47 > nms_overlap 0.1
    stub = StubDetector(objects, labels=[1, 2], scores=[0.8, 0.9])
    aware = detect_windows(stub, ramp_image(200, 200), 128)
    assert aware.image_boxes.tolist() == [objects[1], objects[0]] and aware.labels.tolist() == [2, 1]
    agnostic = detect_windows(stub, ramp_image(200, 200), 128, class_agnostic=True)
    assert agnostic.image_boxes.tolist() == [objects[1]] and agnostic.labels.tolist() == [2]


def test_greedy_merge_joins_the_pieces_of_an_object_larger_than_the_overlap():
    # Chip 64, overlap 16: columns 0, 48, 96, 128. A 130 px object is cut by every window; the
    # seam filter keeps the pieces [20, 64], [48, 112], [96, 150] (the one at 128 is seen by 96).
    big = [20.0, 10.0, 150.0, 40.0]
    stub = StubDetector([big])
    greedy = detect_windows(stub, ramp_image(192, 192), 64, overlap=16, merge="greedy")
    assert greedy.image_boxes.tolist() == [big]
    assert greedy.scores.tolist() == pytest.approx([0.9])
    # NMS cannot join: the best piece suppresses the pieces it overlaps, and a piece that does not
    # overlap it ([20, 64] and [96, 150] share nothing) is reported too.
    nms = detect_windows(stub, ramp_image(192, 192), 64, overlap=16, merge="nms")
    pieces = [[20.0, 10.0, 64.0, 40.0], [48.0, 10.0, 112.0, 40.0], [96.0, 10.0, 150.0, 40.0]]
    assert 1 <= len(nms.image_boxes) <= 2 and all(box in pieces for box in nms.image_boxes.tolist())


def test_greedy_merge_uses_intersection_over_smaller_hand_computed():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 25.0, 10.0], [40.0, 0.0, 44.0, 4.0]])
    labels = torch.tensor([1, 1, 1])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoS of the first two = 50 / 100 = 0.5 (IoU only 50 / 250 = 0.2).
    merged = merge_boxes(boxes, labels, scores, method="greedy", overlap=0.4)
    assert merged.image_boxes.tolist() == [[0.0, 0.0, 25.0, 10.0], [40.0, 0.0, 44.0, 4.0]]
    assert merged.scores.tolist() == pytest.approx([0.9, 0.7])
    apart = merge_boxes(boxes, labels, scores, method="greedy", overlap=0.6)
    assert apart.image_boxes.tolist() == boxes.tolist()
    other_class = merge_boxes(boxes, torch.tensor([1, 2, 1]), scores, method="greedy", overlap=0.4)
    assert len(other_class.image_boxes) == 3
    with pytest.raises(ValueError, match="merge='soft'"):
        merge_boxes(boxes, labels, scores, method="soft")


def test_greedy_merge_repeats_only_for_pieces_at_seams():
    # A chain A–B–C where only neighbours overlap (IoS 0.2 each; A and C share nothing).
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [8.0, 0.0, 18.0, 10.0], [16.0, 0.0, 26.0, 10.0]])
    labels = torch.ones(3, dtype=torch.int64)
    scores = torch.tensor([0.9, 0.8, 0.7])
    # One pass (SAHI's): A absorbs B; C matched only B, which is taken.
    once = merge_boxes(boxes, labels, scores, method="greedy", overlap=0.1)
    assert once.image_boxes.tolist() == [[0.0, 0.0, 18.0, 10.0], [16.0, 0.0, 26.0, 10.0]]
    # Whole objects (not at a seam) never join again: no snowball through touching objects.
    whole = merge_boxes(boxes, labels, scores, method="greedy", overlap=0.1, at_seam=torch.zeros(3, dtype=torch.bool))
    assert whole.image_boxes.tolist() == once.image_boxes.tolist()
    # Pieces cut at seams keep joining until the chain is one box.
    pieces = merge_boxes(boxes, labels, scores, method="greedy", overlap=0.1, at_seam=torch.ones(3, dtype=torch.bool))
    assert pieces.image_boxes.tolist() == [[0.0, 0.0, 26.0, 10.0]] and pieces.scores.tolist() == pytest.approx([0.9])


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_intersecting_pairs_match_brute_force(monkeypatch, chunk):
    monkeypatch.setattr(window_merge, "_PAIR_CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(300, 2, generator=generator) * 500
    boxes = torch.cat([corner, corner + 1 + torch.rand(300, 2, generator=generator) * 60], dim=1)
    boxes[:5] = boxes[5]  # identical boxes and equal x1 values
    groups = torch.randint(1, 4, (300,), generator=generator)
    i, j = window_merge._intersecting_pairs(boxes, groups)
    found = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
    assert len(found) == len(i)  # each pair once
    inter = (torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:]) - torch.maximum(boxes[:, None, :2], boxes[None, :, :2]))
    brute = ((inter > 0).all(dim=2) & (groups[:, None] == groups[None, :])).triu(diagonal=1)
    assert found == {tuple(pair) for pair in brute.nonzero().tolist()}


def test_seam_filter_keeps_border_boxes_and_drops_pieces_a_neighbour_sees():
    plan = plan_windows(768, 768, 256, 64)
    # Window 1 spans x 192..448 in the top row; its left neighbour ends at x = 256.
    boxes = torch.tensor([
        [192.0, 10.0, 240.0, 30.0],  # cut at x = 192, ends inside the shared strip → window 0 sees it whole
        [192.0, 10.0, 300.0, 30.0],  # cut at x = 192 but ends beyond the strip → kept
        [0.0, 10.0, 20.0, 30.0],  # window 0, on the image's left border → kept
    ])
    keep, at_seam = seam_filter(boxes, torch.tensor([1, 1, 0]), plan)
    assert keep.tolist() == [False, True, True]
    assert at_seam.tolist() == [True, True, False]


def test_detect_windows_refuses_bad_input():
    with pytest.raises(ValueError, match=r"\[bands, height, width\]"):
        detect_windows(StubDetector([]), torch.zeros(1, 3, 64, 64), 64)
    with pytest.raises(ValueError, match="batch_size=0"):
        detect_windows(StubDetector([]), torch.zeros(3, 64, 64), 64, batch_size=0)
    with pytest.raises(ValueError, match="one per crop"):
        detect_windows(lambda crops: [], torch.zeros(3, 64, 64), 64)


@pytest.fixture
def one_thread():
    """Runs the test on one intra-op thread: correctness does not depend on it, and on a small
    shared machine an OpenMP team contending with another process runs many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def random_retinanet():
    torch.manual_seed(0)
    # FPN and heads 64 wide instead of 256: the same network layout at a sixth of the cost, so the
    # test stays fast on a shared CPU.
    model = build_retinanet("resnet18", n_classes=2, pretrained=False, chs=64)
    # The heads start with zero final weights (every anchor gives the prior): give them small
    # random weights and an even prior so that scores and boxes vary and some pass 0.5.
    for head in (model.classifier, model.box_regressor):
        torch.nn.init.normal_(head[-1].weight, std=0.02)
        torch.nn.init.zeros_(head[-1].bias)
    return model


def test_real_network_on_a_non_square_image(random_retinanet, one_thread):
    model = random_retinanet.train()
    image = torch.randn(3, 300, 520, generator=torch.Generator().manual_seed(1))
    anchors = make_anchors(256)
    batched = predict_tiles(model, image, anchors, 256, batch_size=8)
    assert model.training  # mode restored
    boxes = batched.image_boxes
    assert len(boxes) > 0
    assert boxes.dtype == torch.float32
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 520).all() and (boxes[:, 3] <= 300).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert set(batched.labels.tolist()) <= {1, 2}
    assert (batched.scores >= 0.5).all() and (batched.scores[:-1] >= batched.scores[1:]).all()

    one_by_one = predict_tiles(model, image, anchors, 256, batch_size=1)
    assert len(one_by_one.image_boxes) == len(boxes)
    torch.testing.assert_close(one_by_one.image_boxes, boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(one_by_one.scores, batched.scores, atol=1e-5, rtol=0)
    assert one_by_one.labels.tolist() == batched.labels.tolist()


def test_real_network_refuses_wrong_anchors_and_integer_images(random_retinanet, one_thread):
    with pytest.raises(ValueError, match=r"make_anchors\(64"):
        predict_tiles(random_retinanet, torch.zeros(3, 64, 64), make_anchors(32), 64)
    with pytest.raises(ValueError, match="torch.uint8"):
        predict_tiles(random_retinanet, torch.zeros(3, 256, 256, dtype=torch.uint8), make_anchors(256), 256)


def test_bf16_runner_matches_plain_autocast():
    """The CPU bf16 runner (batch norms folded, convolution weights cast once: geolearn.models.folding)
    finds what autocast over the model finds, within bfloat16 rounding."""
    from geolearn.models.postprocess import detect

    torch.manual_seed(0)
    model = build_retinanet("resnet18", n_classes=2, pretrained=False).eval()
    for head in (model.classifier, model.box_regressor):
        torch.nn.init.normal_(head[-1].weight, std=0.05)  # heads that fire on random input
    anchors, crops = make_anchors(64), torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        # No suppression (overlap 1): which of two overlapping boxes of a random network wins
        # could turn on a rounding.
        found = network_runner(model, anchors, 64, score_thresh=0.3, nms_overlap=1.0,
                               autocast_dtype=torch.bfloat16)(crops)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = detect(model(crops), anchors, 64, score_thresh=0.3, nms_overlap=1.0)
    assert sum(len(d.scores) for d in expected) > 0
    # bfloat16 rounding moves scores by up to ~0.02: a box that near the threshold may come or go;
    # every other box is in both, at IoU > 0.9 and with a score within 0.02.
    for got, want in zip(found, expected):
        for these, those in ((got, want), (want, got)):
            clear = these.scores > 0.3 + 0.02
            iou = box_iou(these.chip_boxes[clear], those.chip_boxes)
            assert (iou.max(dim=1).values > 0.9).all()
            nearest = those.scores[iou.argmax(dim=1)]
            torch.testing.assert_close(nearest, these.scores[clear], rtol=0, atol=2e-2)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself is untouched


def test_test_time_augmentation_finds_the_same_in_a_mirrored_crop(random_retinanet, one_thread):
    """The 8 views of a crop and of its mirror image are the same 8 images: the fused detections of
    the mirror, mirrored back, are the crop's own."""
    from geolearn.models.tta import orient, unorient_boxes

    model, anchors = random_retinanet.eval(), make_anchors(64)
    crop = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    run_batch = network_runner(model, anchors, 64, score_thresh=0.3, test_time_augmentation=True)
    with torch.inference_mode():
        (found,) = run_batch(crop)
        (mirrored,) = run_batch(orient(crop, 4))
    assert len(found.scores) > 0
    assert mirrored.labels.tolist() == found.labels.tolist()
    torch.testing.assert_close(mirrored.scores, found.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(unorient_boxes(mirrored.chip_boxes, 4, 64), found.chip_boxes, atol=1e-3, rtol=0)
    assert (found.scores > 0.3).all() and (found.scores[:-1] >= found.scores[1:]).all()


def test_test_time_augmentation_with_one_view_is_the_plain_network(random_retinanet, one_thread):
    from geolearn.models.tta import augmented_runner

    model, anchors = random_retinanet.eval(), make_anchors(64)
    crops = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    plain = network_runner(model, anchors, 64, score_thresh=0.3)
    with torch.inference_mode():
        expected, got = plain(crops), augmented_runner(plain, 0.3, views=1)(crops)
    assert sum(len(d.scores) for d in expected) > 0
    for want, have in zip(expected, got):
        torch.testing.assert_close(have.chip_boxes, want.chip_boxes)
        torch.testing.assert_close(have.scores, want.scores)
        assert have.labels.tolist() == want.labels.tolist()
