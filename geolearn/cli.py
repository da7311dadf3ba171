"""The ``geolearn`` command: a thin shell over the public API.

``geolearn demo`` runs the whole workflow on the bundled sample scene;
``geolearn export``, ``geolearn train`` and ``geolearn detect`` run its steps on your
data (``export_training_data``, ``prepare_data`` → ``RetinaNet`` → ``fit`` → ``save``,
``detect_objects``); ``geolearn export-onnx`` writes a model for ONNX Runtime and QGIS. Exit codes: 0 done, 2 bad input (the message says what to fix).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from geolearn.errors import GeolearnError, InputNotFoundError, InvalidArgumentError
from geolearn.inference import defaults
from geolearn.sample.demo import DEMO_EPOCHS

__all__ = ["main"]

def _demo(args: argparse.Namespace) -> int:
    from geolearn.sample.demo import run_demo

    try:
        run_demo(args.out, echo=lambda line: print(line, flush=True), sample_data=args.sample_data,
                 epochs=args.epochs, lr_find_batches=args.lr_find_batches, seed=args.seed)
    except (InputNotFoundError, InvalidArgumentError) as err:  # the sample scene itself: say so and stop
        raise SystemExit(f"geolearn demo: {err}") from None
    return 0


# ----------------------------------------------------------------------------- export / train / detect


def _fail(command: str, message: str) -> int:
    """Bad input found by the command itself: the message on stderr, exit code 2 (like argparse)."""
    print(f"geolearn {command}: error: {message}", file=sys.stderr)
    return 2


def _require_paths(**paths: str | None) -> None:
    """Missing input files are bad input (exit 2), named with the option that gave them."""
    from geolearn.errors import InputNotFoundError

    for what, path in paths.items():
        if path is not None and not Path(path).exists():
            raise InputNotFoundError(f"{what} {path}: no such file or folder.")


def _export(args: argparse.Namespace) -> int:
    from geolearn import export_training_data
    from geolearn.data.esri import read_map_txt

    _require_paths(RASTER=args.raster, LABELS=args.labels, **{"--mask": args.mask})
    stride = args.stride if args.stride is not None else args.chip_size // 2
    print(f"exporting {args.chip_size} x {args.chip_size} px chips every {stride} px from {args.raster} "
          f"with labels {args.labels} ...")
    try:
        out = export_training_data(
            args.raster,
            args.labels,
            chip_format=args.format,
            tile_size={"x": args.chip_size, "y": args.chip_size},
            stride_size={"x": stride, "y": stride},
            metadata_format=args.metadata,
            classvalue_field=args.classvalue_field,
            buffer_radius=args.buffer_radius,
            output_location=args.out,
            input_mask_polygons=args.mask,
            min_polygon_overlap_ratio=args.min_overlap,
            output_nofeature_tiles=args.background,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ValueError, NotImplementedError) as err:  # an option value the export cannot use
        return _fail("export", str(err))
    print(f"wrote {len(read_map_txt(out))} chips and their labels to {out} (train on it: geolearn train {out} --out MODEL)")
    return 0


def _check_model_folder(folder: Path, overwrite: bool) -> None:
    """Refuses, before hours of training, a model folder that save() would refuse afterwards."""
    from geolearn.errors import OutputExistsError

    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"--out {folder} is a file; give a folder for the model package.")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / f"{folder.name}.emd").exists():
            raise OutputExistsError(f"--out {folder} holds files that are not a geolearn model; give a new or empty "
                                    "folder.")
        if not overwrite:
            raise OutputExistsError(f"--out {folder} already holds a saved model; pass --overwrite to replace it.")


def _train(args: argparse.Namespace) -> int:
    from geolearn.learn import distributed

    if args.nproc > 1 and not distributed.launched():
        return _launch(args.argv, args.nproc)
    with distributed.quiet_unless_main():  # under a launcher, one report: rank 0's
        return _train_here(args)


def _launch(argv: list[str], processes: int) -> int:
    """``geolearn train --nproc N``: the same command in N processes on this machine, by torch's
    elastic launcher (``torchrun --standalone``), each with its share of the cores."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    print(f"starting {processes} training processes of {os.environ['OMP_NUM_THREADS']} threads each (torchrun)",
          flush=True)
    launcher = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(processes), "--module", "geolearn.cli"])
    launcher.training_script_args = list(argv)  # set after parsing: torchrun's parser would read --nproc as its own
    try:
        run(launcher)
    except ChildFailedError as err:  # each process has printed its own error
        rank, failure = err.get_first_failure()
        print(f"geolearn train: error: process {rank} of {processes} failed first (exit code {failure.exitcode}); "
              "its message is above.", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _train_here(args: argparse.Namespace) -> int:
    from geolearn import RetinaNet, prepare_data

    _require_paths(CHIPS=args.chips)
    folder = Path(args.out).resolve()
    _check_model_folder(folder, args.overwrite)
    print(f"1/5 prepare_data({args.chips}, chip_size={args.chip_size}, resize_to={args.resize_to}, "
          f"batch_size={args.batch_size}) ...")
    data = prepare_data(args.chips, chip_size=args.chip_size, resize_to=args.resize_to, batch_size=args.batch_size,
                        val_split_pct=args.val_split)
    print(f"    classes {data.classes[1:]}, {len(data.train_ds)} training and {len(data.valid_ds)} validation chips")
    auto = args.scales == "auto"
    print(f"2/5 RetinaNet(backbone={args.backbone!r}, scales={'auto' if auto else 'default'}) ...")
    model = RetinaNet(data, backbone=args.backbone, scales="auto" if auto else None, pretrained=args.pretrained)
    started = time.perf_counter()
    lr = args.lr
    if lr is None:
        lr = model.lr_find(allow_plot=False)
        print(f"    lr_find chose a learning rate of {lr:.2e}")
    if args.minutes is None:
        print(f"3/5 fit({args.epochs}, lr={lr:.2e}) ...")
        model.fit(args.epochs, lr=lr)
    else:
        budget = args.minutes * 60 - (time.perf_counter() - started)  # lr_find counts too
        print(f"3/5 fit({args.epochs}, lr={lr:.2e}, time_budget={budget:.0f}) ...")
        model.fit(args.epochs, lr=lr, time_budget=max(budget, 1.0))
    print("4/5 average precision on the validation chips")
    scores = model.average_precision_score(show_progress=not args.quiet)
    print("    " + ", ".join(f"{name} {value:.3f}" for name, value in scores.items()))
    print(f"    detection threshold {model.threshold:.2f} (best F1 on the validation chips; detect uses it)")
    saved = model.save(folder)  # the EMD records the average precision too, as arcgis.learn's does
    print(f"5/5 saved the model to {saved / (saved.name + '.dlpk')} (and its .emd, .pth, model_metrics.html)")
    return 0


def _detect(args: argparse.Namespace) -> int:
    from geolearn import detect_objects

    arguments = {"nms_overlap": args.nms_overlap, "merge": args.merge}
    if args.threshold is not None:
        arguments["threshold"] = args.threshold
    if args.padding is not None:
        arguments["padding"] = args.padding
    if args.batch_size is not None:
        arguments["batch_size"] = args.batch_size
    if args.compile:
        arguments["compiled"] = True
    client = None
    if args.scheduler:
        try:
            from distributed import Client
        except ImportError:
            return _fail("detect", "--scheduler needs Dask's distributed package: pip install 'geolearn[dask]'.")
        try:
            client = Client(args.scheduler, timeout=args.scheduler_timeout)
        except (OSError, TimeoutError) as err:
            return _fail("detect", f"cannot reach the Dask scheduler at {args.scheduler} ({err}); start one "
                                   "(dask scheduler) or check the address.")
        print(f"detecting on the Dask cluster at {args.scheduler} ({len(client.scheduler_info()['workers'])} workers)")
    try:
        found = detect_objects(args.rasters if len(args.rasters) > 1 else args.rasters[0], args.model, arguments,
                               output_name=args.out, run_nms=not args.no_nms,
                               max_overlap_ratio=args.max_overlap_ratio, client=client, overwrite=args.overwrite,
                               progress=not args.quiet)
    except ValueError as err:
        if isinstance(err, GeolearnError):
            raise
        return _fail("detect", str(err))  # an option value the model cannot use (--padding too large, ...)
    finally:
        if client is not None:
            client.close()
    counts = found["Class"].value_counts().sort_index() if len(found) else {}
    summary = ", ".join(f"{n} {name}" for name, n in counts.items()) or "no objects"
    out = Path(args.out)
    out = out if out.suffix else out.with_suffix(".gpkg")
    print(f"found {summary}; wrote {len(found)} features (fields Class, Confidence) in {found.crs} to {out}")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from geolearn import RetinaNet

    _require_paths(MODEL=args.model)
    model = RetinaNet.from_model(args.model)
    try:
        path = model.export_onnx(args.out, threshold=args.threshold, nms_overlap=args.nms_overlap,
                                 overwrite=args.overwrite)
    except ImportError as err:
        return _fail("export-onnx", str(err))
    except ValueError as err:
        if isinstance(err, GeolearnError):
            raise
        return _fail("export-onnx", str(err))
    print(f"wrote {path}: normalised chips in, boxes (cx, cy, w, h in input pixels) and class scores out; it opens "
          "in ONNX Runtime, and in QGIS Deepness as a Detector")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value



def _add_export(commands) -> None:
    export = commands.add_parser(
        "export",
        help="cut training chips and label files out of a raster and labelled polygons",
        description="Cuts a raster into square image chips and writes, for each chip, a label file with the boxes "
        "of the labelled objects inside it: what 'geolearn train' (and ArcGIS's Train Deep Learning Model) reads. "
        "Same as ArcGIS Pro's 'Export Training Data For Deep Learning' with the PASCAL VOC or KITTI rectangles "
        "metadata format. Labels in another CRS than the raster are reprojected.",
        epilog="Writes OUT/images/*.tif (chips), OUT/labels/*.xml (one per chip), OUT/map.txt, "
        "OUT/esri_model_definition.emd, OUT/esri_accumulated_stats.json and OUT/stats.txt.",
    )
    export.add_argument("raster", help="the image: GeoTIFF, VRT or any raster GDAL reads")
    export.add_argument("labels", help="the training samples: a vector file (GeoPackage, Shapefile, GeoJSON) of "
                        "polygons (or points/lines with --buffer-radius) with an integer class field")
    export.add_argument("out", help="output folder for the chips and labels")
    export.add_argument("--chip-size", type=_positive_int, default=256, metavar="PX",
                        help="chip width and height, in pixels (default 256)")
    export.add_argument("--stride", type=_positive_int, default=None, metavar="PX",
                        help="step between chips, in pixels (default: half the chip size, so chips overlap by half)")
    export.add_argument("--format", default="TIFF", choices=["TIFF", "PNG", "JPEG"],
                        help="chip image format (default TIFF: keeps every band, the data type and the georeferencing; "
                        "PNG and JPEG take 8-bit images of 1 or 3 bands)")
    export.add_argument("--metadata", default="PASCAL_VOC_rectangles",
                        choices=["PASCAL_VOC_rectangles", "KITTI_rectangles"],
                        help="label file format (default PASCAL_VOC_rectangles)")
    export.add_argument("--classvalue-field", default=None, metavar="FIELD",
                        help="integer class field of the labels (default: the field named Classvalue)")
    export.add_argument("--buffer-radius", type=_positive_float, default=None, metavar="DISTANCE",
                        help="for point or line labels: half the side of the box drawn around each, in the "
                        "raster CRS's map units (e.g. metres)")
    export.add_argument("--mask", default=None, metavar="POLYGONS", help="polygons (vector file): only chips touching them are written")
    export.add_argument("--min-overlap", type=_unit_float, default=0.0, metavar="RATIO",
                        help="share (0-1) of an object's area a chip must hold for the object to be labelled in "
                        "it (default 0: any part)")
    export.add_argument("--background", action="store_true",
                        help="also write chips without any object (with empty label files)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    export.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    export.set_defaults(run=_export)


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a RetinaNet object detector on exported chips and save it as a model package",
        description="Reads the chips of 'geolearn export' (or of ArcGIS Pro's export), trains a RetinaNet, "
        "prints the loss per epoch and the average precision per class on the held-out validation chips, and "
        "saves the model package ArcGIS Pro and 'geolearn detect' use.",
        epilog="Writes FOLDER/<name>.dlpk (the package to share or give to 'geolearn detect' and ArcGIS Pro's "
        "Detect Objects Using Deep Learning), FOLDER/<name>.emd, FOLDER/<name>.pth and FOLDER/model_metrics.html, "
        "where <name> is the folder's name.",
    )
    train.add_argument("chips", help="folder written by 'geolearn export' (images/, labels/, esri_model_definition.emd)")
    train.add_argument("--out", required=True, metavar="FOLDER", help="folder to save the model package in")
    train.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101",
                                                                  "resnet152"],
                       help="the network's feature extractor: resnet18 trains fastest, resnet50 (the default) is "
                       "arcgis.learn's")
    train.add_argument("--chip-size", type=_positive_int, default=224, metavar="PX",
                       help="side, in pixels, of the square the network sees; chips are cropped or padded to it "
                       "(default 224)")
    train.add_argument("--resize-to", type=_positive_int, default=None, metavar="PX",
                       help="enlarge (or shrink) every chip to this side before cropping, e.g. 384 for 256 px "
                       "chips of objects about 10 px across; detection then enlarges the imagery alike "
                       "(default: chips as exported)")
    train.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                       help="chips per training step; lower it when memory runs out (default 16)")
    train.add_argument("--epochs", type=_positive_int, default=10, metavar="N",
                       help="passes over the training chips (default 10)")
    train.add_argument("--minutes", type=_positive_float, default=None, metavar="M",
                       help="train for this many minutes (lr_find included), with the whole one-cycle schedule; "
                       "--epochs is then the most epochs (default: no time limit)")
    train.add_argument("--lr", type=_positive_float, default=None, metavar="RATE",
                       help="learning rate (default: chosen by a learning-rate range test, lr_find)")
    train.add_argument("--scales", choices=["auto", "default"], default="auto",
                       help="anchor box sizes and shapes: 'auto' fits them to the labelled boxes, 'default' uses "
                       "the RetinaNet paper's (default auto)")
    train.add_argument("--val-split", type=_unit_float, default=0.1, metavar="RATIO",
                       help="share (0-1) of the chips held out to measure the average precision (default 0.1)")
    train.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="start from ImageNet weights (downloaded once; without a connection training starts "
                       "from random weights; default --pretrained)")
    train.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                       help="train data-parallel in N processes on this machine (one per GPU, or CPU processes "
                       "sharing the cores); for several machines run torchrun yourself (docs/training.md) "
                       "(default 1)")
    train.add_argument("--overwrite", action="store_true", help="replace a model saved earlier in --out")
    train.add_argument("-q", "--quiet", action="store_true", help="fewer progress bars")
    train.set_defaults(run=_train)


