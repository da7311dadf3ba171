"""``prepare_data``: exported chips and labels → fastai DataLoaders (CONTRACT §2)."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from fastai.vision.all import DataLoaders, Normalize, TfmdDL, Transform, bb_pad

from geolearn.data.bandstats import BandStats
from geolearn.data.boxes import unit_to_pixel
from geolearn.data.dataset import ChipDataset
from geolearn.data.esri import ClassInfo
from geolearn.data.folders import FolderData, read_folder
from geolearn.data.normalization import Normalization, cached_sample_normalization
from geolearn.data.transforms import default_batch_transforms
from geolearn.checks import fraction, whole_number
from geolearn.errors import BandMismatchError, DataFolderError, NoChipsError
from geolearn.viz import resolve_rgb_bands

__all__ = ["prepare_data", "DetectionData", "split_indices", "resolve_rgb_bands"]

logger = logging.getLogger(__name__)

_KNOWN_KWARGS = {
    "imagery_type", "bands", "rgb_bands", "extract_bands", "norm_pct", "stratify",
    "num_workers", "valid_path", "test_path", "device",
}


class DetectionData(DataLoaders):
    """fastai ``DataLoaders`` with the attributes arcgis.learn's ``data`` object has.

    Attributes:
        classes: ``['background', *sorted(names)]``.
        c: ``len(classes)``.
        class_mapping: ``{value: name}`` of the object classes.
        color_mapping: ``{value: [r, g, b]}``.
        chip_size: side of the training chips, pixels.
        batch_size: chips per batch.
        path: the data folder (or ``working_dir``); ``save()`` writes under ``path/models``.
        dataset_type: the label format.
        normalization: pixel scaling and the mean/std of ``Normalize``.
        is_multispectral: True unless the chips are 8-bit RGB.
        extract_bands: 0-based bands read from each chip (None: all).
        bands: band names (e.g. ``['red', 'green', 'blue', 'nir']``), when given.
        rgb_bands: 0-based bands (of the extracted ones) drawn as red, green, blue.
        resize_to: side every chip is squished to before cropping, or None.
        zoom: network pixels per imagery pixel, ``resize_to`` over the commonest side of the
            training chips (1.0 without ``resize_to``): what a model trained on it applies to imagery.
        cell_size: the export's cell size (``{x, y, spatialReference}``), when known.
        crs_wkt: the CRS of the exported raster, when known.

    Examples:
        See :func:`prepare_data`, which builds it.
    """

    @property
    def train_dl(self) -> TfmdDL:
        """The training DataLoader (arcgis.learn's name for ``data.train``)."""
        return self.train

    @property
    def valid_dl(self) -> TfmdDL:
        """The validation DataLoader (arcgis.learn's name for ``data.valid``)."""
        return self.valid

    def show_batch(self, rows: int = 3, alpha: float = 1.0, **kwargs: Any):  # type: ignore[override]
        """Draws ``rows`` × ``rows`` augmented training chips with class-coloured labelled boxes.

        Args:
            rows: chips per side of the grid. Default 3.
            alpha: box line opacity, 0–1. Default 1.
            **kwargs: ``rgb_bands`` (0-based band indices or band names to show as red,
                green, blue; default ``data.rgb_bands``), ``figsize`` (inches).

        Returns:
            The matplotlib Figure (not shown: display it in a notebook, or save it).

        Raises:
            ValueError: an ``rgb_bands`` name or index the data does not have.
        """
        from geolearn.viz import plot_chips

        n = rows * rows
        images, unit_boxes, labels = [], [], []
        for batch in self.train:
            image_batch, box_batch, label_batch = self.train.decode(batch)[:3]
            images += list(image_batch)
            unit_boxes += list(box_batch)
            labels += list(label_batch)
            if len(images) >= n:
                break
        rgb = resolve_rgb_bands(kwargs["rgb_bands"], self.bands, self.n_bands) if "rgb_bands" in kwargs else self.rgb_bands
        size = self.chip_size
        return plot_chips(
            [image[list(rgb)] for image in images[:n]],
            [unit_to_pixel(b, size, size) for b in unit_boxes[:n]],
            [lbl for lbl in labels[:n]],
            classes=self.classes,
            colors=self.class_colors,
            rows=rows,
            alpha=alpha,
            figsize=kwargs.get("figsize"),
        )

    @property
    def class_colors(self) -> list[tuple[float, float, float]]:
        """Colour per entry of ``classes``: ``(r, g, b)`` in [0, 1], background grey."""
        by_name = {self.class_mapping[v]: c for v, c in self.color_mapping.items()}
        return [(0.5, 0.5, 0.5)] + [tuple(x / 255 for x in by_name[name]) for name in self.classes[1:]]


def split_indices(
    n_items: int, valid_pct: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Seeded train/valid split over items in their (sorted) order.

    Args:
        n_items: number of items.
        valid_pct: fraction for validation; each non-empty part gets at least one item
            when ``0 < valid_pct < 1`` and there are two or more items.
        seed: seeds ``np.random.default_rng``.
        groups: optional group key per item; each group is split at ``valid_pct``
            (stratification).

    Returns:
        Sorted train indices and sorted valid indices. When stratifying leaves either part
        empty (groups too small), the split is redone without groups.

    Examples:
        >>> split_indices(10, 0.2, seed=42)
        ([0, 1, 2, 3, 4, 7, 8, 9], [5, 6])
        >>> train, valid = split_indices(4, 0.5, seed=0, groups=["pool", "pool", "tree", "tree"])
        >>> len(valid)
        2
    """
    rng = np.random.default_rng(seed)
    keys = list(groups) if groups is not None else [""] * n_items
    valid: list[int] = []
    for key in sorted(set(keys)):
        members = np.array([i for i, k in enumerate(keys) if k == key])
        members = members[rng.permutation(len(members))]
        n_valid = int(round(len(members) * valid_pct))
        if 0 < valid_pct < 1 and len(members) >= 2:
            n_valid = min(max(n_valid, 1), len(members) - 1)
        valid += members[:n_valid].tolist()
    if groups is not None and 0 < valid_pct < 1 and n_items >= 2 and len(valid) in (0, n_items):
        return split_indices(n_items, valid_pct, seed)  # groups too small to stratify
    valid_set = set(valid)
    return [i for i in range(n_items) if i not in valid_set], sorted(valid)


def _merge_classes(folders: Sequence[FolderData]) -> list[ClassInfo]:
    """Unions the folders' classes; one name must keep one value across folders."""
    by_name: dict[str, ClassInfo] = {}
    for folder in folders:
        for info in folder.classes:
            known = by_name.get(info.name)
            if known is None:
                clash = next((c for c in by_name.values() if c.value == info.value), None)
                if clash is not None:
                    raise DataFolderError(
                        f"{folder.root}: class value {info.value} is {info.name!r} here but "
                        f"{clash.name!r} in another folder. Give class_mapping={{value: name}} "
                        "to make the folders agree."
                    )
                by_name[info.name] = info
            elif known.value != info.value:
                raise DataFolderError(
                    f"{folder.root}: class {info.name!r} has value {info.value} here but "
                    f"{known.value} in another folder. Re-export with the same class values, "
                    "or pass class_mapping."
                )
    return sorted(by_name.values(), key=lambda c: c.name)


def _stratify_keys(folder_labels: Sequence, counts: Counter) -> list[str]:
    """Each chip's rarest class (or 'background'): the key its stratified split uses."""
    keys = []
    for labels in folder_labels:
        names = set(labels.classes)
        keys.append(min(names, key=lambda n: (counts[n], n)) if names else "background")
    return keys


def _normalization(
    folders: Sequence[FolderData],
    images: Sequence[Path],
    extract_bands: Sequence[int] | None,
    imagery_type: str | None,
    norm_pct: float,
    seed: int,
    cache_root: Path,
) -> tuple[Normalization, bool]:
    """Chooses the normalisation (CONTRACT §2) and says whether the data is multispectral."""
    info = folders[0].infos[0]
    n_bands = len(extract_bands) if extract_bands is not None else info.count
    rgb8 = n_bands == 3 and all(i.dtype == "uint8" for f in folders for i in f.infos)
    if rgb8 and imagery_type in (None, "RGB", "rgb"):
        return Normalization.for_rgb8(), False
    if all(f.band_stats is not None for f in folders):
        stats = BandStats(folders[0].band_stats.n_bands)
        for folder in folders:
            stats.merge(folder.band_stats)
        if extract_bands is not None:
            picked = BandStats(len(extract_bands))
            for name in ("minimum", "maximum", "mean", "m2", "count"):
                setattr(picked, name, getattr(stats, name)[list(extract_bands)])
            stats = picked
        if stats.n_bands == n_bands and stats.count.min() > 0:
            return Normalization.from_band_stats(stats), True
    return cached_sample_normalization(cache_root, images, extract_bands, norm_pct, seed), True


def _zoom(resize_to: int | None, chip_widths: Sequence[int]) -> float:
    """Network pixels per imagery pixel: ``resize_to`` over the commonest side of the training chips.

    Chips of other sides are squished by other factors; no single factor fits them, and the
    commonest one (an export writes chips of one size) is what prediction applies.

    Examples:
        >>> _zoom(None, [256, 256]), _zoom(384, [256, 256, 200])
        (1.0, 1.5)
    """
    if not resize_to or not chip_widths:
        return 1.0
    return resize_to / Counter(chip_widths).most_common(1)[0][0]


def _parse_transforms(transforms: Any, n_bands: int) -> tuple[list[Transform], list[Transform]]:
    """``None`` → defaults; ``False`` → none; a list → training batch transforms;
    ``(train, valid)`` → both, as arcgis.learn's tuple."""
    if transforms is None:
        return default_batch_transforms(n_bands), []
    if transforms is False:
        return [], []
    if isinstance(transforms, tuple) and len(transforms) == 2 and all(isinstance(t, (list, tuple)) for t in transforms):
        return list(transforms[0]), list(transforms[1])
    if isinstance(transforms, (list, tuple)):
        return list(transforms), []
    raise TypeError(
        f"transforms={transforms!r}: pass None (defaults), False (none), a list of fastai batch "
        "transforms, or a (train_transforms, valid_transforms) tuple."
    )


def _check_band_counts(folders: Sequence[FolderData]) -> None:
    if len({f.infos[0].count for f in folders}) > 1:
        raise BandMismatchError(
            "the folders have chips with different band counts: "
            + "; ".join(f"{f.root}: {f.infos[0].count}" for f in folders)
            + ". Train on folders exported from rasters with the same bands."
        )


def _joined(folders: Sequence[FolderData]) -> FolderData:
    """The chips of several folders as one folder's lists (the first folder's root and metadata)."""
    if len(folders) == 1:
        return folders[0]
    return dataclasses.replace(
        folders[0],
        images=[image for f in folders for image in f.images],
        labels=[label for f in folders for label in f.labels],
        infos=[info for f in folders for info in f.infos],
    )


def _split(folder: FolderData, separate_valid: bool, val_split_pct: float, seed: int,
           stratify: bool | None) -> tuple[list[int], list[int]]:
    """Training and validation indices into ``folder``'s chips (all for training with a ``valid_path``)."""
    n = len(folder.images)
    if separate_valid:
        train_idx, valid_idx = list(range(n)), []
    else:
        groups = None
        if stratify:
            groups = _stratify_keys(folder.labels, Counter(name for label in folder.labels for name in label.classes))
        train_idx, valid_idx = split_indices(n, val_split_pct, seed, groups)
    if not train_idx:
        raise NoChipsError(
            f"no training chips left: {n} chips with val_split_pct={val_split_pct}. "
            "Lower val_split_pct or export more chips."
        )
    return train_idx, valid_idx


def _loaders(train_ds: ChipDataset, valid_ds: ChipDataset, test_ds: ChipDataset | None,
             transforms: tuple[list[Transform], list[Transform]], normalization: Normalization, *, batch_size: int,
             collate_fn: Callable | None, seed: int, num_workers: int, device) -> tuple[TfmdDL, TfmdDL, TfmdDL | None]:
    """fastai's training, validation and (when ``test_ds``) test loaders, normalising on the batch."""
    train_tfms, valid_tfms = transforms
    normalize = Normalize.from_stats(list(normalization.mean), list(normalization.std), cuda=False)
    loader_args = dict(
        bs=batch_size,
        before_batch=collate_fn or bb_pad,
        num_workers=num_workers,
        device=device,  # None: fastai's default, the GPU when there is one
    )
    train_dl = TfmdDL(train_ds, shuffle=True, drop_last=len(train_ds) > batch_size,
                      after_batch=[*train_tfms, normalize], **loader_args)
    train_dl.rng = random.Random(seed)  # fastai draws the shuffle order from this
    valid_dl = TfmdDL(valid_ds, shuffle=False, after_batch=[*valid_tfms, normalize], **loader_args)
    test_dl = None
    if test_ds is not None:
        test_dl = TfmdDL(test_ds, shuffle=False, after_batch=[*valid_tfms, normalize], **loader_args)
    return train_dl, valid_dl, test_dl


def prepare_data(
    path: str | Path | Sequence[str | Path],
    class_mapping: Mapping | None = None,
    chip_size: int = 224,
    val_split_pct: float = 0.1,
    batch_size: int = 64,
    transforms: Any = None,
    collate_fn: Callable | None = None,
    seed: int = 42,
    dataset_type: str | None = None,
    resize_to: int | None = None,
    working_dir: str | Path | None = None,
    **kwargs: Any,
) -> DetectionData:
    """Reads exported training chips and labels into fastai DataLoaders, as arcgis.learn does.

    Args:
        path: export folder (``images/`` + ``labels/`` + Esri files), or a list of them
            (classes are unioned).
        class_mapping: ``{value: name}``; with an Esri export it renames classes, without
            one it maps label tokens to names (objects of other tokens are dropped).
            Default None.
        chip_size: side in pixels of the chips the network sees (random crop for training,
            centre crop for validation; smaller chips are zero-padded). Default 224.
        val_split_pct: fraction (0–1) of chips held out for validation (seeded, over the
            sorted list). Default 0.1.
        batch_size: chips per batch. Default 64.
        transforms: None (the default) for dihedral flips, zoom, brightness and contrast,
            False for none, a list of fastai batch transforms for training, or a
            ``(train, valid)`` tuple of such lists.
        collate_fn: replaces fastai's ``bb_pad`` to build batches. Default None.
        seed: seeds the split, the crops, the shuffle order and the normalisation sample.
            Default 42.
        dataset_type: ``'PASCAL_VOC_rectangles'``, ``'KITTI_rectangles'``,
            ``'COCO_rectangles'`` or ``'YOLO_rectangles'``; None (the default) detects it.
        resize_to: squish every chip to this side (pixels) before cropping. Default None.
        working_dir: where ``save()`` writes models. Default None: the (first) data folder.
        **kwargs: ``extract_bands`` (0-based bands to use), ``bands`` (band names, e.g.
            ``['red', 'green', 'blue', 'nir']``), ``rgb_bands`` (band indices or names to
            draw), ``imagery_type`` (anything but ``'RGB'`` forces per-band normalisation),
            ``norm_pct`` (share of chips sampled for band statistics, default 0.3),
            ``stratify`` (split per rarest class), ``num_workers`` (default 0),
            ``valid_path`` (a folder used whole for validation), ``test_path`` (a folder read
            as ``data.test_ds``/``data.test_dl``), ``device``.

    Returns:
        :class:`DetectionData` with ``classes``, ``c``, ``class_mapping``, ``color_mapping``,
        ``chip_size``, ``train_ds``, ``valid_ds``, ``show_batch()``.

    Raises:
        DataFolderError: a missing folder, ``images/`` or ``labels/``, an undetectable or
            non-rectangle format, an empty ``path`` list, or folders whose class values
            disagree.
        NoChipsError: no chips, or none left for training after the validation split.
        LabelFormatError: a malformed label or metadata file.
        ImageReadError: an unreadable chip.
        BandMismatchError: chips (or folders) with different band counts.
        TypeError: an unknown keyword argument, ``extract_bands`` that are not integers, or
            ``transforms`` of another kind than listed above.
        ValueError: an ``rgb_bands`` name or index the data does not have; ``chip_size`` under
            8, ``batch_size`` under 1, or ``val_split_pct`` outside [0, 1).

    Examples:
        >>> import tempfile
        >>> from geolearn.data.export import export_training_data
        >>> from geolearn.sample import make_scene
        >>> scene = make_scene(tempfile.mkdtemp(), size=512, seed=0)
        >>> chips = export_training_data(scene.raster, scene.labels, output_location=scene.raster.parent / "chips",
        ...                              tile_size=128, stride_size=128, progress=False)
        >>> data = prepare_data(chips, chip_size=128, batch_size=4)
        >>> data.classes, data.class_mapping
        (['background', 'pool', 'tree'], {1: 'pool', 2: 'tree'})
        >>> len(data.train_ds), len(data.valid_ds), data.is_multispectral
        (7, 1, False)
    """
    unknown = set(kwargs) - _KNOWN_KWARGS
    if unknown:
        raise TypeError(f"prepare_data() got unexpected keyword arguments {sorted(unknown)}; known: {sorted(_KNOWN_KWARGS)}")
    # The network runs on chips down to 8 px (measured); smaller ones are not worth training.
    chip_size = whole_number("chip_size", chip_size, minimum=8, example="224")
    batch_size = whole_number("batch_size", batch_size, example="8")
    val_split_pct = fraction("val_split_pct", val_split_pct, include_one=False, example="0.1")
    roots = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if not roots:
        raise DataFolderError("prepare_data() got an empty list of paths; pass at least one export folder.")
    extract_bands = kwargs.get("extract_bands")
    if extract_bands is not None and not all(isinstance(b, int) for b in extract_bands):
        raise TypeError(f"extract_bands={extract_bands!r}: give 0-based band indices, e.g. [0, 1, 2].")
    folders = [read_folder(root, dataset_type, class_mapping) for root in roots]
    valid_path, test_path = kwargs.get("valid_path"), kwargs.get("test_path")
    valid_folder = read_folder(valid_path, dataset_type, class_mapping) if valid_path else None
    all_folders = folders + ([valid_folder] if valid_folder else [])
    _check_band_counts(all_folders)
    classes = _merge_classes(all_folders)
    names = ["background"] + [c.name for c in classes]

    training = _joined(folders)
    train_idx, valid_idx = _split(training, valid_folder is not None, val_split_pct, seed, kwargs.get("stratify"))
    normalization, multispectral = _normalization(
        all_folders, training.images, extract_bands, kwargs.get("imagery_type"), float(kwargs.get("norm_pct", 0.3)),
        seed, roots[0],
    )

    def dataset(source: FolderData, indices: Sequence[int], train: bool) -> ChipDataset:
        return ChipDataset(
            [source.images[i] for i in indices], [source.labels[i] for i in indices], names, chip_size,
            normalization, train=train, resize_to=resize_to, bands=extract_bands, seed=seed,
            sizes=[(source.infos[i].height, source.infos[i].width) for i in indices],  # the headers read above
        )

    train_ds = dataset(training, train_idx, True)
    if valid_folder is not None:
        valid_ds = dataset(valid_folder, range(len(valid_folder.images)), False)
    else:
        valid_ds = dataset(training, valid_idx, False)
    test_ds = None
    if test_path:
        test_folder = read_folder(test_path, dataset_type, class_mapping)
        test_ds = dataset(test_folder, range(len(test_folder.images)), False)

    n_bands = len(extract_bands) if extract_bands is not None else folders[0].infos[0].count
    loaders = _loaders(train_ds, valid_ds, test_ds, _parse_transforms(transforms, n_bands), normalization,
                       batch_size=batch_size, collate_fn=collate_fn, seed=seed,
                       num_workers=int(kwargs.get("num_workers", 0)), device=kwargs.get("device"))
    data_root = Path(working_dir) if working_dir is not None else roots[0]
    data = DetectionData(*loaders[:2], path=data_root)
    data.test_ds, data.test_dl = test_ds, loaders[2]
    data.classes = names
    data.c = len(names)
    data.class_mapping = {c.value: c.name for c in classes}
    data.color_mapping = {c.value: list(c.color) for c in classes}
    data.chip_size = chip_size
    data.batch_size = batch_size
    data.dataset_type = folders[0].dataset_type
    data.normalization = normalization
    data.is_multispectral = multispectral
    data.extract_bands = extract_bands
    data.n_bands = n_bands
    data.bands = list(kwargs["bands"]) if kwargs.get("bands") else None
    data.rgb_bands = resolve_rgb_bands(kwargs.get("rgb_bands"), data.bands, n_bands)
    data.resize_to = resize_to
    data.zoom = _zoom(resize_to, [width for _, width in train_ds.sizes])
    # Ground sample distance and CRS of the training imagery (from the export), for the model's EMD.
    export_emd = folders[0].emd or {}
    data.cell_size = export_emd.get("MinCellSize", export_emd.get("CellSize"))
    data.crs_wkt = (export_emd.get("geolearn") or {}).get("crs_wkt")
    data.seed = seed
    data.path = data_root
    logger.info("prepared %d training and %d validation chips, classes %s", len(train_ds), len(valid_ds), names)
    return data
