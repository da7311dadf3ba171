"""Training speed: geolearn's ``model.fit`` against a bare PyTorch loop, and bf16 against fp32.

    python benchmarks/train_speed.py [--backbone resnet18] [--chip-size 256] [--batch-size 8] [--batches 12]

All figures come from one run on the same chips, backbone, chip size and batch
size, so their ratios hold on a shared, noisy machine:

* ``fit``: images/s of the training phase of ``RetinaNet.fit`` (fastai Learner,
  callbacks, batch augmentation, progress bars), timed from the first to the last
  training batch of an epoch of ``--batches`` batches (the first batch is warm-up);
* ``bare``: images/s of a plain loop over the same DataLoader — forward, the same
  loss, backward, Adam step — with nothing else;
* each in bfloat16 autocast (channels_last) and in float32.

Goals: fit / bare >= 0.9 and bf16 / fp32 >= 2.5 (on CPUs with AMX/AVX512-BF16).
The sample scene is exported to ``benchmarks/_work/`` once (git-ignored).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from fastai.callback.core import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from geolearn import export_training_data, prepare_data  # noqa: E402
from geolearn.learn.retinanet import RetinaNet  # noqa: E402

WORK = REPO / "benchmarks" / "_work"


class TrainTimer(Callback):
    """Times the training batches of an epoch, the first (warm-up) batch excluded."""

    def before_fit(self):
        self.seconds, self.images = 0.0, 0

    def before_batch(self):
        if self.training:
            self.start = time.perf_counter()

    def after_step(self):
        if self.training and self.iter > 0:
            self.seconds += time.perf_counter() - self.start
            self.images += self.xb[0].shape[0]


def sample_chips() -> Path:
    out = WORK / "sample_chips"
    if not (out / "map.txt").exists():
        export_training_data(str(REPO / "sample_data" / "sample_scene.tif"),
                             str(REPO / "sample_data" / "sample_scene_labels.gpkg"),
                             output_location=str(out), overwrite=True, progress=False)
    return out


def fit_speed(data, backbone: str, precision: bool) -> float:
    model = RetinaNet(data, backbone=backbone, pretrained=False, mixed_precision=precision)
    timer = TrainTimer()
    model.learn.add_cb(timer)
    model.fit(1, lr=1e-4, checkpoint=False, one_cycle=False)
    return timer.images / timer.seconds


def bare_speed(data, backbone: str, precision: bool) -> float:
    model = RetinaNet(data, backbone=backbone, pretrained=False).model  # the same network, fresh
    loss_func = RetinaNet(data, backbone=backbone, pretrained=False).loss_func
    model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    seconds, images = 0.0, 0
    for i, (xb, boxes, labels) in enumerate(data.train):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision):
            output = model(xb.as_subclass(torch.Tensor))
        loss = loss_func([o.float() for o in output], boxes, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i > 0:
            seconds += time.perf_counter() - start
            images += xb.shape[0]
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12, help="training batches per measurement")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)

    n_chips = args.batches * args.batch_size
    data = prepare_data(sample_chips(), chip_size=args.chip_size, batch_size=args.batch_size,
                        val_split_pct=0.02)
    # The same first n_chips training chips for every measurement; validation kept tiny.
    data.train_ds.images, data.train_ds.labels = data.train_ds.images[:n_chips], data.train_ds.labels[:n_chips]
    data.valid_ds.images, data.valid_ds.labels = data.valid_ds.images[:args.batch_size], data.valid_ds.labels[:args.batch_size]
    data.train.n, data.valid.n = len(data.train_ds), len(data.valid_ds)  # fastai caches the lengths

    print(f"backbone {args.backbone}, chip {args.chip_size} px, batch {args.batch_size}, "
          f"{args.batches} batches per measurement, torch {torch.__version__}, {torch.get_num_threads()} threads")
    speeds = {}
    for precision in (True, False):
        name = "bf16" if precision else "fp32"
        speeds[("bare", name)] = bare_speed(data, args.backbone, precision)
        speeds[("fit", name)] = fit_speed(data, args.backbone, precision)
        print(f"{name}: model.fit {speeds[('fit', name)]:.2f} img/s, bare loop {speeds[('bare', name)]:.2f} img/s, "
              f"ratio fit/bare {speeds[('fit', name)] / speeds[('bare', name)]:.2f} (goal >= 0.9)")
    print(f"bf16 / fp32: model.fit {speeds[('fit', 'bf16')] / speeds[('fit', 'fp32')]:.2f}, "
          f"bare loop {speeds[('bare', 'bf16')] / speeds[('bare', 'fp32')]:.2f} (goal >= 2.5)")


if __name__ == "__main__":
    main()
