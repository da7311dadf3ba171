"""The demo recipe: the whole workflow on the sample scene, as ``geolearn demo`` runs it.

One place for the demo's settings (chip size, enlargement, held-back corner, epochs, thresholds)
and its steps, so that the CLI (``geolearn demo``), the tutorial notebook (docs/tutorial.ipynb) and
``benchmarks/demo_recipe.py`` run the same recipe. :func:`run_demo` reports each step through the
``echo`` callable it is given (the CLI passes ``print``).

Examples:
    >>> from geolearn.sample import demo
    >>> demo.CHIP_PX, demo.TRAIN_PX, demo.HELD_BACK_PX, demo.DEMO_EPOCHS
    (256, 384, 512, 7)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from geolearn.errors import InputNotFoundError, InvalidArgumentError

__all__ = ["run_demo", "find_sample_scene", "held_back", "DEMO_EPOCHS", "CHIP_PX", "TRAIN_PX", "HELD_BACK_PX"]

SAMPLE_NAME = "sample_scene"
DEMO_EPOCHS = 7
# Crowns in a stand touch: their boxes overlap by more than arcgis.learn's NMS default (0.1).
DENSE_NMS_OVERLAP = 0.5
# AP ranks detections by score; a high threshold would cut the precision-recall curve short
# (PASCAL VOC and COCO score every detection the model makes; 0.05 is torchvision's floor).
AP_DETECT_THRESH = 0.05
# The lowest confidence of an object the demo reports over the whole scene.
SCENE_THRESHOLD = 0.4
CHIP_PX = 256
# The network sees the chips enlarged 1.5× (prepare_data's resize_to). The sample's smallest
# crowns are 10 px; with P3 anchors 8 px apart such a box gets at most one anchor of IoU >= 0.5,
# and from random weights the model barely finds them (tree AP@0.5 0.66 after 10 epochs at 256 px).
# At 384 px they are 15 px: 7 epochs (about 1.2 times the training time of those 10) reach 0.79-0.84
# (benchmarks/demo_recipe.py, docs/performance.md). predict and detect_objects enlarge the imagery alike (model zoom).
TRAIN_PX = 384
HELD_BACK_PX = 512
# Objects cut by a chip edge are labelled in that chip when at least a quarter of them is inside,
# the same rule the training crops apply (geolearn.data.transforms.MIN_VISIBLE_FRACTION).
MIN_OVERLAP = 0.25


def find_sample_scene(explicit: Path | None, out: Path, echo: Callable[[str], None]) -> tuple[Path, Path]:
    """The sample scene's raster and labels: given, in ./sample_data, next to the package, or generated.

    Args:
        explicit: the folder the user named, or None to look in the usual places.
        out: the demo's output folder, where a generated scene goes.
        echo: reports that the scene is being generated.

    Returns:
        ``(raster, labels)`` paths.

    Raises:
        InputNotFoundError: ``explicit`` holds no sample scene.

    Examples:
        See :func:`run_demo`, which calls it.
    """
    from geolearn.sample.scene import make_scene

    candidates = [explicit] if explicit else [Path("sample_data"), Path(__file__).resolve().parents[2] / "sample_data"]
    for folder in candidates:
        raster, labels = folder / f"{SAMPLE_NAME}.tif", folder / f"{SAMPLE_NAME}_labels.gpkg"
        if raster.exists() and labels.exists():
            return raster, labels
    if explicit:
        raise InputNotFoundError(f"{explicit} holds no {SAMPLE_NAME}.tif and {SAMPLE_NAME}_labels.gpkg")
    # Installed without the repository's sample_data/: the generator is seeded, so this
    # writes the same scene as the one bundled with the source.
    echo("sample_data/ not found: generating the sample scene (seeded, same as the bundled one) ...")
    files = make_scene(out / "sample_data", seed=2026, name=SAMPLE_NAME)
    return files.raster, files.labels


def held_back(raster: Path) -> tuple[object, object]:
    """The demo's split of the scene: a mask for training chips, and a window held back for predict.

    The south-east corner of ``HELD_BACK_PX`` × ``HELD_BACK_PX`` pixels is never trained on:
    training chips come only from windows intersecting the mask.

    Raises:
        InvalidArgumentError: the raster is too small to hold a corner back.

    Examples:
        See :func:`run_demo`, which calls it.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.windows import Window
    from shapely.geometry import box

    with rasterio.open(raster) as src:
        if min(src.width, src.height) < HELD_BACK_PX + 2 * CHIP_PX:
            side = HELD_BACK_PX + 2 * CHIP_PX
            raise InvalidArgumentError(f"{raster} is {src.width} x {src.height} px; the demo needs at least "
                                       f"{side} x {side} px (it holds back a {HELD_BACK_PX} px corner).")
        # No chip window that touches the mask can reach the held-back corner: the mask stops
        # one chip width short of it.
        reserved = Window(src.width - HELD_BACK_PX - CHIP_PX, src.height - HELD_BACK_PX - CHIP_PX,
                          HELD_BACK_PX + CHIP_PX, HELD_BACK_PX + CHIP_PX)
        whole = box(*src.bounds)
        mask = gpd.GeoDataFrame(geometry=[whole.difference(box(*src.window_bounds(reserved)))], crs=src.crs)
        window = Window(src.width - HELD_BACK_PX, src.height - HELD_BACK_PX, HELD_BACK_PX, HELD_BACK_PX)
    return mask, window


