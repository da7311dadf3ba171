"""Accuracy on real aerial imagery: geolearn's defaults against a bare torchvision loop, NEON tree crowns.

    python benchmarks/real_accuracy.py [--minutes 15] [--only geolearn|bare] [--set fit.lr=1e-3 ...]

One run, one table. The Yellowstone crop of ``../shared/data/neon/`` (0.1 m RGB, 574 hand-drawn
crowns) is split in space: the northern part (rows above ``--split``) is exported as training
chips (256 px, stride 128, as ArcGIS Pro's tool does by default), the southern part, beyond a
gap of ``--gap`` pixels, is never seen in training. Then, with the same chips and the same
wall-clock budget:

* **geolearn**: ``prepare_data(chips, chip_size=256, batch_size=8)``, ``RetinaNet(data,
  backbone='resnet18')`` (random weights: none can be downloaded here), ``fit(100,
  time_budget=...)`` with lr_find's choice (timed with it), then ``detect_objects`` over the
  held-back raster;
* **bare**: torchvision's ``RetinaNet`` on a ResNet-18 FPN from scratch (BatchNorm trained,
  P6/P7 from P5, torchvision's anchors, images kept at the chip size), bfloat16 autocast with
  channels_last, AdamW (lr 1e-3, weight decay 1e-4, 5 % linear warm-up then cosine by time),
  random horizontal and vertical flips, batch 8, every chip; run over the held-back raster with
  the same windows and merge as geolearn (the tiling is not what is compared).

Both are scored in map coordinates against the crowns of the held-back part (crowns with at least
half their area in it, clipped to it), and, out of site, over the whole OSBS plot (pine savanna,
true georeference). Scores: AP@0.4 and AP@0.5 (VOC all-point, detections with score >= 0.05),
recall at that score, precision/recall at the best F1 (IoU 0.4), and precision/recall of what
a user gets: the detections above the output threshold (geolearn: the model's ``threshold``,
which ``fit`` calibrates on the validation chips; bare: 0.5), from
:func:`geolearn.metrics.average_precision` and :func:`geolearn.metrics.precision_recall`.

``--set GROUP.NAME=VALUE`` changes one setting for the ablations of docs/training.md: GROUP is
``prepare`` (prepare_data), ``aug`` (default_batch_transforms), ``model`` (RetinaNet), ``loss``
(RetinaNetLoss), ``fit`` or ``detect`` (detect_objects); VALUE is
a Python literal. Results are appended to ``benchmarks/_work/real_accuracy/results.jsonl``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import torch
from rasterio.windows import Window
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from geolearn import export_training_data, prepare_data  # noqa: E402
from geolearn.data.dataset import ChipDataset  # noqa: E402
from geolearn.data.georef import detections_frame  # noqa: E402
from geolearn.data.transforms import default_batch_transforms  # noqa: E402
from geolearn.learn.retinanet import RetinaNet  # noqa: E402
from geolearn.metrics import average_precision, precision_recall  # noqa: E402
from geolearn.models.loss import RetinaNetLoss  # noqa: E402
from geolearn.models.postprocess import Detections  # noqa: E402
from geolearn.models.raster_detection import detect_raster  # noqa: E402

WORK = REPO / "benchmarks" / "_work" / "real_accuracy"
YELL = "yell_528000_4978000"
OSBS = "OSBS_029"
SCORE_THRESH = 0.05  # the lowest score kept for scoring: AP needs the whole ranking
# The output cut of the bare loop: 0.5, what a torchvision user (and arcgis.learn) keeps; geolearn's
# is the model's calibrated threshold.
BARE_THRESHOLD = 0.5
CHIP = 256


# ---------------------------------------------------------------------------------- data


def split_scene(neon: Path, split_row: int, gap: int) -> dict[str, Path]:
    """Writes the northern (training) and southern (held-back) parts of the Yellowstone crop."""
    out = WORK / f"split_{split_row}_{gap}"
    paths = {name: out / f"{name}.tif" for name in ("train", "test")}
    paths |= {f"{name}_crowns": out / f"{name}_crowns.gpkg" for name in ("train", "test")}
    if out.exists():
        return paths
    # Written into a temporary folder renamed at the end: a run killed half-way leaves no split
    # that a later run would take for complete.
    final, out = out, out.with_name(out.name + ".partial")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    paths = {name: out / path.name for name, path in paths.items()}
    crowns = gpd.read_file(neon / f"{YELL}_crowns.gpkg")
    with rasterio.open(neon / f"{YELL}.tif") as src:
        windows = {"train": Window(0, 0, src.width, split_row),
                   "test": Window(0, split_row + gap, src.width, src.height - split_row - gap)}
        for name, window in windows.items():
            profile = src.profile | {"height": window.height, "width": window.width,
                                     "transform": src.window_transform(window)}
            with rasterio.open(paths[name], "w", **profile) as dst:
                dst.write(src.read(window=window))
            area = shapely.box(*rasterio.windows.bounds(window, src.transform))
            inside = crowns[crowns.intersects(area)].copy()
            if name == "test":  # truth: crowns at least half inside, clipped to the part
                clipped = inside.geometry.intersection(area)
                inside = inside[clipped.area >= 0.5 * inside.geometry.area]
                inside["geometry"] = clipped[inside.index]
            inside.to_file(paths[f"{name}_crowns"], driver="GPKG")
    out.rename(final)
    return {name: final / path.name for name, path in paths.items()}


def export_chips(paths: dict[str, Path]) -> Path:
    out = paths["train"].parent / "chips"
    if not (out / "map.txt").exists():
        export_training_data(paths["train"], paths["train_crowns"], output_location=out, tile_size=CHIP,
                             stride_size=CHIP // 2, overwrite=True, progress=False)
    return out


def truth_boxes(crowns: Path) -> torch.Tensor:
    """``Tensor[N, 4]`` (minx, miny, maxx, maxy) in map units of the crowns' boxes."""
    return torch.tensor(gpd.read_file(crowns).geometry.bounds.to_numpy(), dtype=torch.float64)


