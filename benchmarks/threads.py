"""OpenMP's wait policy and compiling, on an idle and on a busy machine: the network's speed, one run.

    python benchmarks/threads.py [--batches 6] [--rounds 2] [--spin N ...] [--compiled] [--log]

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
the ratios default / setting are from this one run. ``--compiled`` adds "PASSIVE compiled": the
network through :class:`geolearn.models.compiled.CompiledNetwork` (``torch.compile``, frozen
weights), its compilation (the first batch) timed apart.

Each setting's line also gives images/s and the fraction of the machine's own matmul rate (in
the network's dtype, measured in the same process: ``benchmarks/hardware_rate.py``) that the
network's FLOPs reach. ``--log`` appends the run to
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


def worker(batches: int, compiled: bool) -> None:
    """Times the network in this process; prints one JSON line of seconds per batch."""
    import torch  # before geolearn: the wait policy is the environment's, not geolearn's default

    sys.path.insert(0, str(REPO))

    from geolearn.models.compiled import CompiledNetwork
    from geolearn.models.precision import resolve_precision
    from hardware_rate import matmul_rate, network_flops
    from geolearn.models.retinanet import build_retinanet

    torch.manual_seed(0)
    network = build_retinanet(n_classes=2, backbone="resnet50", pretrained=False).eval()
    network = network.to(memory_format=torch.channels_last)
    dtype = resolve_precision(None, torch.device("cpu"))
    images = torch.rand(4, 3, 512, 512).contiguous(memory_format=torch.channels_last)
    run = CompiledNetwork(network) if compiled else network
    seconds = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(batches + 1):  # the first: a warm-up, or the compilation
            start = time.perf_counter()
            run(images)
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds[1:], "first_s": seconds[0], "threads": torch.get_num_threads(),
                      "dtype": "bf16" if dtype is torch.bfloat16 else "fp32", "flops": network_flops(network, images),
                      "matmul_flops_per_s": matmul_rate(dtype or torch.float32)}))


def settings(spins: list[int], compiled: bool) -> dict[str, tuple[dict[str, str], bool]]:
    """Each setting's name, the variables it sets and whether it compiles; "default" sets none
    (libgomp's own default)."""
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    return {"default": ({}, False), "PASSIVE": (passive, False),
            **{f"spin {n}": ({"GOMP_SPINCOUNT": str(n)}, False) for n in spins},
            **({"PASSIVE compiled": (passive, True)} if compiled else {})}


def timed(variables: dict[str, str], compiled: bool, batches: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAITING} | variables
    command = [sys.executable, __file__, "--worker", "--batches", str(batches), *(["--compiled"] if compiled else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(chosen: dict[str, tuple[dict[str, str], bool]], rounds: int, batches: int) -> dict[str, list[dict]]:
    """Per setting, each of ``rounds`` alternating runs' record."""
    records: dict[str, list[dict]] = {name: [] for name in chosen}
    for _ in range(rounds):
        for name, (variables, compiled) in chosen.items():
            records[name].append(timed(variables, compiled, batches))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--spin", type=int, nargs="*", default=[],
                        help="also time GOMP_SPINCOUNT=N (wait policy unset) for each N")
    parser.add_argument("--compiled", action="store_true", help="also time the network compiled (PASSIVE)")
    parser.add_argument("--log", action="store_true", help=f"append the run to {RESULTS.relative_to(REPO)}")
    args = parser.parse_args()
    if args.worker:
        return worker(args.batches, args.compiled)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from runlog import append, git_commit, run_record

    commit = git_commit("benchmarks/threads.py")  # the code this run starts with
    chosen = settings(args.spin, args.compiled)
    table = {"idle": measure(chosen, args.rounds, args.batches)}
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        table["busy"] = measure(chosen, args.rounds, args.batches)
    finally:
        busy.kill()
    summary = report(table)
    if args.log:
        append(RESULTS, run_record(commit, network="RetinaNet ResNet-50 FPN, 512 px, batch 4, forward, bf16 where fast",
                                   busy="one Python loop on one core", results=summary))


def report(table: dict[str, dict[str, list[dict]]]) -> dict:
    """Prints each load's line per setting (median s/batch, images/s, fraction of the matmul rate,
    default / setting) and returns the same figures for the log."""
    records = [record for by_setting in table.values() for runs in by_setting.values() for record in runs]
    rate = max(record["matmul_flops_per_s"] for record in records)  # the machine's rate: the best seen
    flops = records[0]["flops"]
    print(f"RetinaNet ResNet-50, 512 px, batch 4, forward ({flops / 1e9:.0f} GFLOP), {records[0]['dtype']}; "
          f"{os.cpu_count()} cores; matmul rate {rate / 1e9:.0f} GFLOP/s")
    summary: dict = {"network_gflop": round(flops / 1e9, 1), "matmul_gflop_per_s": round(rate / 1e9, 1)}
    for load, by_setting in table.items():
        seconds = {name: [s for record in runs for s in record["seconds"]] for name, runs in by_setting.items()}
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        summary[load] = {}
        for name, median in medians.items():
            row = {"median_s": round(median, 3), "min_s": round(min(seconds[name]), 3),
                   "max_s": round(max(seconds[name]), 3), "images_per_s": round(4 / median, 2),
                   "fraction_of_matmul_rate": round(flops / median / rate, 3),
                   "default_over": round(medians["default"] / median, 3)}
            if name.endswith("compiled"):
                row["compile_s"] = [round(record["first_s"], 1) for record in by_setting[name]]
            summary[load][name] = row
            print(f"{load:5s} {name:17s} {median:6.2f} s ({row['min_s']:.2f}-{row['max_s']:.2f})  "
                  f"{row['images_per_s']:5.2f} img/s  {row['fraction_of_matmul_rate']:.1%} of matmul  "
                  f"default/this {row['default_over']:.2f}x"
                  + (f"  compile {row['compile_s']} s" if "compile_s" in row else ""))
    return summary


if __name__ == "__main__":
    main()
