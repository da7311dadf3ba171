"""OpenMP's wait policy on an idle and on a busy machine: the network's speed, one run.

    python benchmarks/threads.py [--batches 6] [--rounds 2] [--spin N ...] [--log]

PyTorch's CPU kernels run on an OpenMP pool (GNU libgomp in the Linux wheels). Between two
parallel regions its threads spin-wait by default; on a shared machine, where another process
wants a core, the spinning threads take its time slices and the pool waits for each other.
``OMP_WAIT_POLICY=PASSIVE`` makes them sleep instead; ``GOMP_SPINCOUNT=N`` (``--spin N``, policy
unset) lets them spin N turns first (libgomp's default is 300 000, about 3 ms). libgomp reads
both once, when torch loads it, so each setting runs in its own fresh process.

What is timed: RetinaNet ResNet-50 FPN (geolearn's network, random weights), 512 px, batch 4,
forward only, bf16 autocast where the CPU is fast at it, channels_last — seconds per batch
(median of ``--batches`` after one warm-up batch). Each setting runs ``--rounds`` times,
alternating, on an idle machine and then beside one busy process (a Python loop on one core);
the ratios default / setting are from this one run. ``--log`` appends the run to
``benchmarks/results/threads.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "threads.jsonl"
OPENMP_WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # unset in every child, then set per setting
BUSY = "while True: pass"


def worker(batches: int) -> None:
    """Times the network in this process; prints one JSON line of seconds per batch."""
    import torch

    sys.path.insert(0, str(REPO))
    from geolearn.models.precision import resolve_precision
    from geolearn.models.retinanet import build_retinanet

    torch.manual_seed(0)
    network = build_retinanet(n_classes=2, backbone="resnet50", pretrained=False).eval()
    network = network.to(memory_format=torch.channels_last)
    dtype = resolve_precision(None, torch.device("cpu"))
    images = torch.rand(4, 3, 512, 512).contiguous(memory_format=torch.channels_last)
    seconds = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(batches + 1):
            start = time.perf_counter()
            network(images)
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds[1:], "threads": torch.get_num_threads(), "dtype": str(dtype)}))


def settings(spins: list[int]) -> dict[str, dict[str, str]]:
    """Each setting's name and the variables it sets; "default" sets none (libgomp's own default)."""
    return {"default": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
            **{f"spin {n}": {"GOMP_SPINCOUNT": str(n)} for n in spins}}


def timed(variables: dict[str, str], batches: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAITING} | variables
    done = subprocess.run([sys.executable, __file__, "--worker", "--batches", str(batches)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(chosen: dict[str, dict[str, str]], rounds: int, batches: int) -> dict[str, list[float]]:
    """Per setting, every timed batch's seconds over ``rounds`` alternating runs."""
    seconds: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(rounds):
        for name, variables in chosen.items():
            seconds[name] += timed(variables, batches)["seconds"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--spin", type=int, nargs="*", default=[],
                        help="also time GOMP_SPINCOUNT=N (wait policy unset) for each N")
    parser.add_argument("--log", action="store_true", help=f"append the run to {RESULTS.relative_to(REPO)}")
    args = parser.parse_args()
    if args.worker:
        return worker(args.batches)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from runlog import append, git_commit, machine

    commit = git_commit("benchmarks/threads.py")  # the code this run starts with
    chosen = settings(args.spin)
    table = {"idle": measure(chosen, args.rounds, args.batches)}
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        table["busy"] = measure(chosen, args.rounds, args.batches)
    finally:
        busy.kill()
    summary = {}
    print(f"RetinaNet ResNet-50, 512 px, batch 4, forward; {os.cpu_count()} cores; median s/batch (min-max)")
    for load, by_policy in table.items():
        medians = {name: statistics.median(s) for name, s in by_policy.items()}
        summary[load] = {name: {"median_s": round(m, 3), "min_s": round(min(by_policy[name]), 3),
                                "max_s": round(max(by_policy[name]), 3)} for name, m in medians.items()}
        cells = "  ".join(f"{name} {m:.2f} ({min(by_policy[name]):.2f}-{max(by_policy[name]):.2f})"
                          for name, m in medians.items())
        ratios = {name: medians["default"] / m for name, m in medians.items() if name != "default"}
        print(f"{load:5s} {cells}  default/setting " + "  ".join(f"{n} {r:.2f}x" for n, r in ratios.items()))
        summary[load]["default_over"] = {name: round(r, 3) for name, r in ratios.items()}
    if args.log:
        append(RESULTS, {"time": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", *sys.argv]),
                         "commit": commit, "machine": machine(),
                         "network": "RetinaNet ResNet-50 FPN, 512 px, batch 4, forward, bf16 where fast",
                         "busy": "one Python loop on one core", "results": summary})


if __name__ == "__main__":
    main()
