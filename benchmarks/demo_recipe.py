"""The demo's training recipe, from random initialisation, with its accuracy broken down by object size.

    python benchmarks/demo_recipe.py [--chips DIR] [--epochs 10] [--lr 2.6e-3] [--scales 0.707,0.42,0.33]
                                     [--lighting 0.2] [--label NAME]

Trains ResNet-18 RetinaNet on the sample scene's chips as ``geolearn demo`` does
(``prepare_data(chips, chip_size=256, batch_size=8)``, ``RetinaNet(data, scales='auto')``,
``fit(epochs, lr)``) and prints, in one line starting ``RESULT``: the training time,
AP@0.5 and AP@0.1 per class on the validation chips, and the recall at IoU 0.5 of the
detections scoring >= 0.3, per class and ground-truth size (square root of the box area,
in pixels). Options change one part of the recipe at a time, to find what limits the
smallest objects. Torch is seeded, so a setting repeats its figures on the same machine.
With ``--label`` the run's record (label, settings, figures, CPU, git commit, command) is
appended to the committed ``benchmarks/results/demo_recipe.jsonl``.

``--chips`` is a folder exported by ``geolearn demo --epochs 0 --out DIR`` (``DIR/chips``);
without it the sample scene is exported to ``benchmarks/_work/demo/`` first.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))  # runlog, beside this script

import runlog  # noqa: E402

from geolearn import prepare_data  # noqa: E402
from geolearn.sample.demo import AP_DETECT_THRESH, CHIP_PX, DENSE_NMS_OVERLAP  # noqa: E402
from geolearn.data.transforms import default_batch_transforms  # noqa: E402
from geolearn.learn.evaluation import DetectionSettings, evaluate  # noqa: E402
from geolearn.learn.retinanet import RetinaNet  # noqa: E402
from geolearn.metrics import average_precision  # noqa: E402
from geolearn.models.precision import resolve_precision  # noqa: E402

WORK = REPO / "benchmarks" / "_work" / "demo"
RESULTS = REPO / "benchmarks" / "results" / "demo_recipe.jsonl"  # committed: the records of labelled runs
SIZE_EDGES = (8, 12, 20)  # px: recall is reported for sizes below 8, 8–12, 12–20 and from 20


def demo_chips() -> Path:
    """The chips ``geolearn demo`` exports (exported once into benchmarks/_work/demo)."""
    chips = WORK / "chips"
    if not (chips / "map.txt").exists():
        subprocess.run([sys.executable, "-m", "geolearn.cli", "demo", "--epochs", "0", "--out", str(WORK)],
                       check=True, cwd=REPO)
    return chips


def size_bucket(size: float) -> str:
    for edge in SIZE_EDGES:
        if size < edge:
            return f"<{edge}"
    return f">={SIZE_EDGES[-1]}"


def recall_by_size(preds, targets, classes, zoom=1.0, min_score=0.3, iou=0.5) -> dict[str, str]:
    """``'tree<12': 'found/total'``: ground truths with a detection of their class at IoU >= ``iou``.

    Sizes are in the exported chips' pixels: those the network sees divided by ``zoom``.
    """
    from torchvision.ops import box_iou

    counts: dict[tuple[str, str], list[int]] = {}
    for (boxes, labels, scores), (gt_boxes, gt_labels) in zip(preds, targets):
        for cls in gt_labels.unique().tolist():
            gt = gt_boxes[gt_labels == cls]
            found = boxes[(scores >= min_score) & (labels == cls)]
            best = box_iou(gt, found).max(1).values if len(found) else torch.zeros(len(gt))
            sizes = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).sqrt() / zoom
            for size, hit in zip(sizes.tolist(), (best >= iou).tolist()):
                tally = counts.setdefault((classes[cls], size_bucket(size)), [0, 0])
                tally[0] += hit
                tally[1] += 1
    return {f"{name}{bucket}": f"{hit}/{total}" for (name, bucket), (hit, total) in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=Path, help="exported chips (default: export the sample scene)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=None, help="default: lr_find, as the demo does")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scales", help="comma-separated anchor scales (ratios stay fitted); default 'auto'")
    parser.add_argument("--clip", type=float, default=0, help="fastai GradientClip max norm (0: none)")
    parser.add_argument("--resize-to", type=int, default=None,
                        help="train and evaluate on chips enlarged to this side (prepare_data's resize_to)")
    parser.add_argument("--lighting", type=float, default=None,
                        help="brightness and contrast strength of the augmentations (0: none); default the "
                             "defaults' (geolearn.data.transforms.default_batch_transforms)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--label", help="append the run's record to benchmarks/results/demo_recipe.jsonl")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    commit = runlog.git_commit("benchmarks/demo_recipe.py")  # the code this run starts with
    torch.manual_seed(args.seed)
    side = args.resize_to or CHIP_PX
    transforms = None if args.lighting is None else default_batch_transforms(lighting=args.lighting)
    data = prepare_data(args.chips or demo_chips(), chip_size=side, resize_to=args.resize_to,
                        batch_size=args.batch_size, transforms=transforms)
    scales, ratios = "auto", None
    if args.scales:
        scales = [float(value) for value in args.scales.split(",")]
        ratios = list(RetinaNet.suggest_anchors(data).ratios)
    model = RetinaNet(data, backbone="resnet18", pretrained=False, scales=scales, ratios=ratios)
    if args.clip:
        from fastai.callback.training import GradientClip

        model.learn.add_cb(GradientClip(args.clip))
    lr = args.lr if args.lr is not None else model.lr_find(allow_plot=False, num_it=50)  # the demo's 50 batches
    start = time.perf_counter()
    model.fit(args.epochs, lr=lr, checkpoint=False)
    seconds = time.perf_counter() - start

    settings = DetectionSettings(model.anchors, side, AP_DETECT_THRESH, DENSE_NMS_OVERLAP, 0.5)
    dtype = resolve_precision(model.mixed_precision, next(model.model.parameters()).device)  # as fit ran
    preds, targets = evaluate(model.model, data.valid, settings, dtype, False)
    names = data.classes  # labels count from 1; 0 is the background
    ap = {iou: average_precision(preds, targets, iou_thresh=iou) for iou in (0.5, 0.1)}
    per_class = {iou: {names[c]: round(v, 3) for c, v in values.items()} for iou, values in ap.items()}
    print(f"RESULT {args.tag} scales {[round(s, 3) for s in model.scales]} ratios {model.ratios} "
          f"lr {lr:.2e} epochs {args.epochs} fit {seconds:.0f}s AP@0.5 {per_class[0.5]} AP@0.1 {per_class[0.1]} "
          f"resize_to {args.resize_to} recall {recall_by_size(preds, targets, names, side / CHIP_PX)}", flush=True)
    if args.label:
        changed = {name: value for name, value in vars(args).items()
                   if name not in ("chips", "tag", "label") and value != parser.get_default(name)}
        runlog.append(RESULTS, {
            "label": args.label, "changed": changed, "epochs": args.epochs, "fit_s": round(seconds, 1),
            "lr": lr, "ap50": per_class[0.5], "ap10": per_class[0.1],
            "recall_by_size": recall_by_size(preds, targets, names, side / CHIP_PX),
            "machine": runlog.machine(), "commit": commit,
            "command": shlex.join(["python", "benchmarks/demo_recipe.py", *sys.argv[1:]]),
            "time": time.strftime("%Y-%m-%d %H:%M")})
        print(f"record appended to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
