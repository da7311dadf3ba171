"""The ``geolearn`` command: a thin shell over the public API.

``geolearn demo`` runs the workflow on the bundled sample scene (today: export
chips → ``prepare_data`` → ``show_batch`` PNG; later issues add training,
evaluation, saving and detection to the same command).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Sequence

from geolearn.errors import GeolearnError

__all__ = ["main"]

SAMPLE_NAME = "sample_scene"
DEMO_EPOCHS = 20
# Crowns in a stand touch: their boxes overlap by more than arcgis.learn's NMS default (0.1).
DENSE_NMS_OVERLAP = 0.5
# AP ranks detections by score; a high threshold would cut the precision-recall curve short
# (PASCAL VOC and COCO score every detection the model makes; 0.05 is torchvision's floor).
AP_DETECT_THRESH = 0.05
CHIP_PX = 256
HELD_BACK_PX = 512
# Objects cut by a chip edge are labelled in that chip when at least a quarter of them is inside,
# the same rule the training crops apply (geolearn.data.transforms.MIN_VISIBLE_FRACTION).
MIN_OVERLAP = 0.25


def _find_sample_scene(explicit: Path | None, out: Path) -> tuple[Path, Path]:
    """The sample scene's raster and labels: given, in ./sample_data, next to the package, or generated."""
    from geolearn.data.synthetic import make_scene

    candidates = [explicit] if explicit else [Path("sample_data"), Path(__file__).resolve().parents[1] / "sample_data"]
    for folder in candidates:
        raster, labels = folder / f"{SAMPLE_NAME}.tif", folder / f"{SAMPLE_NAME}_labels.gpkg"
        if raster.exists() and labels.exists():
            return raster, labels
    if explicit:
        raise SystemExit(f"geolearn demo: {explicit} holds no {SAMPLE_NAME}.tif and {SAMPLE_NAME}_labels.gpkg")
    # Installed without the repository's sample_data/: the generator is seeded, so this
    # writes the same scene as the one bundled with the source.
    print("sample_data/ not found: generating the sample scene (seeded, same as the bundled one) ...")
    files = make_scene(out / "sample_data", seed=2026, name=SAMPLE_NAME)
    return files.raster, files.labels


def _held_back(raster: Path) -> tuple[object, object]:
    """The demo's split of the scene: a mask for training chips, and a window held back for predict.

    The south-east corner of ``HELD_BACK_PX`` × ``HELD_BACK_PX`` pixels is never trained on:
    training chips come only from windows intersecting the mask.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.windows import Window
    from shapely.geometry import box

    with rasterio.open(raster) as src:
        if min(src.width, src.height) < HELD_BACK_PX + 2 * CHIP_PX:
            side = HELD_BACK_PX + 2 * CHIP_PX
            raise SystemExit(f"geolearn demo: {raster} is {src.width} x {src.height} px; the demo needs at least "
                             f"{side} x {side} px (it holds back a {HELD_BACK_PX} px corner).")
        # No chip window that touches the mask can reach the held-back corner: the mask stops
        # one chip width short of it.
        reserved = Window(src.width - HELD_BACK_PX - CHIP_PX, src.height - HELD_BACK_PX - CHIP_PX,
                          HELD_BACK_PX + CHIP_PX, HELD_BACK_PX + CHIP_PX)
        whole = box(*src.bounds)
        mask = gpd.GeoDataFrame(geometry=[whole.difference(box(*src.window_bounds(reserved)))], crs=src.crs)
        window = Window(src.width - HELD_BACK_PX, src.height - HELD_BACK_PX, HELD_BACK_PX, HELD_BACK_PX)
    return mask, window


def _demo(args: argparse.Namespace) -> int:
    import rasterio

    from geolearn import RetinaNet, export_training_data, prepare_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raster, labels = _find_sample_scene(Path(args.sample_data) if args.sample_data else None, out)
    mask, held_back = _held_back(raster)
    print(f"1/6 exporting training chips from {raster} with labels {labels.name} "
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
    print(f"2/6 prepare_data({chips}) ...")
    data = prepare_data(chips, chip_size=CHIP_PX, batch_size=8)
    print(f"    classes {data.classes}, {len(data.train_ds)} training and {len(data.valid_ds)} validation chips")
    _save(data.show_batch(rows=3), out / "show_batch.png")
    if args.epochs == 0:
        return 0

    print("3/6 RetinaNet(data, backbone='resnet18', scales='auto') and lr_find() ...")
    model = RetinaNet(data, backbone="resnet18", scales="auto")
    lr = model.lr_find(allow_plot=False, num_it=args.lr_find_batches)
    _save(model.lr_find_figure, out / "lr_find.png")
    print(f"    anchors: scales {[round(s, 3) for s in model.scales]}, ratios {model.ratios}; lr_find chose {lr:.2e}")
    print(f"4/6 fit({args.epochs}) ...")
    model.fit(args.epochs, lr=lr)
    _save(model.plot_losses(), out / "losses.png")
    print("5/6 average precision on the validation chips")
    for iou in (0.1, 0.5):
        scores = model.average_precision_score(detect_thresh=AP_DETECT_THRESH, iou_thresh=iou,
                                               nms_overlap=DENSE_NMS_OVERLAP, show_progress=False)
        print(f"    AP@{iou}: " + ", ".join(f"{name} {value:.3f}" for name, value in scores.items()))
    folder = model.save(out / "model" / "sample_model")
    print(f"6/6 saved {folder}; RetinaNet.from_model(...).predict() on the held-back {HELD_BACK_PX} px window")
    loaded = RetinaNet.from_model(folder / "sample_model.dlpk")
    with rasterio.open(raster) as src:
        pixels = src.read(window=held_back).transpose(1, 2, 0)
    boxes, names, _ = loaded.predict(pixels, threshold=0.4, nms_overlap=DENSE_NMS_OVERLAP, visualize=True, batch_size=8)
    found = ", ".join(f"{names.count(c)} {c}" for c in loaded._facts.classes[1:])
    print(f"    found {found}")
    _save(loaded.predict_figure, out / "predict_held_back.png")
    return 0


def _save(figure, path: Path) -> None:
    figure.savefig(path, dpi=100)
    print(f"    wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geolearn",
        description="Find objects in aerial and satellite imagery (an open arcgis.learn RetinaNet workflow).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what geolearn does")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the workflow on the bundled sample scene",
        description="Exports training chips from the sample scene (a synthetic 0.3 m aerial image with "
        "pools and trees), prepares them for training (show_batch.png), trains a RetinaNet "
        "(lr_find.png, losses.png) and prints its average precision per class.",
    )
    demo.add_argument("--out", default="geolearn_demo", help="output folder (default: ./geolearn_demo)")
    demo.add_argument(
        "--sample-data",
        default=None,
        help="folder holding sample_scene.tif and sample_scene_labels.gpkg (default: ./sample_data)",
    )
    demo.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                      help=f"training epochs (default {DEMO_EPOCHS}; 0 stops after show_batch)")
    demo.add_argument("--lr-find-batches", type=int, default=50, help="batches the learning-rate finder tries")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geolearn`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    # Library deprecation chatter (fastai's import of torch.jit.script) is noise to a GIS analyst at a prompt.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except GeolearnError as err:  # bad input: the message says what to fix, a traceback would not help
        print(f"geolearn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