def _add_detect(commands) -> None:
    detect = commands.add_parser(
        "detect",
        help="find objects in whole rasters with a trained model; write them as a GIS layer",
        description="Runs a trained model (.dlpk, .emd or model folder) over one or more rasters of any size, "
        "window by window, and writes one layer of boxes (polygons) in the CRS of the first raster, with the fields "
        "Class (class name) and Confidence (0-100), like ArcGIS Pro's Detect Objects Using Deep Learning. Several "
        "rasters (files, folders or quoted glob patterns such as 'tiles/*.tif') are merged into one layer: "
        "rasters in other CRSs are reprojected, and objects cut by the edge between two adjacent tiles are joined.",
        epilog="The output format follows the suffix of --out: .gpkg GeoPackage (also for a name without suffix), "
        ".geojson, .shp or .parquet (GeoParquet).",
    )
    detect.add_argument("rasters", nargs="+", metavar="RASTER",
                        help="raster file (GeoTIFF, VRT mosaic, ...), folder of rasters, or glob pattern")
    detect.add_argument("--model", required=True, metavar="MODEL", help="the trained model: .dlpk, .emd or its folder")
    detect.add_argument("--out", required=True, metavar="LAYER", help="output layer file, e.g. detections.gpkg")
    detect.add_argument("--threshold", type=_unit_float, default=None, metavar="SCORE",
                        help="lowest confidence (0-1) of a reported object (default: the threshold the model's "
                        f"training calibrated, else {defaults.THRESHOLD})")
    detect.add_argument("--nms-overlap", type=_unit_float, default=defaults.NMS_OVERLAP, metavar="IOU",
                        help="overlap (intersection over union, 0-1) above which two detections of a class in "
                        f"neighbouring windows are one object (default {defaults.NMS_OVERLAP})")
    detect.add_argument("--padding", type=_non_negative_int, default=None, metavar="PX",
                        help="pixels of context around each window; adjacent windows overlap by twice this "
                        "(default: an eighth of the model's chip size)")
    detect.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                        help=f"windows per forward pass (default {defaults.default_batch_size('cpu')} on a CPU, "
                        "where larger batches are no faster and take more memory; "
                        f"{defaults.default_batch_size('cuda')} on a GPU)")
    detect.add_argument("--merge", choices=["nms", "greedy"], default=defaults.MERGE,
                        help="how duplicates across windows are merged: 'nms' keeps the most confident box, "
                        f"'greedy' joins pieces of objects larger than the window overlap (default {defaults.MERGE})")
    detect.add_argument("--max-overlap-ratio", type=_unit_float, default=0.0, metavar="IOU",
                        help="final suppression over the whole layer: of two objects of a class overlapping more "
                        "than this (intersection over union, 0-1), the less confident is dropped. ArcGIS's default "
                        "0 allows no overlap; raise it (e.g. 0.5) for objects that overlap, like tree crowns")
    detect.add_argument("--no-nms", action="store_true", help="skip that final suppression")
    detect.add_argument("--compile", action="store_true",
                        help="run the network compiled by torch.compile (needs a C++ compiler): faster on large "
                        "rasters after a compilation of 10-60 s, cached on disk for the next run")
    detect.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="address of a Dask scheduler (e.g. tcp://10.0.0.5:8786) to detect the rasters on its "
                        "workers; the rasters and the model must be readable by the workers under the same paths")
    detect.add_argument("--scheduler-timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                        help="how long to wait for the Dask scheduler (default 30)")
    detect.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    detect.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    detect.set_defaults(run=_detect)


def _add_export_onnx(commands) -> None:
    onnx = commands.add_parser(
        "export-onnx",
        help="write a trained model as ONNX for ONNX Runtime and the QGIS Deepness plugin",
        description="Writes the network of a trained model (.dlpk, .emd or model folder) as one ONNX file: input "
        "'images', normalised chips float32 [batch, bands, chip, chip]; output 'detections' [batch, 4 + classes, "
        "anchors], per anchor the box centre and size in input pixels and the class scores (the layout of "
        "Ultralytics' YOLO). The file carries the metadata the QGIS Deepness plugin reads (model type, class names, "
        "tile size and overlap, standardisation, resolution, confidence and IoU thresholds).",
        epilog="Needs the onnx package: pip install 'geolearn[onnx]'. See docs/model-packages.md.",
    )
    onnx.add_argument("model", metavar="MODEL", help="the trained model: .dlpk, .emd or its folder")
    onnx.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    onnx.add_argument("--threshold", type=_unit_float, default=None, metavar="SCORE",
                      help="the confidence Deepness proposes (default: the threshold the model's training "
                      "calibrated, else 0.5)")
    onnx.add_argument("--nms-overlap", type=_unit_float, default=0.1, metavar="IOU",
                      help="the IoU threshold Deepness proposes (default 0.1)")
    onnx.add_argument("--overwrite", action="store_true", help="replace OUT.onnx if it exists")
    onnx.set_defaults(run=_export_onnx)


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
        "(lr_find.png, losses.png), prints its average precision per class, saves it (model/), predicts on "
        "a held-back corner (predict_held_back.png) and detects objects over the whole scene "
        "(detections.gpkg, detections.png).",
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
    demo.add_argument("--seed", type=int, default=0,
                      help="seeds the network's random start (default 0): the same seed gives the same figures "
                           "on the same machine; another seed shows how much they vary")
    demo.set_defaults(run=_demo)
    _add_export(commands)
    _add_train(commands)
    _add_detect(commands)
    _add_export_onnx(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geolearn`` console script; returns the exit code.

    Args:
        argv: the command line after ``geolearn`` (``["export", "scene.tif", ...]``); None reads
            ``sys.argv[1:]``.

    Returns:
        0 when the command is done; 2 for bad input, with a message on stderr that says what to fix.

    Examples:
        ``geolearn export scene.tif scene_labels.gpkg chips --chip-size 128 --stride 128 -q`` at a
        prompt is:

        >>> import tempfile
        >>> from geolearn.sample import make_scene
        >>> scene = make_scene(tempfile.mkdtemp(), size=512, seed=0)  # a 512 x 512 px GeoTIFF and its labels
        >>> folder = scene.raster.parent
        >>> main(["export", str(scene.raster), str(scene.labels), str(folder / "chips"),
        ...       "--chip-size", "128", "--stride", "128", "-q"])
        exporting 128 x 128 px chips every 128 px from .../scene.tif with labels .../scene_labels.gpkg ...
        wrote 8 chips and their labels to .../chips (train on it: geolearn train .../chips --out MODEL)
        0
        >>> main(["detect", str(folder / "missing.tif"), "--model", "model.dlpk", "--out", str(folder / "found.gpkg")])
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what `geolearn train --nproc` hands to the processes it starts
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
