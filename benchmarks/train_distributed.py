"""Data-parallel training on this machine: N processes of T/N threads against one process of T threads.

    python benchmarks/train_distributed.py [--epochs 5] [--processes 2] [--seed 0] [--log]

Both runs train the same ResNet-18 RetinaNet from the same seed (``--seed``) on the sample
scene's chips (256 px, batch 8 in all, bfloat16 autocast where the CPU has it, learning rate
1e-3, no lr_find) for the same number of epochs, one after the other, so their figures share the
machine's state:

* ``1 x T``: ``model.fit`` in one process of T threads (T: this machine's cores);
* ``N x T/N``: the same script under ``torchrun --nproc_per_node N``, each process with T/N
  threads (``geolearn train --nproc N`` does the same).

It prints the training images/s of each (every chip of every epoch, over the wall time of the
training phases, validation excluded), their ratio, and the AP@0.5 on the validation chips after
the last epoch (the two should match within the noise of training from a seed). ``--log``
appends the row to ``benchmarks/results/train_distributed.jsonl``. The chips are exported to
``benchmarks/_work/`` once (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))

import runlog  # noqa: E402
from train_speed import sample_chips  # noqa: E402  (the sample scene's chips, exported once)

WORK = REPO / "benchmarks" / "_work"
LOG = REPO / "benchmarks" / "results" / "train_distributed.jsonl"
CHIP, BATCH, LR = 256, 8, 1e-3


def worker(chips: str, epochs: int, result: str, seed: int) -> None:
    """One training run (one process, or each rank of a torchrun launch); rank 0 writes ``result``."""
    import torch
    from fastai.callback.core import Callback

    from geolearn import RetinaNet, prepare_data
    from geolearn.learn import distributed

    class TrainClock(Callback):
        """Wall time of the training phases; chips trained on by this rank."""

        order = 6  # after DistributedTraining (5) hands over this rank's loader

        def before_fit(self):
            self.seconds, self.chips = 0.0, 0

        def before_train(self):
            self.start = time.perf_counter()

        def after_batch(self):
            if self.training:
                self.chips += self.xb[0].shape[0]

        def after_train(self):
            self.seconds += time.perf_counter() - self.start

    torch.manual_seed(seed)
    data = prepare_data(chips, chip_size=CHIP, batch_size=BATCH, val_split_pct=0.2, seed=42)
    model = RetinaNet(data, backbone="resnet18", pretrained=False)
    clock = TrainClock()
    model.learn.add_cb(clock)
    model.fit(epochs, lr=LR, checkpoint=False)
    (chips_trained,) = distributed.summed([clock.chips])
    ap = model.average_precision_score(iou_thresh=0.5, show_progress=False)
    if distributed.is_main():
        Path(result).write_text(json.dumps({
            "images_per_s": chips_trained / clock.seconds, "train_s": clock.seconds, "chips": chips_trained,
            "ap50": ap, "threads": torch.get_num_threads(), "processes": distributed.world_size(),
            "precision": str(model._precision_dtype()),
        }))


def run(processes: int, threads: int, chips: Path, epochs: int, seed: int) -> dict:
    result = Path(tempfile.mkdtemp(dir=WORK)) / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    script = [str(Path(__file__).resolve()), "--worker", str(chips), str(epochs), str(result), str(seed)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   *script]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    record = json.loads(result.read_text())
    record["wall_s"] = round(time.perf_counter() - started, 1)
    return record


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="torch's seed for both runs (the weights' start)")
    parser.add_argument("--log", action="store_true", help=f"append the row to {LOG.relative_to(REPO)}")
    args = parser.parse_args()
    commit = runlog.git_commit("benchmarks/train_distributed.py")  # the code this run starts with
    cores = os.cpu_count() or 1
    chips = sample_chips()
    one = run(1, cores, chips, args.epochs, args.seed)
    many = run(args.processes, max(1, cores // args.processes), chips, args.epochs, args.seed)
    machine = runlog.machine()
    print(f"{machine['cpu']}, {cores} cores, torch {machine['torch']}; resnet18, {CHIP} px chips, batch {BATCH} in all, "
          f"{args.epochs} epochs, lr {LR}, seed {args.seed}, {one['precision']}")
    for label, record in ((f"1 x {cores} threads", one), (f"{args.processes} x {many['threads']} threads", many)):
        print(f"  {label:>16}: {record['images_per_s']:.2f} img/s training ({record['chips']:.0f} chips in "
              f"{record['train_s']:.0f} s), AP@0.5 {record['ap50']}, whole run {record['wall_s']:.0f} s")
    ratio = many["images_per_s"] / one["images_per_s"]
    print(f"  ratio {args.processes} processes / 1 process: {ratio:.2f}")
    if args.log:
        runlog.append(LOG, {
            "command": "python benchmarks/train_distributed.py " + " ".join(sys.argv[1:]),
            "commit": commit, "time": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine, "epochs": args.epochs, "seed": args.seed, "one_process": one, "processes": many, "ratio": round(ratio, 3),
        })


if __name__ == "__main__":
    main()
