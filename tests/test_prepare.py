"""prepare_data on VOC, KITTI, COCO and YOLO folders, and on bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from fastai.vision.all import Brightness
from matplotlib.figure import Figure

from geolearn import prepare_data
from geolearn.data.normalization import CACHE_FILE, IMAGENET_MEAN, IMAGENET_STD
from geolearn.data.prepare import split_indices
from geolearn.data.boxes import unit_to_pixel
from geolearn.errors import (
    BandMismatchError,
    DataFolderError,
    GeolearnWarning,
    ImageReadError,
    LabelFormatError,
    NoChipsError,
)

from conftest import CHIP, VOC_CHIPS, chip_pixels, esri_files, make_folder, write_image


def plain(batch):
    """fastai's typed tensors refuse to mix types in indexing; tests compare plain tensors."""
    return [t.as_subclass(torch.Tensor) for t in batch]


def all_targets(data):
    """{chip stem: (boxes as lists, class names)} over both datasets, before augmentation."""
    out = {}
    for ds in (data.train_ds, data.valid_ds):
        for i, image in enumerate(ds.images):
            boxes, labels = ds.targets(i)
            out[image.stem] = (boxes.tolist(), [data.classes[j] for j in labels.tolist()])
    return out


def test_esri_voc_folder_gives_arcgis_attributes(voc_folder):
    data = prepare_data(voc_folder, chip_size=48, batch_size=2, val_split_pct=0.2)
    assert data.classes == ["background", "pool", "tree"]
    assert data.c == 3
    assert data.class_mapping == {1: "pool", 2: "tree"}
    assert data.color_mapping == {1: [10, 20, 30], 2: [20, 40, 60]}  # from the EMD
    assert data.chip_size == 48 and data.batch_size == 2
    assert data.dataset_type == "PASCAL_VOC_rectangles"
    assert len(data.train_ds) + len(data.valid_ds) == 5 and len(data.valid_ds) == 1
    targets = all_targets(data)
    assert targets["000000001"] == ([[40, 40, 60, 56], [2, 2, 10, 10]], ["tree", "pool"])
    assert targets["000000003"] == ([], [])  # the background chip is kept
    assert data.path == voc_folder