# ---------------------------------------------------------------------------------- scoring


def score(frame: gpd.GeoDataFrame, truth: torch.Tensor, threshold: float) -> dict[str, float]:
    """AP@0.4, AP@0.5, recall, the best-F1 point, and precision/recall above ``threshold`` (the
    score cut the method hands its users), of detections against the truth, in map units."""
    boxes = torch.tensor(frame.geometry.bounds.to_numpy(), dtype=torch.float64).reshape(-1, 4)
    scores = torch.tensor(frame["Confidence"].to_numpy(dtype=np.float64) / 100)
    predictions = [(boxes, torch.ones(len(boxes), dtype=torch.long), scores)]
    targets = [(truth, torch.ones(len(truth), dtype=torch.long))]
    curve = precision_recall(predictions, targets, iou_thresh=0.4)
    f1, precision, recall, thresh = curve.best_f1()
    kept = int((curve.scores > threshold).sum())
    return {
        "ap40": average_precision(predictions, targets, iou_thresh=0.4).get(1, 0.0),
        "ap50": average_precision(predictions, targets, iou_thresh=0.5).get(1, 0.0),
        "recall": float(curve.recall[-1]) if len(curve.recall) else 0.0,
        "f1": f1, "precision_at_f1": precision, "recall_at_f1": recall, "thresh_at_f1": thresh,
        "detections": len(boxes), "crowns": len(truth), "threshold": threshold,
        "precision_at_threshold": float(curve.precision[kept - 1]) if kept else 0.0,
        "recall_at_threshold": float(curve.recall[kept - 1]) if kept else 0.0,
    }


# ---------------------------------------------------------------------------------- geolearn


def train_geolearn(chips: Path, seconds: float, settings: dict[str, dict]) -> tuple[RetinaNet, float]:
    start = time.perf_counter()
    prepare = {"chip_size": CHIP, "batch_size": 8} | settings["prepare"]
    if settings["aug"]:  # an ablation of the augmentations' strength
        prepare["transforms"] = default_batch_transforms(**settings["aug"])
    data = prepare_data(chips, **prepare)
    model = RetinaNet(data, **({"backbone": "resnet18"} | settings["model"]))
    if settings["loss"]:  # an ablation of the loss's settings
        model.loss_func = model.learn.loss_func = RetinaNetLoss(model.anchors, len(data.classes) - 1, **settings["loss"])
    model.fit(**({"epochs": 100, "time_budget": seconds - (time.perf_counter() - start)} | settings["fit"]))
    trained = time.perf_counter() - start
    print(f"geolearn: lr {model._lr:.3g}, {len(model.learn.recorder.values)} epochs in {trained:.0f} s")
    return model, trained


