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

    python benchmarks/train_speed.py --threads [--compiled] [--log]

``--threads`` asks issue 17's thread and compile questions of training instead, in the machine's
precision (bf16 where the CPU is fast at it, else fp32): ``fit`` and ``bare`` with OpenMP's wait
policy left at libgomp's default and with ``OMP_WAIT_POLICY=PASSIVE`` (what importing geolearn
sets), each in its own fresh process (libgomp reads the policy once, when torch loads), on an idle
machine and then beside one busy process (a Python loop on one core); ``--compiled`` adds the bare
loop with the network through ``torch.compile`` (PASSIVE), its first batches (the compilation)
timed apart. Printed per load: images/s and default / setting; ``--log`` appends the run to
``benchmarks/results/train_speed.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


def bare_speed(data, backbone: str, precision: bool, compiled: bool = False) -> tuple[float, float]:
    """Images/s of a plain training loop, and the seconds of its untimed first batch (the
    compilation, where ``compiled`` runs the network through ``torch.compile``)."""
    model = RetinaNet(data, backbone=backbone, pretrained=False).model  # the same network, fresh
    loss_func = RetinaNet(data, backbone=backbone, pretrained=False).loss_func
    model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    network = torch.compile(model) if compiled else model
    seconds, images = 0.0, 0
    for i, (xb, boxes, labels) in enumerate(data.train):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision):
            output = network(xb.as_subclass(torch.Tensor))
        loss = loss_func([o.float() for o in output], boxes, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i > 0:
            seconds += time.perf_counter() - start
            images += xb.shape[0]
        else:
            first_s = time.perf_counter() - start
    return images / seconds, first_s


# --threads: each (loop, wait policy) in a fresh process, idle and beside a busy one.
OPENMP_WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
THREAD_SETTINGS = {"fit default": ("fit", {}), "fit PASSIVE": ("fit", {"OMP_WAIT_POLICY": "PASSIVE"}),
                   "bare default": ("bare", {}), "bare PASSIVE": ("bare", {"OMP_WAIT_POLICY": "PASSIVE"})}
COMPILED_SETTING = {"bare PASSIVE compiled": ("bare-compiled", {"OMP_WAIT_POLICY": "PASSIVE"})}


def threads_worker(loop: str, data, backbone: str) -> None:
    """One loop's images/s in this process, as a JSON line."""
    from geolearn.models.precision import resolve_precision

    precision = resolve_precision(None, torch.device("cpu")) is torch.bfloat16
    if loop == "fit":
        speed, first_s = fit_speed(data, backbone, precision), None
    else:
        speed, first_s = bare_speed(data, backbone, precision, compiled=loop == "bare-compiled")
    print(json.dumps({"images_per_s": speed, "first_s": first_s,
                      "precision": "bf16" if precision else "fp32", "threads": torch.get_num_threads()}))


def threads_run(args: argparse.Namespace) -> None:
    """Runs every setting idle, then beside a busy process; prints and optionally logs the table."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from runlog import append, git_commit, machine, run_record

    commit = git_commit("benchmarks/train_speed.py")
    chosen = THREAD_SETTINGS | (COMPILED_SETTING if args.compiled else {})
    base = [sys.executable, __file__, "--backbone", args.backbone, "--chip-size", str(args.chip_size),
            "--batch-size", str(args.batch_size), "--batches", str(args.batches)]

    def run(loop: str, variables: dict[str, str]) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAITING} | variables
        done = subprocess.run([*base, "--worker", loop], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
        return json.loads(done.stdout.strip().splitlines()[-1])

    table = {"idle": {name: run(*setting) for name, setting in chosen.items()}}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        table["busy"] = {name: run(*setting) for name, setting in chosen.items()}
    finally:
        busy.kill()
    print(f"backbone {args.backbone}, chip {args.chip_size} px, batch {args.batch_size}, {args.batches} batches "
          f"per measurement; {machine()['cpu']}, {os.cpu_count()} cores")
    for load, rows in table.items():
        for name, row in rows.items():
            if "error" in row:
                print(f"{load:5s} {name:22s} failed: {row['error']}")
                continue
            default = rows[f"{name.split()[0]} default"]  # the same loop, libgomp's default policy
            row["over_default"] = (round(row["images_per_s"] / default["images_per_s"], 3)
                                   if "images_per_s" in default else None)
            print(f"{load:5s} {name:22s} {row['images_per_s']:6.2f} img/s ({row['precision']})  "
                  f"this/default {row['over_default']}x"
                  + (f"  first batch {row['first_s']:.1f} s" if row.get("first_s") is not None else ""))
    if args.log:
        append(REPO / "benchmarks" / "results" / "train_speed.jsonl",
               run_record(commit, busy="one Python loop on one core", results=table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12, help="training batches per measurement")
    parser.add_argument("--threads", action="store_true", help="wait policies (and --compiled), idle and busy")
    parser.add_argument("--compiled", action="store_true", help="with --threads: also the bare loop compiled")
    parser.add_argument("--log", action="store_true", help="with --threads: append to results/train_speed.jsonl")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        return threads_run(args)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)

    n_chips = args.batches * args.batch_size
    data = prepare_data(sample_chips(), chip_size=args.chip_size, batch_size=args.batch_size,
                        val_split_pct=0.02)
    # The same first n_chips training chips for every measurement; validation kept tiny.
    data.train_ds.images, data.train_ds.labels = data.train_ds.images[:n_chips], data.train_ds.labels[:n_chips]
    data.valid_ds.images, data.valid_ds.labels = data.valid_ds.images[:args.batch_size], data.valid_ds.labels[:args.batch_size]
    data.train.n, data.valid.n = len(data.train_ds), len(data.valid_ds)  # fastai caches the lengths

    if args.worker:
        return threads_worker(args.worker, data, args.backbone)
    print(f"backbone {args.backbone}, chip {args.chip_size} px, batch {args.batch_size}, "
          f"{args.batches} batches per measurement, torch {torch.__version__}, {torch.get_num_threads()} threads")
    speeds = {}
    for precision in (True, False):
        name = "bf16" if precision else "fp32"
        speeds[("bare", name)], _ = bare_speed(data, args.backbone, precision)
        speeds[("fit", name)] = fit_speed(data, args.backbone, precision)
        print(f"{name}: model.fit {speeds[('fit', name)]:.2f} img/s, bare loop {speeds[('bare', name)]:.2f} img/s, "
              f"ratio fit/bare {speeds[('fit', name)] / speeds[('bare', name)]:.2f} (goal >= 0.9)")
    print(f"bf16 / fp32: model.fit {speeds[('fit', 'bf16')] / speeds[('fit', 'fp32')]:.2f}, "
          f"bare loop {speeds[('bare', 'bf16')] / speeds[('bare', 'fp32')]:.2f} (goal >= 2.5)")


if __name__ == "__main__":
    main()
