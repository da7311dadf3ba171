"""Accuracy on real aerial imagery: geolearn's defaults against a bare torchvision loop, NEON tree crowns.

    python benchmarks/real_accuracy.py [--epochs 30 | --screen | --minutes 15] [--only geolearn|bare]
                                       [--set fit.lr=1e-3 ...] [--label NAME]
    python benchmarks/real_accuracy.py --table          # the committed log as Markdown

One run, one table, one record per method appended to the committed log
``benchmarks/results/real_accuracy.jsonl``. The Yellowstone crop of ``../shared/data/neon/`` (0.1 m
RGB, 574 hand-drawn crowns) is split in space: the northern part (rows above ``--split``) is
exported as training chips (256 px, stride 128, as ArcGIS Pro's tool does by default), the
southern part, beyond a gap of ``--gap`` pixels, is never seen in training. Then, with the same
chips and the same budget (epochs, or wall-clock minutes with ``--minutes``):

* **geolearn**: ``prepare_data(chips, chip_size=256, batch_size=8)``, ``RetinaNet(data,
  backbone='resnet18')`` (random weights: none can be downloaded here), ``fit(epochs)`` with
  lr_find's choice, then ``detect_objects`` over each site;
* **bare**: torchvision's ``RetinaNet`` on a ResNet-18 FPN from scratch (BatchNorm trained,
  P6/P7 from P5, torchvision's anchors, images kept at the chip size), bfloat16 autocast with
  channels_last, AdamW (lr 1e-3, weight decay 1e-4, 5 % linear warm-up then cosine), random
  horizontal and vertical flips, batch 8, geolearn's training chips; run over each site with the
  same windows, NMS (0.1 in each window and across them) and merge as geolearn, and its output
  threshold calibrated on geolearn's validation chips by geolearn's rule (the tiling, the NMS and
  the threshold rule are not what is compared). Its records made before commit 60a449a trained
  it on every chip and kept torchvision's NMS 0.5 and a fixed threshold of 0.5.

Sites, scored in map coordinates: **YELL held back** (the crowns of the held-back part with at
least half their area in it, clipped to it; the same forest, another place), **OSBS** (another
site: pine savanna, true georeference) and **SOAP** (a third site, mixed forest, a PASCAL VOC
plot whose ``Alive`` and ``Dead`` crowns are one tree class, written as a GeoTIFF at NEON's
0.1 m on a made-up origin). Scores: AP@0.4 and AP@0.5 (VOC all-point, detections with score >=
0.05), recall at that score, precision/recall at the best F1 (IoU 0.4), and precision/recall of
what a user gets: the detections above the output threshold (geolearn: the model's
``threshold``, which ``fit`` calibrates on the validation chips; bare: the same rule), from
:func:`geolearn.metrics.average_precision` and :func:`geolearn.metrics.precision_recall`.

Recipes are compared by **epochs** (``--epochs``, default 30: a full run); the CPU changes
between sessions and its bfloat16 speed with it, so training seconds are logged beside, not used
as the budget. ``--screen`` is the quick setting (``SCREEN_EPOCHS`` epochs, under ~6 minutes on 2
cores) for sorting out candidates before full runs; benchmarks/README.md records how its ranking
compared with full runs.

``--set GROUP.NAME=VALUE`` changes one setting for the ablations of docs/training.md: GROUP is
``export`` (``tile_size``: the chips' side, exported every half chip; geolearn only), ``prepare`` (prepare_data), ``aug`` (default_batch_transforms), ``model`` (RetinaNet), ``loss``
(RetinaNetLoss), ``fit`` or ``detect`` (detect_objects); VALUE is a Python literal. ``--from-model LABEL``
trains nothing: it scores the model that the run logged as LABEL saved once more, with the
``detect`` settings given, so that detection-time levers (NMS, test-time augmentation) are
measured on the weights of their baseline row. ``--set detect.match_statistics=True`` gives each
site's raster the band means and standard deviations of the training part first;
``--set aug.standardize=True`` standardises every chip and window by its own band statistics;
``--set detect.adapt_batchnorm=True`` re-estimates the network's BatchNorm statistics on each
site's raster before detecting there (AdaBN). Each log
record holds the label, the settings changed, the budget and the epochs trained, the training
seconds, the CPU model, the git commit and the command, and per site the scores above.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import re
import shlex
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
from fastai.vision.all import TensorImage, Transform
from rasterio.windows import Window
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))  # runlog, beside this script

import runlog  # noqa: E402

from geolearn import export_training_data, prepare_data  # noqa: E402
from geolearn.data.dataset import ChipDataset  # noqa: E402
from geolearn.data.georef import detections_frame  # noqa: E402
from geolearn.data.labels import read_voc  # noqa: E402
from geolearn.data.normalization import Normalization  # noqa: E402
from geolearn.data.transforms import default_batch_transforms  # noqa: E402
from geolearn.learn.retinanet import RetinaNet  # noqa: E402
from geolearn.learn.training import CALIBRATION_FLOOR, CALIBRATION_IOU  # noqa: E402
from geolearn.metrics import average_precision, precision_recall  # noqa: E402
from geolearn.models.loss import RetinaNetLoss  # noqa: E402
from geolearn.models.postprocess import Detections  # noqa: E402
from geolearn.inference.raster import detect_raster  # noqa: E402

WORK = REPO / "benchmarks" / "_work" / "real_accuracy"
RESULTS = REPO / "benchmarks" / "results" / "real_accuracy.jsonl"  # committed: every run's record
YELL = "yell_528000_4978000"
OSBS = "OSBS_029"
SOAP = "SOAP_061"
SOAP_CRS, SOAP_RESOLUTION = "EPSG:32611", 0.1  # NEON's UTM zone for SOAP and its 0.1 m orthophotos
FULL_EPOCHS = 30  # the yardstick for a full run
SCREEN_EPOCHS = 8  # a screen: under ~6 minutes on 2 AMD EPYC cores, lr_find and scoring included
SCORE_THRESH = 0.05  # the lowest score kept for scoring: AP needs the whole ranking
# geolearn's NMS in and across windows (detect_objects' default), given to the bare loop too.
NMS_OVERLAP = 0.1
DATA_SEED = 42  # prepare_data's default seed: the split, the crops, the shuffle order
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


def export_chips(paths: dict[str, Path], tile_size: int = CHIP) -> Path:
    """The training part's chips, ``tile_size`` px every half chip (as Pro's tool does); made once."""
    out = paths["train"].parent / ("chips" if tile_size == CHIP else f"chips-{tile_size}")
    if not (out / "map.txt").exists():
        export_training_data(paths["train"], paths["train_crowns"], output_location=out, tile_size=tile_size,
                             stride_size=tile_size // 2, overwrite=True, progress=False)
    return out


def truth_boxes(crowns: Path) -> torch.Tensor:
    """``Tensor[N, 4]`` (minx, miny, maxx, maxy) in map units of the crowns' boxes."""
    return torch.tensor(gpd.read_file(crowns).geometry.bounds.to_numpy(), dtype=torch.float64)


