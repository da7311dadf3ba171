"""The whole detection pipeline under each OpenMP wait policy, geolearn and its release: one run.

    python benchmarks/policy_pipeline.py [--size 2048] [--rounds 3] [--busy] [--log]

``threads.py`` times the network alone; this times ``detect_objects`` over a ``--size`` crop of
``detect.py``'s 8192 x 8192 raster (with its ResNet-50 package; run ``python benchmarks/detect.py
--quick`` once to make them), after a warm-up on its 512 x 512 raster, in a fresh process per
(code, policy): geolearn and its release (``detect.py``'s ``RELEASE``), each with
``OMP_WAIT_POLICY=PASSIVE`` and with libgomp's default spin (``GOMP_SPINCOUNT=300000``, which
libgomp's documentation gives as the default and which, set, overrides the policy and any choice
geolearn would make). The rounds alternate, so a drift of the machine's speed hits every setting
alike; the fastest and the median of each are printed with their ratio to the release at the
default spin. ``--busy`` runs it all beside one busy process. ``--log`` appends the run to
``benchmarks/results/threads.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
sys.path.insert(0, str(REPO / "benchmarks"))

from detect import RELEASE, release_checkout  # noqa: E402

PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
SPIN = {"GOMP_SPINCOUNT": "300000"}
CHILD = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from geolearn.learn.retinanet import RetinaNet  # geolearn (or the release) before torch
import rasterio
from rasterio.windows import Window

source, crop, size = sys.argv[2], sys.argv[3], int(sys.argv[4])
if not os.path.exists(crop):
    with rasterio.open(source) as src:
        profile = dict(src.profile, width=size, height=size, transform=src.window_transform(Window(0, 0, size, size)))
        pixels = src.read(window=Window(0, 0, size, size))
    with rasterio.open(crop + ".partial.tif", "w", **profile) as out:
        out.write(pixels)
    os.replace(crop + ".partial.tif", crop)
model = RetinaNet.from_model(sys.argv[5])
model.detect_objects(sys.argv[6], progress=False)
start = time.perf_counter()
model.detect_objects(crop, progress=False)
print(json.dumps(time.perf_counter() - start))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="beside one busy process (a Python loop)")
    parser.add_argument("--log", action="store_true", help="append the run to benchmarks/results/threads.jsonl")
    args = parser.parse_args()
    from runlog import append, git_commit, machine, run_record

    source, package = WORK / "scene_8192.tif", WORK / "geolearn_resnet50_512"
    if not source.exists() or not package.exists():
        raise SystemExit("run `python benchmarks/detect.py --size 8192 --large-size 0 --tools geolearn` once first")
    commit = git_commit("benchmarks/policy_pipeline.py")
    release = release_checkout(RELEASE)
    settings = {"geolearn PASSIVE": (REPO, PASSIVE), "geolearn default spin": (REPO, SPIN),
                "release PASSIVE": (release, PASSIVE), "release default spin": (release, SPIN)}
    crop = WORK / f"scene_{args.size}_crop.tif"
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        for _ in range(args.rounds):
            for name, (code, variables) in settings.items():
                env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                done = subprocess.run([sys.executable, "-c", CHILD, str(code), str(source), str(crop), str(args.size),
                                       str(package), str(WORK / "scene_512.tif")],
                                      env=env | variables, capture_output=True, text=True, check=True)
                seconds[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"  {name}: {seconds[name][-1]:.1f} s", flush=True)
    finally:
        if busy is not None:
            busy.kill()
    baseline = seconds["release default spin"]
    print(f"detect_objects on {args.size} x {args.size}, {'beside a busy process' if args.busy else 'idle'}, "
          f"{args.rounds} rounds; {machine()['cpu']}")
    table = {}
    for name, values in seconds.items():
        table[name] = {"seconds": [round(v, 2) for v in values], "fastest_s": round(min(values), 2),
                       "median_s": round(statistics.median(values), 2),
                       "speed_over_release_default_fastest": round(min(baseline) / min(values), 3),
                       "speed_over_release_default_median": round(statistics.median(baseline) / statistics.median(values), 3)}
        row = table[name]
        print(f"{name:22s} fastest {row['fastest_s']:6.1f} s  median {row['median_s']:6.1f} s  "
              f"speed / release default: {row['speed_over_release_default_fastest']:.2f} (fastest), "
              f"{row['speed_over_release_default_median']:.2f} (median)")
    if args.log:
        append(REPO / "benchmarks" / "results" / "threads.jsonl",
               run_record(commit, release=RELEASE, busy=args.busy,
                          pipeline=f"detect_objects, {args.size} x {args.size} crop of detect.py's raster",
                          results=table))


if __name__ == "__main__":
    main()
