"""Export time and peak memory: the sample scene against a generated 8192 x 8192 scene.

    python benchmarks/bench_export.py [--size 8192] [--seed 0] [--repeat 1]

Each export runs in a fresh Python subprocess (the same default options as
arcgis.learn: 256 px tiles, 128 px stride, TIFF chips, PASCAL VOC labels); its peak
resident memory comes from the kernel's rusage of that child (``os.wait4``), so
one export's peak never hides another's. The goal is a peak-RSS ratio of about
1.0 between the large and the sample scene: windowed reading must keep memory
independent of the raster's size.

The generated scene (``geolearn.sample.make_scene``) and the exports go to
``benchmarks/_work/`` (git-ignored); the scene is generated once and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
SAMPLE_RASTER = REPO / "sample_data" / "sample_scene.tif"
SAMPLE_LABELS = REPO / "sample_data" / "sample_scene_labels.gpkg"

sys.path.insert(0, str(REPO))  # run from a checkout without installing


def _rss_mb_self() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(raster: str, labels: str, output: str) -> None:
    """Runs one export and prints its figures as JSON (executed in the subprocess)."""
    import rasterio

    from geolearn.data.export import export_training_data
    from geolearn.data.tiling import chip_windows

    rss_after_imports = _rss_mb_self()
    start = time.perf_counter()
    root = export_training_data(raster, labels, output_location=output, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    stats = json.loads((root / "esri_accumulated_stats.json").read_text())
    with rasterio.open(raster) as src:
        size = f"{src.width} x {src.height} x {src.count}"
        n_windows = len(chip_windows(src.width, src.height, (256, 256), (128, 128)))
    print(json.dumps({
        "size": size,
        "windows": n_windows,
        "chips": stats["NumTiles"],
        "objects": stats["FeatureStats"]["NumFeaturesTotal"],
        "seconds": seconds,
        "rss_after_imports_mb": rss_after_imports,
    }))


def run_export(name: str, raster: Path, labels: Path) -> dict:
    """One export in a subprocess; adds the child's peak RSS (MiB) from its rusage."""
    output = WORK / f"export_{name}"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(raster), str(labels), str(output)],
        stdout=subprocess.PIPE, text=True,
    )
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"export of {raster} failed with exit code {proc.returncode}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    figures.update(name=name, peak_rss_mb=usage.ru_maxrss / 1024)
    return figures


def generated_scene(size: int, seed: int) -> tuple[Path, Path]:
    """The generated scene's raster and labels, made on first use."""
    from geolearn.sample import make_scene

    folder = WORK / f"scene_{size}_seed{seed}"
    done = folder / "done.json"
    if not done.exists():
        print(f"generating a {size} x {size} scene in {folder} (once) ...", flush=True)
        start = time.perf_counter()
        files = make_scene(folder, size=size, seed=seed)
        done.write_text(json.dumps({"raster": str(files.raster), "labels": str(files.labels)}))
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    paths = json.loads(done.read_text())
    return Path(paths["raster"]), Path(paths["labels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="generated scene size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="exports per scene (the fastest is shown)")
    args = parser.parse_args()

    for path in (SAMPLE_RASTER, SAMPLE_LABELS):
        if not path.exists():
            raise SystemExit(f"{path} is missing: the sample scene is part of the repository.")
    WORK.mkdir(parents=True, exist_ok=True)
    big_raster, big_labels = generated_scene(args.size, args.seed)

    results = []
    for name, raster, labels in (("sample", SAMPLE_RASTER, SAMPLE_LABELS),
                                 (f"generated-{args.size}", big_raster, big_labels)):
        runs = [run_export(name, raster, labels) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["seconds"])
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        results.append(best)

    header = (f"{'scene':<16} {'raster (w x h x bands)':>24} {'windows':>8} {'chips':>7} {'objects':>8} "
              f"{'export s':>9} {'chips/s':>8} {'RSS after imports MiB':>22} {'peak RSS MiB':>13}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['name']:<16} {r['size']:>24} {r['windows']:>8} {r['chips']:>7} {r['objects']:>8} "
              f"{r['seconds']:>9.2f} {r['chips'] / r['seconds']:>8.1f} {r['rss_after_imports_mb']:>22.0f} "
              f"{r['peak_rss_mb']:>13.0f}")
    sample, big = results
    growth = [r["peak_rss_mb"] - r["rss_after_imports_mb"] for r in results]
    print(f"\npeak RSS ratio {big['name']} / sample: {big['peak_rss_mb'] / sample['peak_rss_mb']:.2f} "
          f"(goal ~1.0); memory the export itself added: sample {growth[0]:.0f} MiB, "
          f"{big['name']} {growth[1]:.0f} MiB")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        # Skip interpreter teardown: unloading torch (which geolearn imports) briefly adds
        # ~200 MiB of RSS that has nothing to do with the export being measured.
        sys.stdout.flush()
        os._exit(0)
    main()