def run_demo(out: str | Path, *, echo: Callable[[str], None], sample_data: str | Path | None = None,
             epochs: int = DEMO_EPOCHS, lr_find_batches: int = 50, seed: int = 0) -> None:
    """Runs the demo: export, prepare, train, evaluate, save, predict and detect on the sample scene.

    Args:
        out: the output folder (created; the demo's own files in it are replaced).
        echo: receives each line of the report (the CLI passes ``print``). Keyword only.
        sample_data: the folder holding the sample scene; None looks in ./sample_data, next to
            the package, or generates it.
        epochs: training epochs; 0 stops after ``show_batch``.
        lr_find_batches: batches the learning-rate finder tries.
        seed: seeds the network's random start, so that the figures repeat on one machine.

    Raises:
        InputNotFoundError: ``sample_data`` holds no sample scene.
        InvalidArgumentError: the scene is too small to hold a corner back.

    Examples:
        >>> run_demo("geolearn_demo", echo=print)  # doctest: +SKIP
        [ 0:00] 1/7 exporting training chips from sample_data/sample_scene.tif ...
    """
    import rasterio
    import torch

    from geolearn import RetinaNet, export_training_data, prepare_data
    from geolearn.viz import plot_scene_detections

    start = time.perf_counter()

    def step(text: str) -> None:
        """A step's line, after the minutes and seconds since the demo started: where the time goes."""
        minutes, seconds = divmod(int(time.perf_counter() - start), 60)
        echo(f"[{minutes:2d}:{seconds:02d}] {text}")

    def save(figure, path: Path) -> None:
        figure.savefig(path, dpi=100)
        echo(f"    wrote {path}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raster, labels = find_sample_scene(Path(sample_data) if sample_data else None, out, echo)
    mask, held_back_window = held_back(raster)
    step(f"1/7 exporting training chips from {raster} with labels {labels.name} "
          f"(a {HELD_BACK_PX} px corner is held back) ...")
    chips = export_training_data(
        str(raster),
        str(labels),
        chip_format="TIFF",
        tile_size={"x": CHIP_PX, "y": CHIP_PX},
        stride_size={"x": CHIP_PX // 2, "y": CHIP_PX // 2},
        metadata_format="PASCAL_VOC_rectangles",
        output_location=str(out / "chips"),
        input_mask_polygons=mask,
        min_polygon_overlap_ratio=MIN_OVERLAP,
        overwrite=True,  # the demo's own output folder
    )
    step(f"2/7 prepare_data({chips}, chip_size={TRAIN_PX}, resize_to={TRAIN_PX}) ...")
    data = prepare_data(chips, chip_size=TRAIN_PX, resize_to=TRAIN_PX, batch_size=8)
    echo(f"    classes {data.classes}, {len(data.train_ds)} training and {len(data.valid_ds)} validation chips")
    save(data.show_batch(rows=3), out / "show_batch.png")
    if epochs == 0:
        return

    step("3/7 RetinaNet(data, backbone='resnet18', scales='auto') and lr_find() ...")
    # From random weights a 7-epoch model's AP varies with its random start: seeded, a user's
    # figures repeat on the same machine (benchmarks/results/demo_recipe.jsonl has several seeds).
    torch.manual_seed(seed)
    model = RetinaNet(data, backbone="resnet18", scales="auto")
    lr = model.lr_find(allow_plot=False, num_it=lr_find_batches)
    save(model.lr_find_figure, out / "lr_find.png")
    echo(f"    anchors: scales {[round(s, 3) for s in model.scales]}, ratios {model.ratios}; lr_find chose {lr:.2e}")
    step(f"4/7 fit({epochs}) ...")
    model.fit(epochs, lr=lr)
    save(model.plot_losses(), out / "losses.png")
    step("5/7 average precision on the validation chips")
    for iou in (0.1, 0.5):
        scores = model.average_precision_score(detect_thresh=AP_DETECT_THRESH, iou_thresh=iou,
                                               nms_overlap=DENSE_NMS_OVERLAP, show_progress=False)
        echo(f"    AP@{iou}: " + ", ".join(f"{name} {value:.3f}" for name, value in scores.items()))
    folder = model.save(out / "model" / "sample_model")
    step(f"6/7 saved {folder}; RetinaNet.from_model(...).predict() on the held-back {HELD_BACK_PX} px window")
    loaded = RetinaNet.from_model(folder / "sample_model.dlpk")
    with rasterio.open(raster) as src:
        pixels = src.read(window=held_back_window).transpose(1, 2, 0)
    boxes, names, _ = loaded.predict(pixels, threshold=0.4, nms_overlap=DENSE_NMS_OVERLAP, visualize=True, batch_size=8)
    found = ", ".join(f"{names.count(c)} {c}" for c in loaded.config.classes[1:])
    echo(f"    found {found}")
    save(loaded.predict_figure, out / "predict_held_back.png")
    step(f"7/7 model.detect_objects() over the whole scene ({raster.name}) ...")
    detections = loaded.detect_objects(raster, out / "detections.gpkg", threshold=SCENE_THRESHOLD,
                                       nms_overlap=DENSE_NMS_OVERLAP, batch_size=8,
                                       overwrite=True)  # the demo's own output folder
    counts = detections["Class"].value_counts()
    echo("    found " + ", ".join(f"{counts.get(c, 0)} {c}" for c in loaded.config.classes[1:])
          + f" in {detections.crs}; wrote {out / 'detections.gpkg'}")
    save(plot_scene_detections(raster, detections), out / "detections.png")
    step("done")