def soap_site(neon: Path) -> tuple[Path, torch.Tensor]:
    """The SOAP plot as a GeoTIFF (0.1 m, made-up origin) and its crowns' map boxes, one class.

    The VOC folder has pixels and pixel boxes only; ``detect_objects`` works in map units, so the
    plot gets NEON's resolution on an origin at (0, height · 0.1) and the boxes the same affine.
    """
    image = neon / "soap_voc" / "images" / f"{SOAP}.png"
    out = WORK / "soap" / f"{SOAP}.tif"
    with rasterio.open(image) as src:
        pixels = src.read()
    transform = rasterio.transform.from_origin(0, pixels.shape[1] * SOAP_RESOLUTION, SOAP_RESOLUTION, SOAP_RESOLUTION)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial.tif")
        with rasterio.open(partial, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                           count=pixels.shape[0], dtype=pixels.dtype, crs=SOAP_CRS, transform=transform) as dst:
            dst.write(pixels)
        partial.rename(out)
    boxes = read_voc(neon / "soap_voc" / "labels" / f"{SOAP}.xml").chip_boxes.double()  # Alive and Dead alike
    xs, ys = rasterio.transform.xy(transform, boxes[:, [1, 3]].flatten(), boxes[:, [0, 2]].flatten(), offset="ul")
    xs, ys = torch.tensor(xs).reshape(-1, 2), torch.tensor(ys).reshape(-1, 2)
    return out, torch.stack([xs[:, 0], ys[:, 1], xs[:, 1], ys[:, 0]], dim=1)