def test_batches_carry_boxes_in_fastai_units_and_imagenet_normalisation(voc_folder):
    data = prepare_data(voc_folder, chip_size=CHIP, batch_size=5, val_split_pct=0.0, transforms=False)
    data.train.shuffle = False
    images, unit_boxes, labels = plain(data.train.one_batch())
    assert images.shape == (5, 3, CHIP, CHIP)
    stems = [p.stem for p in data.train_ds.images]
    i = stems.index("000000001")
    pixel_boxes = unit_to_pixel(unit_boxes[i], CHIP, CHIP)
    kept = labels[i] > 0
    assert torch.allclose(pixel_boxes[kept], torch.tensor([[40.0, 40, 60, 56], [2, 2, 10, 10]]))
    assert labels[i][kept].tolist() == [2, 1]
    # The object's pixels (0.95 * 255) come out ImageNet-standardised.
    expected = (0.95 * 255 // 1 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(images[i, :, 45, 50], expected, atol=1e-3)


def test_class_mapping_renames_esri_classes(voc_folder):
    data = prepare_data(voc_folder, class_mapping={1: "swimming pool"}, val_split_pct=0.2)
    assert data.classes == ["background", "swimming pool", "tree"]
    assert data.class_mapping == {1: "swimming pool", 2: "tree"}


def test_kitti_text_classes_without_esri_files_are_detected(tmp_path):
    chips = {"a": ([[10, 12, 30, 20]], ["car"]), "b": ([[1, 1, 9, 9], [20, 20, 30, 40]], ["building", "car"])}
    root = make_folder(tmp_path / "kitti", chips, fmt="kitti", esri=False)
    data = prepare_data(root, val_split_pct=0.5, chip_size=32)
    assert data.dataset_type == "KITTI_rectangles"
    assert data.classes == ["background", "building", "car"]
    assert sorted(data.class_mapping.values()) == ["building", "car"]
    assert data.chip_size == 32
    assert all_targets(data)["b"] == ([[1, 1, 9, 9], [20, 20, 30, 40]], ["building", "car"])


def test_kitti_numeric_tokens_with_class_mapping(tmp_path):
    chips = {"a": ([[10, 12, 30, 20]], ["3"]), "b": ([[1, 1, 9, 9]], ["7"])}
    root = make_folder(tmp_path / "kitti", chips, fmt="kitti", esri=False)
    with pytest.warns(GeolearnWarning, match=r"1 objects of classes not in the class mapping.*'7' \(1\)"):
        data = prepare_data(root, class_mapping={3: "solar panel"}, val_split_pct=0.5)
    assert data.classes == ["background", "solar panel"]
    assert data.class_mapping == {3: "solar panel"}
    assert all_targets(data)["b"] == ([], [])


def test_coco_folder(tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    for name in ("x.png", "y.png", "z.png"):
        write_image(root / "images" / name, chip_pixels([]))
    coco = {
        "images": [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "y.png"}, {"id": 3, "file_name": "z.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 20, 5, 8]},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0, 0, 64, 32]},
        ],
        "categories": [{"id": 5, "name": "pool"}, {"id": 9, "name": "tree"}],
    }
    (root / "labels.json").write_text(json.dumps(coco))
    data = prepare_data(root, val_split_pct=0.34)
    assert data.dataset_type == "COCO_rectangles"
    assert data.classes == ["background", "pool", "tree"]
    assert data.class_mapping == {5: "pool", 9: "tree"}
    targets = all_targets(data)
    assert targets["x"] == ([[10, 20, 15, 28]], ["pool"])
    assert targets["z"] == ([], [])


def test_coco_images_without_a_file_are_left_out_with_a_counted_warning(tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    write_image(root / "images" / "x.png", chip_pixels([]))
    coco = {
        "images": [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "gone1.png"}, {"id": 3, "file_name": "gone2.png"}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 5, "bbox": [10, 20, 5, 8]}],
        "categories": [{"id": 5, "name": "pool"}],
    }
    (root / "labels.json").write_text(json.dumps(coco))
    with pytest.warns(GeolearnWarning, match=r"labels\.json: 2 images it lists have no file in images/ \(e\.g\. gone1\.png\)"):
        data = prepare_data(root, val_split_pct=0.0)
    assert len(data.train_ds) == 1


def test_a_truncated_png_chip_is_refused_not_read_with_zeros(voc_folder):
    chip = voc_folder / "images" / "000000002.png"
    whole = chip.read_bytes()
    chip.write_bytes(whole[: len(whole) // 2])  # GDAL itself reads the missing rows as zeros, silently
    with pytest.raises(ImageReadError, match=r"000000002\.png: the PNG is truncated"):
        prepare_data(voc_folder)


def test_yolo_folder_with_classes_txt(tmp_path):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.jpg", chip_pixels([]))
    write_image(root / "images" / "b.jpg", chip_pixels([]))
    (root / "labels" / "a.txt").write_text("1 0.5 0.25 0.25 0.5\n")  # 64 px chip: x 24..40, y 0..32
    (root / "labels" / "b.txt").write_text("0 0.125 0.125 0.25 0.25\n")
    (root / "classes.txt").write_text("pool\ntree\n")
    data = prepare_data(root, val_split_pct=0.5)
    assert data.dataset_type == "YOLO_rectangles"
    assert data.classes == ["background", "pool", "tree"]
    assert data.class_mapping == {0: "pool", 1: "tree"}
    assert all_targets(data)["a"] == ([[24, 0, 40, 32]], ["tree"])


def test_list_of_folders_unions_classes(tmp_path):
    first = make_folder(tmp_path / "one", {"a": ([[1, 1, 9, 9]], ["1"])}, classes={1: "pool"})
    second = make_folder(tmp_path / "two", {"b": ([[1, 1, 9, 9]], ["3"])}, classes={3: "car"})
    data = prepare_data([first, second], val_split_pct=0.5)
    assert data.classes == ["background", "car", "pool"]
    assert data.class_mapping == {3: "car", 1: "pool"}


def test_split_is_seeded_over_sorted_chips_and_valid_path_is_used_whole(voc_folder, tmp_path):
    a = prepare_data(voc_folder, val_split_pct=0.4, seed=7)
    b = prepare_data(voc_folder, val_split_pct=0.4, seed=7)
    assert [p.name for p in a.valid_ds.images] == [p.name for p in b.valid_ds.images]
    assert len(a.valid_ds) == 2
    train, valid = split_indices(10, 0.3, seed=1)
    assert len(valid) == 3 and sorted(train + valid) == list(range(10))
    other = make_folder(tmp_path / "valid", {"v": ([[1, 1, 9, 9]], ["2"])})
    c = prepare_data(voc_folder, valid_path=other)
    assert len(c.train_ds) == 5 and [p.stem for p in c.valid_ds.images] == ["v"]


def test_stratified_split_puts_each_class_in_validation():
    groups = ["pool"] * 4 + ["tree"] * 4 + ["car"] * 2
    train, valid = split_indices(10, 0.25, seed=0, groups=groups)
    assert {groups[i] for i in valid} == {"pool", "tree", "car"}


def test_random_crops_keep_boxes_on_their_objects(voc_folder):
    data = prepare_data(voc_folder, chip_size=40, val_split_pct=0.0, transforms=False, batch_size=5)
    for _ in range(3):
        for image, unit_boxes, labels in zip(*plain(data.train.one_batch())):
            image01 = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
            for box in unit_to_pixel(unit_boxes[labels > 0], 40, 40).round().long().tolist():
                xmin, ymin, xmax, ymax = box
                assert image01[0, ymin:ymax, xmin:xmax].min() > 0.9  # the object is under its box


def test_training_only_colour_transforms_run_on_training_batches_alone(voc_folder):
    """fastai runs Brightness (split_idx 0) only where the dataset says it is the training split."""
    data = prepare_data(voc_folder, chip_size=CHIP, batch_size=2, val_split_pct=0.4,
                        transforms=[Brightness(max_lighting=0.5, p=1.0)])

    def normalized(item_image):  # the chip as the network would see it without augmentation
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        return (item_image.as_subclass(torch.Tensor) - mean) / std

    train_plain = [normalized(data.train_ds[i][0]) for i in range(len(data.train_ds))]
    train_images = plain(data.train.one_batch())[0]
    # chip_size is the chips' own size, so the random crop is the whole chip: only Brightness differs
    assert not any(torch.allclose(image, chip, atol=1e-3) for image in train_images for chip in train_plain)
    valid_images = plain(data.valid.one_batch())[0]
    for image, i in zip(valid_images, range(len(data.valid_ds))):
        assert torch.allclose(image, normalized(data.valid_ds[i][0]), atol=1e-5)


def test_resize_to_squishes_chips_and_boxes(voc_folder):
    data = prepare_data(voc_folder, chip_size=32, resize_to=32, val_split_pct=0.0, transforms=False)
    ds = data.train_ds
    i = [p.stem for p in ds.images].index("000000000")
    image, unit_boxes, labels = ds[i]
    assert image.shape == (3, 32, 32)
    assert unit_to_pixel(unit_boxes, 32, 32).tolist() == [[5.0, 6.0, 15.0, 10.0]]


def test_show_batch_returns_a_figure(voc_folder):
    data = prepare_data(voc_folder, chip_size=48, batch_size=4, val_split_pct=0.2)
    figure = data.show_batch(rows=2)
    assert isinstance(figure, Figure)
    assert len([ax for ax in figure.axes if ax.images]) == 4
    assert any(ax.patches for ax in figure.axes)


def test_multispectral_uses_export_band_stats(tmp_path):
    root = make_folder(tmp_path / "ms", dict(list(VOC_CHIPS.items())[:3]), suffix=".tif", bands=4, dtype="uint16", esri=False)
    state = [{"Min": 0.0, "Max": 10000.0, "M1": 2500.0, "M2": 1e6 * 100, "Num": 100}] * 4
    esri_files(root, {1: "pool", 2: "tree"}, "PASCAL_VOC_rectangles", band_stats=state, bands=4)
    data = prepare_data(root, val_split_pct=0.0, transforms=False, rgb_bands=[3, 2, 1])
    assert data.is_multispectral
    assert data.normalization.band_min == (0.0,) * 4 and data.normalization.band_max == (10000.0,) * 4
    assert data.normalization.mean == pytest.approx((0.25,) * 4)
    assert data.normalization.std == pytest.approx((0.1,) * 4)  # sqrt(M2 / Num) / (Max - Min)
    image, _, _ = data.train_ds[0]
    assert image.shape[0] == 4 and 0 <= float(image.min()) and float(image.max()) <= 1
    assert isinstance(data.show_batch(rows=1), Figure)


def test_multispectral_without_stats_samples_and_caches(tmp_path):
    root = make_folder(tmp_path / "ms", VOC_CHIPS, suffix=".tif", bands=4, dtype="uint16", esri=False)
    data = prepare_data(root, val_split_pct=0.0, norm_pct=1.0)
    pixels = np.concatenate([chip_pixels(b, seed=i, bands=4, dtype="uint16").reshape(4, -1)
                             for i, (b, _) in enumerate(VOC_CHIPS.values())], axis=1)
    assert data.normalization.band_min == tuple(pixels.min(axis=1).astype(float))
    assert data.normalization.band_max == tuple(pixels.max(axis=1).astype(float))
    cache = json.loads((root / CACHE_FILE).read_text())
    assert cache["band_max"] == list(data.normalization.band_max)
    again = prepare_data(root, val_split_pct=0.0, norm_pct=1.0)
    assert again.normalization == data.normalization


def test_extract_bands_reads_only_those_bands(tmp_path):
    root = make_folder(tmp_path / "ms", dict(list(VOC_CHIPS.items())[:2]), suffix=".tif", bands=4, dtype="uint16", esri=False)
    data = prepare_data(root, val_split_pct=0.0, extract_bands=[3, 0], norm_pct=1.0)
    assert data.train_ds[0][0].shape[0] == 2 and data.normalization.n_bands == 2


# --- bad input --------------------------------------------------------------------------


def test_missing_folder_images_and_labels(tmp_path):
    with pytest.raises(DataFolderError, match="no such folder"):
        prepare_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFolderError, match=r"no images/ folder.*Export Training Data"):
        prepare_data(tmp_path / "empty")
    root = make_folder(tmp_path / "nolabels")
    for f in (root / "labels").iterdir():
        f.unlink()
    (root / "labels").rmdir()
    with pytest.raises(DataFolderError, match=r"no labels/ folder"):
        prepare_data(root)


def test_no_chips(tmp_path):
    (tmp_path / "x" / "images").mkdir(parents=True)
    with pytest.raises(NoChipsError, match=r"images: no chips"):
        prepare_data(tmp_path / "x")


def test_malformed_xml_names_the_file(voc_folder):
    (voc_folder / "labels" / "000000002.xml").write_text("<annotation><object>")
    with pytest.raises(LabelFormatError, match=r"000000002\.xml: not valid PASCAL VOC XML"):
        prepare_data(voc_folder)


def test_inverted_box_names_file_and_values(voc_folder):
    (voc_folder / "labels" / "000000002.xml").write_text(
        "<annotation><object><name>1</name><bndbox><xmin>30</xmin><ymin>5</ymin>"
        "<xmax>20</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(LabelFormatError, match=r"000000002\.xml: object 0 .*xmin=30, ymin=5, xmax=20, ymax=9"):
        prepare_data(voc_folder)


def test_boxes_outside_the_chip_are_clipped_or_dropped_with_a_count(voc_folder):
    (voc_folder / "labels" / "000000002.xml").write_text(
        "<annotation><object><name>1</name><bndbox><xmin>50</xmin><ymin>5</ymin><xmax>80</xmax><ymax>9</ymax>"
        "</bndbox></object><object><name>2</name><bndbox><xmin>70</xmin><ymin>5</ymin><xmax>80</xmax>"
        "<ymax>9</ymax></bndbox></object></annotation>"
    )
    with pytest.warns(GeolearnWarning, match=r"1 boxes reached past .* clipped.* and 1 lay wholly outside"):
        data = prepare_data(voc_folder, val_split_pct=0.0)
    assert all_targets(data)["000000002"] == ([[50, 5, 64, 9]], ["pool"])


def test_unknown_class_value_is_dropped_with_a_count(voc_folder):
    (voc_folder / "labels" / "000000002.xml").write_text(
        "<annotation><object><name>9</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
        "</bndbox></object></annotation>"
    )
    with pytest.warns(GeolearnWarning, match=r"1 objects of classes not in the class mapping.*'9' \(1\)"):
        data = prepare_data(voc_folder, val_split_pct=0.0)
    assert all_targets(data)["000000002"] == ([], [])


def test_empty_label_file_is_a_background_chip(voc_folder):
    (voc_folder / "labels" / "000000002.xml").write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeolearnWarning)
        data = prepare_data(voc_folder, val_split_pct=0.0)
    assert all_targets(data)["000000002"] == ([], [])


def test_chips_without_label_files_are_dropped_and_counted(voc_folder):
    (voc_folder / "labels" / "000000002.xml").unlink()
    (voc_folder / "labels" / "000000004.xml").unlink()
    with pytest.warns(GeolearnWarning, match=r"2 of 5 chips have no labels in labels/ \(e\.g\. 000000002\.png\)"):
        data = prepare_data(voc_folder, val_split_pct=0.0)
    assert len(data.train_ds) == 3


def test_no_chip_with_a_label_file(voc_folder):
    for f in (voc_folder / "labels").iterdir():
        f.unlink()
    with pytest.raises(NoChipsError, match="none of the chips in images/ has a label file"), pytest.warns(GeolearnWarning):
        prepare_data(voc_folder, dataset_type="PASCAL_VOC_rectangles")


def test_unreadable_image_names_the_file(voc_folder):
    (voc_folder / "images" / "000000002.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"000000002\.png: cannot be read as an image"):
        prepare_data(voc_folder)


def test_mixed_band_counts(voc_folder):
    write_image(voc_folder / "images" / "000000002.png", chip_pixels([], bands=1))
    with pytest.raises(BandMismatchError, match=r"different band counts \(1 bands: 000000002\.png; 3 bands"):
        prepare_data(voc_folder)


def test_unsupported_dataset_type(voc_folder):
    with pytest.raises(DataFolderError, match=r"'Classified_Tiles' is not one RetinaNet trains on"):
        prepare_data(voc_folder, dataset_type="Classified_Tiles")


def test_unknown_keyword_is_refused(voc_folder):
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['chipsize'\\]"):
        prepare_data(voc_folder, chipsize=3)


def test_band_names_pick_rgb_bands_and_bad_names_are_refused(tmp_path):
    root = make_folder(tmp_path / "ms", dict(list(VOC_CHIPS.items())[:2]), suffix=".tif", bands=4, dtype="uint16", esri=False)
    data = prepare_data(root, val_split_pct=0.0, bands=["nir", "blue", "green", "red"], norm_pct=1.0)
    assert data.rgb_bands == [3, 2, 1]
    assert prepare_data(root, val_split_pct=0.0, rgb_bands=["nir", "red", "green"],
                        bands=["nir", "blue", "green", "red"]).rgb_bands == [0, 3, 2]
    with pytest.raises(ValueError, match=r"band 'swir' is not among bands="):
        prepare_data(root, val_split_pct=0.0, rgb_bands=["swir", "red", "green"], bands=["nir", "blue", "green", "red"])


def test_user_fastai_transforms_replace_the_defaults(voc_folder):
    from fastai.vision.all import Dihedral

    flip = prepare_data(voc_folder, chip_size=CHIP, val_split_pct=0.0, batch_size=5, transforms=[Dihedral(p=1.0, draw=1)])
    none = prepare_data(voc_folder, chip_size=CHIP, val_split_pct=0.0, batch_size=5, transforms=False)
    flip.train.shuffle = none.train.shuffle = False
    flipped, plain_boxes = plain(flip.train.one_batch())[1], plain(none.train.one_batch())[1]
    # draw=1 flips left-right: x -> -x in fastai's [-1, 1] units.
    expected = plain_boxes[..., [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0])
    real = plain(none.train.one_batch())[2] > 0
    assert torch.allclose(flipped[real], expected[real])


def test_test_path_and_dataloader_names(voc_folder, tmp_path):
    other = make_folder(tmp_path / "test", {"t": ([[1, 1, 9, 9]], ["2"])})
    data = prepare_data(voc_folder, test_path=other, val_split_pct=0.2)
    assert data.train_dl is data.train and data.valid_dl is data.valid
    assert [p.stem for p in data.test_ds.images] == ["t"] and data.test_dl is not None
