"""Each augmentation moves a known box to where the object went.

The truth is the image itself: a bright rectangle is drawn on a dark chip, the
transform is applied to image and box together, and the box must match the
extent of the bright pixels afterwards.
"""

from __future__ import annotations

import pytest
import torch
from fastai.vision.all import Brightness, Contrast, Dihedral, TensorBBox, TensorImage, TensorMultiCategory, Zoom

from geolearn.data.boxes import pixel_to_unit, unit_to_pixel
from geolearn.data.transforms import (
    ChannelGains,
    ClipBoxes,
    MIN_VISIBLE_FRACTION,
    crop,
    default_batch_transforms,
    pad_to,
    resize,
)

SIZE = 64
OBJECT = (10.0, 6.0, 30.0, 16.0)  # xyxy pixels: an off-centre, non-square object


def batch_with_object(box=OBJECT, n=1):
    image = torch.zeros(n, 3, SIZE, SIZE)
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    image[:, :, ymin:ymax, xmin:xmax] = 1.0
    unit = pixel_to_unit(torch.tensor([box]), SIZE, SIZE)
    return (
        TensorImage(image),
        TensorBBox(unit.expand(n, 1, 4).clone(), img_size=(SIZE, SIZE)),
        TensorMultiCategory(torch.ones(n, 1, dtype=torch.long)),
    )


def object_extent(image: torch.Tensor) -> list[float]:
    """xyxy pixel-edge extent of the pixels brighter than half."""
    ys, xs = torch.where(image[0] > 0.5)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def apply(tfm, batch):
    image, boxes, labels = tfm(batch, split_idx=0)
    return image.as_subclass(torch.Tensor), boxes.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor)


@pytest.mark.parametrize("k", range(8))
def test_dihedral_moves_the_box_with_the_object(k):
    image, boxes, _ = apply(Dihedral(p=1.0, draw=k), batch_with_object())
    assert unit_to_pixel(boxes[0, 0], SIZE, SIZE).tolist() == pytest.approx(object_extent(image[0]), abs=1e-4)


def test_dihedral_draws_are_all_different_placements():
    placements = {tuple(object_extent(apply(Dihedral(p=1.0, draw=k), batch_with_object())[0][0])) for k in range(8)}
    assert len(placements) == 8


@pytest.mark.parametrize("scale", [0.8, 1.25])
def test_zoom_moves_the_box_with_the_object(scale):
    zoom = Zoom(min_zoom=scale, max_zoom=scale, p=1.0, draw_x=0.5, draw_y=0.5, pad_mode="zeros")
    image, boxes, _ = apply(zoom, batch_with_object((20.0, 24.0, 40.0, 36.0)))
    # Bilinear resampling blurs the object's edge by up to a pixel.
    assert unit_to_pixel(boxes[0, 0], SIZE, SIZE).tolist() == pytest.approx(object_extent(image[0]), abs=1.0)


@pytest.mark.parametrize("tfm", [Brightness(max_lighting=0.4, p=1.0), Contrast(max_lighting=0.4, p=1.0)])
def test_lighting_leaves_boxes_alone(tfm):
    batch = batch_with_object()
    _, boxes, _ = apply(tfm, batch)
    assert torch.equal(boxes, batch[1].as_subclass(torch.Tensor))


def test_clip_boxes_clips_and_blanks_lost_objects():
    boxes = TensorBBox(torch.tensor([[[-1.5, -0.5, 0.5, 0.5], [1.2, 0.0, 1.6, 0.4], [-0.2, -0.2, 0.2, 0.2]]]))
    labels = TensorMultiCategory(torch.tensor([[1, 2, 1]]))
    image = TensorImage(torch.zeros(1, 3, 4, 4))
    _, out_boxes, out_labels = apply(ClipBoxes(), (image, boxes, labels))
    expected = torch.tensor([[-1.0, -0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [-0.2, -0.2, 0.2, 0.2]])
    assert torch.equal(out_boxes[0], expected)
    assert out_labels[0].tolist() == [1, 0, 1]


def test_default_pipeline_keeps_boxes_on_objects():
    torch.manual_seed(0)
    batch = batch_with_object((20.0, 24.0, 40.0, 36.0), n=16)
    for tfm in default_batch_transforms():
        batch = tfm(batch, split_idx=0)
    images, boxes, labels = (t.as_subclass(torch.Tensor) for t in batch)
    for image, box, label in zip(images, boxes, labels):
        assert label.item() == 1
        assert unit_to_pixel(box[0], SIZE, SIZE).tolist() == pytest.approx(object_extent(image), abs=1.0)


@pytest.mark.parametrize("colour, name", [({"saturation": 0.5}, "Saturation"), ({"hue": 0.3}, "Hue")])
def test_default_pipeline_with_saturation_or_hue_keeps_boxes_and_greys_stay_grey(colour, name):
    torch.manual_seed(0)
    batch = batch_with_object((20.0, 24.0, 40.0, 36.0), n=16)
    transforms = default_batch_transforms(**colour)
    assert name in [type(t).__name__ for t in transforms]
    for tfm in transforms:
        batch = tfm(batch, split_idx=0)
    images, boxes, _ = (t.as_subclass(torch.Tensor) for t in batch)
    for image, box in zip(images, boxes):
        assert unit_to_pixel(box[0], SIZE, SIZE).tolist() == pytest.approx(object_extent(image), abs=1.0)
        # saturation mixes each pixel with its own grey, hue turns colours around the grey axis: a grey object stays grey
        assert torch.allclose(image[0], image[1], atol=1e-4) and torch.allclose(image[1], image[2], atol=1e-4)


@pytest.mark.parametrize("bad", [{"zoom": -0.1}, {"lighting": 1.0}, {"saturation": -0.2}, {"gain": -0.1}, {"hue": 1.0}])
def test_augmentation_strengths_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match=r"zoom and gain must be >= 0 and lighting, saturation and hue in \[0, 1\)"):
        default_batch_transforms(**bad)