def band_moments(raster: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of a raster's pixels, ``([B], [B])``."""
    with rasterio.open(raster) as src:
        return pixel_moments(src.read())


def pixel_moments(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of ``[B, H, W]`` pixels, ``([B], [B])``."""
    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    return flat.mean(1), flat.std(1)


def matched(raster: Path, reference: Path) -> Path:
    """A copy of ``raster`` whose bands have ``reference``'s mean and standard deviation: the
    lever "match a new raster's statistics to the training ones at detect time" done before
    detection, so that it can be measured before it becomes an option of ``detect_objects``."""
    out = WORK / "matched" / f"{raster.stem}_to_{reference.parent.name}_{reference.stem}.tif"
    if out.exists():
        return out
    with rasterio.open(raster) as src:
        profile, pixels = src.profile, src.read().astype(np.float64)
    (mean, std), (ref_mean, ref_std) = pixel_moments(pixels), band_moments(reference)
    shifted = (pixels - mean[:, None, None]) * (ref_std / std)[:, None, None] + ref_mean[:, None, None]
    info = np.iinfo(profile["dtype"]) if np.issubdtype(profile["dtype"], np.integer) else None
    if info is not None:
        shifted = np.clip(np.rint(shifted), info.min, info.max)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.tif")
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(shifted.astype(profile["dtype"]))
    partial.rename(out)
    return out


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


def train_geolearn(chips: Path, budget: dict, settings: dict[str, dict]) -> tuple[RetinaNet, float, int]:
    """geolearn trained as a user would: ``fit(epochs)`` with lr_find's rate (``budget``:
    ``{"epochs": N}``, or ``{"minutes": M}``: ``fit(100, time_budget=...)``, lr_find timed with it)."""
    start = time.perf_counter()
    prepare = {"chip_size": settings["export"].get("tile_size", CHIP), "batch_size": 8} | settings["prepare"]
    aug = dict(settings["aug"])
    standardize = aug.pop("standardize", False)
    if aug:  # an ablation of the augmentations' strength
        prepare["transforms"] = default_batch_transforms(**aug)
    if standardize:  # every chip standardised by its own band statistics, in training and validation
        prepare["transforms"] = (prepare.get("transforms", default_batch_transforms()) + [StandardizeChip()],
                                 [StandardizeChip()])
    data = prepare_data(chips, **prepare)
    model = RetinaNet(data, **({"backbone": "resnet18"} | settings["model"]))
    if settings["loss"]:  # an ablation of the loss's settings
        model.loss_func = model.learn.loss_func = RetinaNetLoss(model.anchors, len(data.classes) - 1, **settings["loss"])
    if "epochs" in budget:
        fit = {"epochs": budget["epochs"]}
    else:
        fit = {"epochs": 100, "time_budget": budget["minutes"] * 60 - (time.perf_counter() - start)}
    model.fit(**(fit | settings["fit"]))
    trained = time.perf_counter() - start
    epochs = len(model.learn.recorder.values)
    print(f"geolearn: lr {model.config.learning_rate:.3g}, {epochs} epochs in {trained:.0f} s")
    if standardize:  # and every window at detection time: the same weights, a normalisation that standardises
        norm = StandardizedNormalization(**dataclasses.asdict(model.config.normalization))
        model = RetinaNet.from_config(model.config.replace(normalization=norm), weights=model.model.state_dict())
    return model, trained, epochs


class StandardizeChip(Transform):
    """Per-chip standardisation, the normalisation lever: after ``Normalize`` (order 99), each
    chip's bands are shifted and scaled to mean 0 and standard deviation 1 over the chip, so
    that a brighter or flatter raster looks like the training one. Measured here before it
    becomes a normalisation of the package (a saved model does not know about it: runs with it
    are not rescored with ``--from-model``)."""

    order = 100

    @staticmethod
    def standardize(images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → each image's bands at mean 0, std 1."""
        flat = images.flatten(2)
        mean, std = flat.mean(-1)[..., None, None], flat.std(-1)[..., None, None]
        return (images - mean) / (std + 1e-6)

    def encodes(self, images: TensorImage) -> TensorImage:
        return TensorImage(self.standardize(images.as_subclass(torch.Tensor)))


@dataclasses.dataclass(frozen=True)
class StandardizedNormalization(Normalization):
    """The model's normalisation followed by :class:`StandardizeChip`'s, for an image or a batch of windows."""

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        normalised = super().normalize(raw)
        if normalised.ndim == 3:
            return StandardizeChip.standardize(normalised[None])[0]
        return StandardizeChip.standardize(normalised)


def detect_geolearn(model: RetinaNet, raster: Path, settings: dict) -> gpd.GeoDataFrame:
    settings = dict(settings)
    if not settings.pop("adapt_batchnorm", False):
        return model.detect_objects(raster, **({"threshold": SCORE_THRESH, "progress": False} | settings))
    trained = {name: value.clone() for name, value in model.model.state_dict().items()}
    try:
        adapt_batchnorm(model, raster)
        return model.detect_objects(raster, **({"threshold": SCORE_THRESH, "progress": False} | settings))
    finally:
        model.model.load_state_dict(trained)


def adapt_batchnorm(model: RetinaNet, raster: Path) -> None:
    """The lever "BatchNorm statistics of the new place" (AdaBN, Li et al. 2016): every BatchNorm
    layer's running mean and variance re-estimated from the raster's own windows (a cumulative
    average over non-overlapping chip-sized windows, no labels, no weights changed), so that a
    brighter or differently textured site is normalised by its own statistics inside the network
    too. Measured here before it becomes an option of ``detect_objects``."""
    size = model.config.chip_size
    with rasterio.open(raster) as src:
        pixels = torch.from_numpy(src.read())
    height, width = pixels.shape[-2:]
    starts = lambda n: sorted({*range(0, max(n - size, 0) + 1, size), max(n - size, 0)})  # noqa: E731
    windows = torch.stack([pixels[:, y:y + size, x:x + size] for y in starts(height) for x in starts(width)])
    norms = [m for m in model.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch below
    model.model.eval()
    for norm in norms:
        norm.train()
    with torch.no_grad():
        for batch in windows.split(8):
            model.model(model.config.normalization.normalize(batch))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.model.eval()


def saved_geolearn(label: str, settings: dict[str, dict]) -> tuple[RetinaNet, float, int, dict]:
    """The model the logged geolearn run ``label`` saved, its training seconds and epochs, and
    its settings with ``settings["detect"]`` added: the levers that act at detection time are
    measured on the very weights their baseline row was measured on."""
    trained = [r for r in read_log() if r["label"] == label and r["method"] == "geolearn"
               and "detect" not in r["changed"]]
    emd = WORK / "models" / label / f"{label}.emd"
    if not trained or not emd.exists():
        raise SystemExit(f"--from-model {label}: no logged geolearn run of that label with its model at {emd}; "
                         "run with --label first.")
    record = trained[-1]
    if record["changed"].get("aug", {}).get("standardize"):
        raise SystemExit(f"--from-model {label}: its chips were standardised one by one, which the saved model "
                         "does not know; rescore it in a run that trains it.")
    model = RetinaNet.from_model(emd)
    changed = record["changed"] | ({"detect": settings["detect"]} if settings["detect"] else {})
    return model, record["train_s"], record["epochs"], changed


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


def train_bare(chips: Path, budget: dict, seed: int = 0) -> tuple[nn.Module, float, float, float]:
    """The bare loop for ``budget`` (``{"epochs": N}`` or ``{"seconds": S}``); returns the
    model, the training seconds, the epochs trained (fractional when stopped by time) and its
    output threshold.

    Fair to it: it trains on geolearn's training chips, and its threshold is the one geolearn's
    ``fit`` would set, the best-F1 cut on the same validation chips (:func:`calibrate_bare`);
    a fixed 0.5 kept nothing of a model whose scores never reach it."""
    torch.manual_seed(seed)
    # Reads chips and labels only; the same train/validation split as geolearn's run of this seed.
    data = prepare_data(chips, chip_size=CHIP, batch_size=8, transforms=False, seed=DATA_SEED + seed)
    dataset = ChipDataset(data.train_ds.images, data.train_ds.labels, data.classes, CHIP, data.normalization,
                          train=True, seed=seed, sizes=data.train_ds.sizes)  # the headers prepare_data read
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True,
                                         collate_fn=lambda items: items)
    model = bare_model().train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    base_lr, warmup = 1e-3, 0.05
    total_steps = budget["epochs"] * len(loader) if "epochs" in budget else None
    start = time.perf_counter()
    done, steps, running = False, 0, 0.0
    while not done:
        for items in loader:
            if total_steps is None:
                progress = (time.perf_counter() - start) / budget["seconds"]
            else:
                progress = steps / total_steps
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
                print(f"bare: step {steps}, {progress:.0%} of the budget, loss {running:.3f}", flush=True)
    trained = time.perf_counter() - start
    return model, trained, steps / len(loader), calibrate_bare(model, data.valid_ds)


def calibrate_bare(model: nn.Module, valid: ChipDataset) -> float:
    """The bare model's output threshold by geolearn's rule (:func:`geolearn.learn.training.calibrate_threshold`):
    detections down to ``CALIBRATION_FLOOR`` with NMS ``NMS_OVERLAP`` on the validation chips, matched at
    ``CALIBRATION_IOU``, cut at the best F1; 0.5 when it finds nothing."""
    model.eval()
    model.score_thresh, model.nms_thresh = CALIBRATION_FLOOR, NMS_OVERLAP
    predictions, targets = [], []
    with torch.inference_mode():
        for image, unit_boxes, labels in (valid[i] for i in range(len(valid))):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                (found,) = model([image.as_subclass(torch.Tensor)])
            predictions.append((found["boxes"].float(), found["labels"], found["scores"].float()))
            targets.append(((unit_boxes.as_subclass(torch.Tensor) + 1) * CHIP / 2, labels.as_subclass(torch.Tensor)))
    curve = precision_recall(predictions, targets, iou_thresh=CALIBRATION_IOU, cls=None)
    cut = curve.best_f1_cut(floor=CALIBRATION_FLOOR)
    return 0.5 if cut is None else cut


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
    """The bare model over a raster with geolearn's windows and merge; ``nms_overlap`` inside each
    window (torchvision's ``nms_thresh``) and across windows, as geolearn uses its own."""
    model.eval()
    model.score_thresh, model.nms_thresh = SCORE_THRESH, nms_overlap

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
    settings: dict[str, dict] = {"export": {}, "prepare": {}, "aug": {}, "model": {}, "loss": {}, "fit": {}, "detect": {}}
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


def site_metrics(row: dict) -> dict[str, float]:
    """The figures of one site that the log keeps, rounded to what one run can tell apart."""
    keep = ("ap40", "ap50", "recall", "f1", "precision_at_f1", "recall_at_f1", "thresh_at_f1",
            "precision_at_threshold", "recall_at_threshold", "threshold")
    return {k: round(float(row[k]), 4) for k in keep} | {"detections": row["detections"], "crowns": row["crowns"]}


def read_log(path: Path = RESULTS) -> list[dict]:
    return runlog.read(path)


SITES = ("YELL held back", "OSBS", "SOAP")
DOCS_BEGIN, DOCS_END = "<!-- real_accuracy table: begin -->", "<!-- real_accuracy table: end -->"


def describe(changed: dict[str, dict]) -> str:
    return "; ".join(f"{group}.{name}={value!r}" for group, values in changed.items()
                     for name, value in values.items()) or "defaults"


def markdown_table(records: list[dict]) -> str:
    """The log as a Markdown table: one line per record, AP@0.4 / AP@0.5 per site."""
    lines = ["| run | method | changed | epochs | train min | "
             + " | ".join(f"{site} AP@0.4 / 0.5" for site in SITES) + " | CPU | commit |",
             "| --- " * (7 + len(SITES)) + "|"]
    for r in records:
        aps = [f"{r['sites'][site]['ap40']:.3f} / {r['sites'][site]['ap50']:.3f}" if site in r["sites"] else ""
               for site in SITES]
        lines.append(f"| {r['label']} | {r['method']} | {describe(r['changed'])} | {r['epochs']:g} | "
                     f"{r['train_s'] / 60:.1f} | " + " | ".join(aps) + f" | {r['machine']['cpu']} | {r['commit']} |")
    return "\n".join(lines)


def mean_ap40(record: dict) -> float:
    """The figure recipes are ranked by: AP@0.4 averaged over the three sites."""
    return sum(record["sites"][site]["ap40"] for site in SITES) / len(SITES)


def screen_agreement(records: list[dict]) -> str:
    """Whether the screen ranks recipes as full runs do: geolearn runs of one label and settings
    logged both with ``SCREEN_EPOCHS`` and ``FULL_EPOCHS`` (the latest record of each), ranked by
    mean AP@0.4. The label keeps apart runs of the same settings on different defaults."""
    runs: dict[str, dict[str, dict]] = {}
    for r in records:
        kind = {SCREEN_EPOCHS: "screen", FULL_EPOCHS: "full"}.get(r["budget"].get("epochs"))
        if r["method"] == "geolearn" and kind:
            runs.setdefault(json.dumps([r["label"], r["changed"]], sort_keys=True), {})[kind] = r
    both = {key: kinds for key, kinds in runs.items() if len(kinds) == 2}
    if len(both) < 2:
        return ""
    rank = {kind: sorted(both, key=lambda key: -mean_ap40(both[key][kind])) for kind in ("screen", "full")}
    lines = [f"| run: changed | screen ({SCREEN_EPOCHS} epochs) mean AP@0.4, rank | full ({FULL_EPOCHS} epochs) mean AP@0.4, rank |",
             "| --- | --- | --- |"]
    for key in rank["full"]:
        cells = [f"{mean_ap40(both[key][kind]):.3f}, {rank[kind].index(key) + 1}" for kind in ("screen", "full")]
        label, changed = json.loads(key)
        lines.append(f"| {label}: {describe(changed)} | {cells[0]} | {cells[1]} |")
    verdict = "agree" if rank["screen"] == rank["full"] else "disagree"
    return "\n".join(lines) + f"\n\nThe rankings of these {len(both)} settings {verdict}."


def generated_docs() -> str:
    """What docs/training.md holds between its markers: the log and the screen's agreement."""
    records = read_log()
    agreement = screen_agreement(records)
    return "\n\n".join(part for part in (markdown_table(records), agreement) if part)


def write_docs(path: Path) -> None:
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise SystemExit(f"{path}: no {DOCS_BEGIN} ... {DOCS_END} block to fill")
    head, rest = text.split(DOCS_BEGIN, 1)
    path.write_text(f"{head}{DOCS_BEGIN}\n{generated_docs()}\n{DOCS_END}{rest.split(DOCS_END, 1)[1]}")


SAVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # what RetinaNet.save accepts as a package name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neon", type=Path, default=REPO.parent / "shared" / "data" / "neon")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help=f"training epochs of each method (default {FULL_EPOCHS})")
    budget.add_argument("--screen", action="store_true", help=f"a quick run: {SCREEN_EPOCHS} epochs")
    budget.add_argument("--minutes", type=float, help="wall-clock training budget of each method instead "
                                                      "(geolearn's lr_find included); the bare loop gets geolearn's time")
    parser.add_argument("--split", type=int, default=1700, help="first row of the gap between train and test parts")
    parser.add_argument("--gap", type=int, default=64, help="rows between the train and test parts")
    parser.add_argument("--only", choices=["geolearn", "bare"], help="run one method")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="GROUP.NAME=VALUE")
    parser.add_argument("--label", default="", help="name of this run in the log")
    parser.add_argument("--seed", type=int, default=0,
                        help="0: the usual draw; N: torch seeded with N and prepare_data's seed 42 + N, to "
                             "measure how much one recipe's figures vary from run to run")
    parser.add_argument("--nms", default="", help="also score these comma-separated nms_overlap values")
    parser.add_argument("--from-model", metavar="LABEL",
                        help="train nothing: score the model that the logged run LABEL saved again, with the "
                             "--set detect.NAME=VALUE settings (for the levers that act at detection time)")
    parser.add_argument("--no-log", action="store_true", help="print the table only, append nothing to the log")
    parser.add_argument("--table", action="store_true", help="print the log as a Markdown table and exit")
    parser.add_argument("--write-docs", type=Path, metavar="MD",
                        help=f"fill the {DOCS_BEGIN} block of this file with the table and exit")
    args = parser.parse_args()
    if args.table:
        print(generated_docs())
        return
    if args.write_docs:
        write_docs(args.write_docs)
        return
    if args.label and not args.from_model and not SAVE_NAME.match(args.label):
        # Checked now, not when the trained model is saved under it half an hour later.
        parser.error(f"--label {args.label!r} names the saved model's folder: use letters, digits, '_', '-' and '.'")
    warnings.simplefilter("ignore")
    settings = parse_settings(args.settings)
    if args.seed:  # another draw of the same recipe: the weights, the split, the crops, the order
        settings["prepare"].setdefault("seed", DATA_SEED + args.seed)
    changed = {group: values for group, values in settings.items() if values}
    if args.minutes is not None:
        budget = {"minutes": args.minutes}
    else:
        budget = {"epochs": SCREEN_EPOCHS if args.screen else args.epochs or FULL_EPOCHS}
    label = args.label or ("screen" if args.screen else "run")
    torch.manual_seed(args.seed)

    paths = split_scene(args.neon, args.split, args.gap)
    if settings["export"] and args.only != "geolearn":
        raise SystemExit("--set export.NAME: the bare loop is written for 256 px chips; add --only geolearn")
    chips = export_chips(paths, **settings["export"])
    soap_raster, soap_truth = soap_site(args.neon)
    sites = dict(zip(SITES, [(paths["test"], truth_boxes(paths["test_crowns"])),
                             (args.neon / f"{OSBS}.tif", truth_boxes(args.neon / f"{OSBS}_crowns.gpkg")),
                             (soap_raster, soap_truth)]))
    # detect.match_statistics=True: each site's raster with the training part's band mean and std.
    detect_settings = dict(settings["detect"])
    if detect_settings.pop("match_statistics", False):
        sites = {site: (matched(raster, paths["train"]), truth) for site, (raster, truth) in sites.items()}
    common = {"label": label, "budget": budget, "machine": runlog.machine(), "commit": runlog.git_commit("benchmarks/real_accuracy.py"),
              "command": shlex.join(["python", "benchmarks/real_accuracy.py", *sys.argv[1:]]),
              "time": time.strftime("%Y-%m-%d %H:%M")}
    rows, records = [], []
    nms_values = [float(v) for v in args.nms.split(",") if v]
    # By time the bare loop gets the time geolearn took (its lr_find included), or the budget alone.
    bare_budget = {"epochs": budget["epochs"]} if "epochs" in budget else {"seconds": budget["minutes"] * 60}
    if args.from_model:
        model, trained, epochs, changed = saved_geolearn(args.from_model, settings)
        common |= {"budget": {"epochs": epochs}, "label": args.label or f"{args.from_model}, rescored"}
        args.only = "geolearn"
    elif args.only != "bare":
        model, trained, epochs = train_geolearn(chips, budget, settings)
        if "seconds" in bare_budget:
            bare_budget = {"seconds": trained}
    if args.only != "bare":
        for nms in [None, *nms_values]:
            detect = detect_settings if nms is None else detect_settings | {"nms_overlap": nms}
            method = "geolearn" if nms is None else f"geolearn nms {nms}"
            scored = {site: score(detect_geolearn(model, raster, detect), truth, model.threshold)
                      for site, (raster, truth) in sites.items()}
            rows += [{"method": method, "site": site, "train_s": trained, **r} for site, r in scored.items()]
            records.append(common | {
                "method": "geolearn",
                "changed": changed | ({"detect": settings["detect"] | {"nms_overlap": nms}} if nms is not None else {}),
                "epochs": epochs, "train_s": round(trained, 1), "lr": model.config.learning_rate,
                "sites": {site: site_metrics(r) for site, r in scored.items()}})
        if args.label and not args.from_model:
            model.save(WORK / "models" / args.label, compute_metrics=False)
    if args.only != "geolearn":
        model, trained, epochs, threshold = train_bare(chips, bare_budget, seed=args.seed)
        for variant in [None, *nms_values]:
            method = "bare torchvision" if variant is None else f"bare nms {variant}"
            nms = settings["detect"].get("nms_overlap", NMS_OVERLAP) if variant is None else variant
            scored = {site: score(detect_bare(model, raster, nms), truth, threshold)
                      for site, (raster, truth) in sites.items()}
            rows += [{"method": method, "site": site, "train_s": trained, **r} for site, r in scored.items()]
            records.append(common | {
                "method": "bare torchvision",
                "changed": {"detect": {"nms_overlap": nms}} if variant is not None or settings["detect"] else {},
                "epochs": round(epochs, 2), "train_s": round(trained, 1), "lr": 1e-3,
                "sites": {site: site_metrics(r) for site, r in scored.items()}})

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; budget {budget}; settings {changed}")
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
    if not args.no_log:
        for record in records:
            runlog.append(RESULTS, record)
        print(f"{len(records)} record(s) appended to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