def detect_geolearn(model: RetinaNet, raster: Path, settings: dict) -> gpd.GeoDataFrame:
    return model.detect_objects(raster, **({"threshold": SCORE_THRESH, "progress": False} | settings))


# ---------------------------------------------------------------------------------- bare torchvision


def bare_model() -> nn.Module:
    from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d,
                                   trainable_layers=5, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))
    # min/max size = the chip: torchvision would otherwise enlarge every chip to 800 px.
    return TorchvisionRetinaNet(backbone, num_classes=2, min_size=CHIP, max_size=CHIP)


def train_bare(chips: Path, seconds: float, seed: int = 0) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    data = prepare_data(chips, chip_size=CHIP, batch_size=8, transforms=False)  # reads chips and labels only
    dataset = ChipDataset([*data.train_ds.images, *data.valid_ds.images], [*data.train_ds.labels, *data.valid_ds.labels],
                          data.classes, CHIP, data.normalization, train=True, seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True,
                                         collate_fn=lambda items: items)
    model = bare_model().train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    base_lr, warmup = 1e-3, 0.05
    start = time.perf_counter()
    done, steps, running = False, 0, 0.0
    while not done:
        for items in loader:
            progress = (time.perf_counter() - start) / seconds
            if progress >= 1:
                done = True
                break
            factor = progress / warmup if progress < warmup else 0.5 * (1 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = base_lr * max(factor, 1e-3)
            images, targets = [], []
            for image, unit_boxes, labels in items:
                image, boxes = image.as_subclass(torch.Tensor), (unit_boxes.as_subclass(torch.Tensor) + 1) * CHIP / 2
                if torch.rand(1) < 0.5:
                    image, boxes = image.flip(-1), boxes[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([CHIP, 0, CHIP, 0])
                if torch.rand(1) < 0.5:
                    image, boxes = image.flip(-2), boxes[:, [0, 3, 2, 1]] * torch.tensor([1, -1, 1, -1]) + torch.tensor([0, CHIP, 0, CHIP])
                images.append(image)
                targets.append({"boxes": boxes, "labels": labels.as_subclass(torch.Tensor)})
            loss = bare_loss(model, images, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            running = 0.98 * running + 0.02 * float(loss) if steps > 1 else float(loss)
            if steps % 50 == 0:
                print(f"bare: step {steps}, {progress:.0%} of the time, loss {running:.3f}", flush=True)
    return model, time.perf_counter() - start


def bare_loss(model: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
    """torchvision RetinaNet's training loss, the network in bfloat16 and the loss in float32.

    ``model(images, targets)`` under autocast would compute the focal loss in bfloat16 too, which
    loses the small probabilities it is made of (geolearn computes it in float32 for the same
    reason): these are the steps of torchvision's ``RetinaNet.forward`` in training, split there.
    """
    images, targets = model.transform(images, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = list(model.backbone(images.tensors.contiguous(memory_format=torch.channels_last)).values())
        head_outputs = model.head(features)
    head_outputs = {name: value.float() for name, value in head_outputs.items()}
    anchors = model.anchor_generator(images, [f.float() for f in features])
    losses = model.compute_loss(targets, head_outputs, anchors)
    return sum(losses.values())


def detect_bare(model: nn.Module, raster: Path, nms_overlap: float) -> gpd.GeoDataFrame:
    model.eval()
    model.score_thresh = SCORE_THRESH

    def run_batch(crops: torch.Tensor) -> list[Detections]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(list(crops))
        return [Detections(o["boxes"].float(), o["labels"], o["scores"].float()) for o in outputs]

    with torch.inference_mode():
        found = detect_raster(run_batch, raster, chip_size=CHIP, to_input=lambda pixels: pixels.float() / 255,
                              overlap=CHIP // 4, batch_size=2, nms_overlap=nms_overlap)
    return detections_frame(found.raster_boxes, found.labels, found.scores, ["background", "Tree"],
                            found.transform, found.crs)


# ---------------------------------------------------------------------------------- main


def parse_settings(pairs: list[str]) -> dict[str, dict]:
    settings: dict[str, dict] = {"prepare": {}, "aug": {}, "model": {}, "loss": {}, "fit": {}, "detect": {}}
    for pair in pairs:
        key, _, value = pair.partition("=")
        group, _, name = key.partition(".")
        if group not in settings or not name:
            raise SystemExit(f"--set {pair!r}: use GROUP.NAME=VALUE with GROUP one of {sorted(settings)}")
        try:
            settings[group][name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[group][name] = value
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neon", type=Path, default=REPO.parent / "shared" / "data" / "neon")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each method (lr_find included)")
    parser.add_argument("--split", type=int, default=1700, help="first row of the gap between train and test parts")
    parser.add_argument("--gap", type=int, default=64, help="rows between the train and test parts")
    parser.add_argument("--only", choices=["geolearn", "bare"], help="run one method")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="GROUP.NAME=VALUE")
    parser.add_argument("--label", default="", help="name of this run in results.jsonl")
    parser.add_argument("--nms", default="", help="also score these comma-separated nms_overlap values")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    settings = parse_settings(args.settings)
    torch.manual_seed(0)

    paths = split_scene(args.neon, args.split, args.gap)
    chips = export_chips(paths)
    sites = {"YELL held back": (paths["test"], truth_boxes(paths["test_crowns"])),
             "OSBS": (args.neon / f"{OSBS}.tif", truth_boxes(args.neon / f"{OSBS}_crowns.gpkg"))}
    seconds = args.minutes * 60
    rows = []
    if args.only != "bare":
        model, trained = train_geolearn(chips, seconds, settings)
        seconds = trained  # the bare loop gets the time geolearn took
        for site, (raster, truth) in sites.items():
            rows.append({"method": "geolearn", "site": site, "train_s": trained,
                         **score(detect_geolearn(model, raster, settings["detect"]), truth, model.threshold)})
            for nms in [float(v) for v in args.nms.split(",") if v]:
                rows.append({"method": f"geolearn nms {nms}", "site": site, "train_s": trained,
                             **score(detect_geolearn(model, raster, settings["detect"] | {"nms_overlap": nms}), truth,
                                     model.threshold)})
        if args.label:
            model.save(WORK / "models" / args.label, compute_metrics=False)
    if args.only != "geolearn":
        model, trained = train_bare(chips, seconds)
        for site, (raster, truth) in sites.items():
            nms = settings["detect"].get("nms_overlap", 0.5)  # torchvision's own default
            rows.append({"method": "bare torchvision", "site": site, "train_s": trained,
                         **score(detect_bare(model, raster, nms), truth, BARE_THRESHOLD)})
            for nms in [float(v) for v in args.nms.split(",") if v]:
                rows.append({"method": f"bare nms {nms}", "site": site, "train_s": trained,
                             **score(detect_bare(model, raster, nms), truth, BARE_THRESHOLD)})

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; settings {settings}")
    header = f"{'method':<17} {'site':<14} {'train s':>7} {'AP@0.4':>7} {'AP@0.5':>7} {'recall':>6} " \
             f"{'P@F1':>5} {'R@F1':>5} {'thr':>5} {'det':>5} {'crowns':>6} {'out thr':>7} {'P':>5} {'R':>5}"
    print(header)
    for r in rows:
        print(f"{r['method']:<17} {r['site']:<14} {r['train_s']:7.0f} {r['ap40']:7.3f} {r['ap50']:7.3f} "
              f"{r['recall']:6.3f} {r['precision_at_f1']:5.2f} {r['recall_at_f1']:5.2f} {r['thresh_at_f1']:5.2f} "
              f"{r['detections']:5d} {r['crowns']:6d} {r['threshold']:7.2f} {r['precision_at_threshold']:5.2f} "
              f"{r['recall_at_threshold']:5.2f}")
    by_site = {(r["method"], r["site"]): r["ap40"] for r in rows}
    for site in sites:
        if ("geolearn", site) in by_site and ("bare torchvision", site) in by_site:
            bare = by_site[("bare torchvision", site)]
            ratio = by_site[("geolearn", site)] / bare if bare > 0 else float("inf")
            print(f"{site}: geolearn / bare AP@0.4 = {ratio:.2f}")
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "results.jsonl", "a") as out:
        out.write(json.dumps({"label": args.label, "settings": settings, "minutes": args.minutes, "rows": rows,
                              "time": time.strftime("%Y-%m-%d %H:%M")}) + "\n")


if __name__ == "__main__":
    main()