def test_channel_gains_scale_each_band_of_each_training_image_by_one_factor_within_bounds():
    torch.manual_seed(0)
    ramp = torch.linspace(0.05, 0.6, 36).reshape(1, 1, 6, 6)
    images = TensorImage(ramp.repeat(64, 4, 1, 1))  # 64 images of 4 bands; 0.6 * 1.3 < 1: nothing clipped
    boxes = TensorBBox(torch.tensor([[[-0.5, -0.5, 0.5, 0.5]]]).repeat(64, 1, 1))
    transforms = default_batch_transforms(n_bands=4, gain=0.3)
    gains_tfm = next(t for t in transforms if isinstance(t, ChannelGains))
    out, out_boxes = gains_tfm((images, boxes), split_idx=0)
    ratio = out.as_subclass(torch.Tensor) / images.as_subclass(torch.Tensor)
    per_band = ratio[..., :1, :1]
    assert torch.allclose(ratio, per_band.expand_as(ratio), atol=1e-5)  # one factor per band and image
    assert bool(((per_band >= 1 / 1.3 - 1e-5) & (per_band <= 1.3 + 1e-5)).all())
    changed = (per_band - 1).abs().flatten(1).amax(1) > 1e-6
    assert 0.6 < changed.float().mean() < 0.9  # p = 0.75 of the images
    assert bool((per_band.flatten(1).std(1)[changed] > 0).all())  # bands differ within an image
    assert torch.equal(out_boxes.as_subclass(torch.Tensor), boxes.as_subclass(torch.Tensor))
    valid, _ = gains_tfm((images, boxes), split_idx=1)
    assert torch.equal(valid.as_subclass(torch.Tensor), images.as_subclass(torch.Tensor))


def test_channel_gains_clip_to_the_unit_range():
    torch.manual_seed(0)
    out = ChannelGains(max_gain=1.0, p=1.0)(TensorImage(torch.full((32, 3, 2, 2), 0.9)), split_idx=0)
    assert float(out.max()) == 1.0 and float(out.min()) >= 0.45 - 1e-6


def test_crop_shifts_clips_and_drops_by_visible_fraction():
    image = torch.arange(100.0).reshape(1, 10, 10)
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 4.0, 4.0], [7.0, 7.0, 9.0, 9.0]])
    labels = torch.tensor([1, 2, 3])
    out, out_boxes, out_labels = crop(image, boxes, labels, top=3, left=3, height=5, width=5)
    assert torch.equal(out, image[:, 3:8, 3:8])
    # box 1: 3x3 of 4x4 visible (kept, clipped); box 2: 1x1 of 16 (< 25%, dropped); box 3: 1x1 of 2x2 = 25% (kept)
    assert out_boxes.tolist() == [[0.0, 0.0, 3.0, 3.0], [4.0, 4.0, 5.0, 5.0]]
    assert out_labels.tolist() == [1, 3]
    assert MIN_VISIBLE_FRACTION == 0.25


def test_pad_and_resize():
    image = torch.ones(2, 3, 5)
    assert pad_to(image, 4, 6).shape == (2, 4, 6) and pad_to(image, 4, 6)[:, 3:, :].sum() == 0
    resized, boxes = resize(torch.ones(1, 10, 20), torch.tensor([[2.0, 2.0, 10.0, 8.0]]), 5)
    assert resized.shape == (1, 5, 5)
    assert boxes.tolist() == [[0.5, 1.0, 2.5, 4.0]]


def test_pixel_unit_round_trip_and_edges():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 32.0], [16.0, 8.0, 17.5, 9.25]])
    unit = pixel_to_unit(boxes, 32, 64)
    assert unit[0].tolist() == [-1.0, -1.0, 1.0, 1.0]
    assert torch.allclose(unit_to_pixel(unit, 32, 64), boxes)
