"""Detection over whole rasters: geolearn against plain torchvision, SAHI and DeepForest.

    python benchmarks/detect.py --setup-competitors     # once: SAHI and DeepForest in their own venv
    python benchmarks/detect.py                          # 8192 x 8192 for every tool, 20000 x 20000 for geolearn
    python benchmarks/detect.py --quick                  # 2048 x 2048, geolearn and torchvision: does it work?

What is measured, on generated GeoTIFFs (tiled 256 px, DEFLATE; a 2048 x 2048 crop of the sample
scene repeated, written window by window, cached in ``benchmarks/_work/``), with one RetinaNet
ResNet-50 FPN of random weights for 512 px chips, heads that fire (so merging does real work),
at confidence 0.5 and adjacent windows overlapping by 128 px (25 %):

* ``geolearn``: ``RetinaNet.from_model(package).detect_objects(raster)``, all defaults (bf16
  autocast where the CPU is fast at it, channels_last, windows read in a background thread,
  batches of 2 windows on a CPU).
* ``torchvision``: the reference "how fast can plain torchvision go" — torchvision's own
  ``retinanet_resnet50_fpn(weights=None, weights_backbone=None)`` (transform set to the chip
  size, so no resizing to 800 px) over the same windows, read with rasterio in batches of 8, under
  the same precision (bf16 autocast where geolearn uses it, channels_last), with no seam logic and
  one ``batched_nms`` at the end. ``torchvision-fp32`` is the same loop in float32 (not run by
  default; it separates what precision buys from what the pipeline does).
* ``sahi``: ``sahi.predict.get_sliced_prediction`` with SAHI's ``TorchVisionDetectionModel``
  around the same torchvision network (512 px slices, overlap ratio 0.25, SAHI's default greedy
  merge, no extra full-image pass); float32, as SAHI has no precision option. SAHI reads the whole
  image into memory.
* ``deepforest``: ``deepforest.main.deepforest.predict_tile(path, patch_size=512,
  patch_overlap=0.25)`` around the same network (passed as ``model=``; DeepForest's own
  ``RetinaNetHub`` is this torchvision RetinaNet, but its default transform would upsample every
  512 px patch to 800 px and its constructor downloads ImageNet weights), batch 8; its
  default ``dataloader_strategy='single'`` reads the whole image into memory as float32. float32:
  with Lightning's ``precision='bf16-mixed'`` (``create_trainer``) DeepForest 2.1 fails on the
  bfloat16 boxes.
  ``deepforest-window`` (not run by default) is its streaming ``dataloader_strategy='window'``.
* ``geolearn-compiled`` (not run by default): ``geolearn`` with ``detect_objects(..., compiled=True)``;
  its seconds include compiling the network (from inductor's disk cache after the first run).
* ``geolearn-openvino`` (not run by default): ``geolearn``'s pipeline with the network run by
  OpenVINO's CPU plugin (converted at the first batch, at the plugin's default precision for the
  CPU; a short last batch padded to a full one), put in place of
  :func:`geolearn.inference.runner.network_runner` in the child: issue 17's candidate backend,
  measured over the whole raster before any is shipped. Needs ``pip install openvino``.
* ``geolearn-release`` (not run by default): ``geolearn`` as of ``--release REF`` (default
  ``RELEASE``, main before issue 17's speed work), taken from git with ``git archive`` into
  ``benchmarks/_work/release-REF``: the "against its current release" figure, in the same run.

``--busy N`` keeps N other processes busy (a Python loop each) beside every tool for the whole
run, as on a shared machine; each tool's environment is this script's, so OpenMP's wait policy
is whatever each geolearn version chooses (docs/performance.md, "Threads on a shared machine").

The torchvision, SAHI and DeepForest networks load the same weights. Each tool runs in its own
subprocess (SAHI and DeepForest in ``benchmarks/_work/venv-competitors``, made by
``--setup-competitors`` with torch and torchvision pinned to geolearn's; they are not geolearn
dependencies) and first warms up on a 512 x 512 raster; its peak resident memory comes from the
kernel's rusage of that child (``os.wait4``). All figures come from ONE run and are printed as
ratios too: geolearn against each competitor's throughput (goal >= 3x SAHI and DeepForest),
geolearn's peak RSS on the large raster (goal <= 1.5 GB) and large/main (goal ~1.0, flat).
Only geolearn runs on the large raster (SAHI and DeepForest hold whole images in memory; a
20000 x 20000 image is 1.2 GB as uint8, 4.8 GB as DeepForest's float32) unless
``--all-on-large``. A tool that is not installed or fails is reported, with why, and the
run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
RESULTS = REPO / "benchmarks" / "results" / "detect.jsonl"
SAMPLE_RASTER = REPO / "sample_data" / "sample_scene.tif"
COMPETITOR_VENV = WORK / "venv-competitors"
# Pinned so that the competitors run the very torch geolearn runs (the newest this machine's
# package mirror serves), and versions known to accept it.
COMPETITOR_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "sahi==0.12.8", "deepforest==2.1.0"]

CHIP = 512
PADDING = CHIP // 8  # geolearn's default: adjacent windows overlap by 2 * PADDING = 128 px
OVERLAP = 2 * PADDING
THRESHOLD = 0.5
NMS_OVERLAP = 0.1
BATCH = 8
CLASSES = ["pool", "tree"]
TILE = 2048  # side of the sample-scene crop that the generated rasters repeat
TILE_OFFSET = 256  # where the crop starts in the 2560 x 2560 sample scene (all of it valid)
# Bias of the torchvision classification logits: with torchvision's prior bias (-4.6) random weights
# never reach 0.5; with this one the bare bf16 loop finds about as many boxes on the 2048 x 2048
# raster as geolearn's network (1467 against 1405), so both merge as much.
TORCHVISION_CLS_BIAS = -0.47

ALL_TOOLS = ["geolearn", "geolearn-compiled", "geolearn-openvino", "geolearn-release", "torchvision", "torchvision-fp32", "sahi", "deepforest", "deepforest-window"]
DEFAULT_TOOLS = ["geolearn", "torchvision", "sahi", "deepforest"]
COMPETITORS = {"sahi", "deepforest", "deepforest-window"}  # run in the competitors' venv
WHOLE_IMAGE = {"sahi", "deepforest"}  # load the whole raster into memory
RELEASE = "abe6aaa"  # main before issue 17's first change (OpenMP's wait policy)
BUSY_LOOP = "while True: pass"


# ---------------------------------------------------------------------------- data and models


def benchmark_raster(size: int) -> Path:
    """A ``size`` x ``size`` tiled, compressed GeoTIFF, written window by window (made once)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    path = WORK / f"scene_{size}.tif"
    if path.exists():
        return path
    print(f"writing {path.name}: {size} x {size} x 3, tiled, DEFLATE (once) ...", flush=True)
    start = time.perf_counter()
    with rasterio.open(SAMPLE_RASTER) as src:
        crop = Window(TILE_OFFSET, TILE_OFFSET, TILE, TILE)
        tile = src.read(window=crop)  # [3, 2048, 2048] uint8, 12 MiB
        crs, transform = src.crs, src.window_transform(crop)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
        "crs": crs, "transform": transform,  # no nodata: every window is valid, no tool skips any
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2,
        "interleave": "pixel", "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS",
    }
    step = 1024  # divides TILE and is a multiple of the 256 px TIFF tiles: whole tiles per write
    partial = path.with_suffix(".partial.tif")
    with rasterio.Env(GDAL_CACHEMAX=256 * 2**20), rasterio.open(partial, "w", **profile) as dst:
        for row in range(0, size, step):
            for col in range(0, size, step):
                height, width = min(step, size - row), min(step, size - col)
                r, c = row % TILE, col % TILE
                block = np.ascontiguousarray(tile[:, r:r + height, c:c + width])
                dst.write(block, window=Window(col, row, width, height))
    os.replace(partial, path)
    print(f"  done in {time.perf_counter() - start:.0f} s ({path.stat().st_size / 2**20:.0f} MiB)", flush=True)
    return path


def prepare_models() -> tuple[Path, Path]:
    """The geolearn model package and the torchvision weights (made once, in a subprocess)."""
    package = WORK / f"geolearn_resnet50_{CHIP}"
    weights = WORK / f"torchvision_retinanet_resnet50_{CHIP}.pt"
    if not (package / f"{package.name}.emd").exists() or not weights.exists():
        print("building the models (once) ...", flush=True)
        subprocess.run([sys.executable, __file__, "--child", "prepare", "--out", str(WORK)], check=True)
    return package, weights


def child_prepare(out: Path) -> None:
    """Saves a geolearn package (random weights, heads that fire) and torchvision weights."""
    import torch
    import torchvision

    from geolearn.data.esri import ClassInfo
    from geolearn.data.normalization import Normalization
    from geolearn.learn.config import ModelConfig
    from geolearn.learn.retinanet import RetinaNet

    config = ModelConfig(
        class_infos=[ClassInfo(1, "pool", (0, 0, 255)), ClassInfo(2, "tree", (0, 255, 0))],
        chip_size=CHIP,
        normalization=Normalization.for_rgb8(),
        n_bands=3,
        backbone="resnet50",
    )
    torch.manual_seed(0)
    model = RetinaNet.from_config(config)  # random weights, no training data: build, save, reload
    torch.nn.init.normal_(model.model.classifier[-1].weight, std=0.01)  # some anchors above the threshold
    model.save(out / f"geolearn_resnet50_{CHIP}", compute_metrics=False)

    torch.manual_seed(0)
    network = torchvision_network(torchvision)
    torch.nn.init.constant_(network.head.classification_head.cls_logits.bias, TORCHVISION_CLS_BIAS)
    torch.save(network.state_dict(), out / f"torchvision_retinanet_resnet50_{CHIP}.pt")


def torchvision_network(torchvision):
    """torchvision's RetinaNet ResNet-50 FPN for CHIP px inputs, random weights, our thresholds."""
    return torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=len(CLASSES) + 1,
        min_size=CHIP, max_size=CHIP,  # the chip as it is: no resizing to 800 px
        score_thresh=THRESHOLD, nms_thresh=NMS_OVERLAP, detections_per_img=300,
    )


# ---------------------------------------------------------------------------- the children


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _bf16_is_fast() -> bool:
    """What geolearn's precision 'auto' decides on a CPU (AMX or AVX512-BF16), without geolearn."""
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "amx_bf16" in flags or "avx512_bf16" in flags


def child_geolearn(raster: Path, warmup: Path, package: Path, compiled: bool = False) -> dict:
    # geolearn before torch, as its docs ask: it sets OpenMP's wait policy before torch loads.
    from geolearn.learn.retinanet import RetinaNet
    from geolearn.models.precision import resolve_precision

    import torch

    model = RetinaNet.from_model(package)
    dtype = resolve_precision(None, torch.device("cpu"))  # what detect_objects does with the default
    options = {"compiled": True} if compiled else {}  # the release has no such argument
    model.detect_objects(warmup, progress=False, **options)
    ready = _rss_mib()
    start = time.perf_counter()
    frame = model.detect_objects(raster, progress=False, **options)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "boxes": len(frame), "rss_ready_mib": ready,
                "precision": "bf16" if dtype == torch.bfloat16 else "fp32", "version": _version("geolearn")}


def openvino_network_runner(model, anchors, chip_size, *, score_thresh, nms_overlap, class_agnostic, **_):
    """geolearn's ``network_runner`` with the network run by OpenVINO (the ``geolearn-openvino`` tool)."""
    import openvino as ov
    import torch
    from geolearn.models.postprocess import detect

    runs = {}

    def run_batch(crops):
        if "network" not in runs:  # converted at the first batch, at its size: one static shape
            start = time.perf_counter()
            runs["network"] = ov.Core().compile_model(ov.convert_model(model, example_input=crops), "CPU")
            runs["size"], runs["convert_s"] = len(crops), time.perf_counter() - start
            runs["hint"] = str(runs["network"].get_property("INFERENCE_PRECISION_HINT"))
        padded = torch.zeros((runs["size"], *crops.shape[1:]), dtype=crops.dtype)
        padded[:len(crops)] = crops
        result = runs["network"](padded.numpy())
        output = [torch.from_numpy(result[index])[:len(crops)] for index in range(2)]
        return detect(output, anchors, chip_size, score_thresh=score_thresh, nms_overlap=nms_overlap,
                      class_agnostic=class_agnostic)

    run_batch.runs = runs
    return run_batch


def child_openvino(raster: Path, warmup: Path, package: Path) -> dict:
    import openvino as ov

    from geolearn.inference import predict
    from geolearn.learn.retinanet import RetinaNet

    runners = []

    def runner(*args, **kwargs):
        runners[:] = [openvino_network_runner(*args, **kwargs)]  # the warm-up's converted network let go
        return runners[0]

    predict.network_runner = runner  # the rest of detect_objects is geolearn's own
    model = RetinaNet.from_model(package)
    model.detect_objects(warmup, progress=False)
    ready = _rss_mib()
    start = time.perf_counter()
    frame = model.detect_objects(raster, progress=False)
    seconds = time.perf_counter() - start
    runs = runners[0].runs
    return {"seconds": seconds, "boxes": len(frame), "rss_ready_mib": ready, "convert_s": runs["convert_s"],
            "precision": runs["hint"], "version": ov.__version__.split("-")[0]}


def _window_offsets(size: int, stride: int) -> list[int]:
    """geolearn.data.tiling.axis_offsets(size, CHIP, stride), for a venv without geolearn."""
    offsets = list(range(0, size - CHIP + 1, stride))
    if offsets[-1] + CHIP < size:
        offsets.append(size - CHIP)
    return offsets


def child_torchvision(raster: Path, warmup: Path, weights: Path, bf16: bool) -> dict:
    import contextlib

    import rasterio
    import torch
    import torchvision
    from rasterio.windows import Window
    from torchvision.ops import batched_nms

    network = torchvision_network(torchvision)
    network.load_state_dict(torch.load(weights, weights_only=True))
    network.eval().to(memory_format=torch.channels_last)
    use_bf16 = bf16 and _bf16_is_fast()

    def run(path: Path) -> tuple[int, int]:
        boxes, scores, labels = [], [], []
        with rasterio.open(path) as src, torch.inference_mode():
            if src.width < CHIP or src.height < CHIP:
                raise SystemExit(f"{path}: the bare loop needs a raster of at least {CHIP} px per side")
            rows = _window_offsets(src.height, CHIP - OVERLAP)
            cols = _window_offsets(src.width, CHIP - OVERLAP)
            windows = [(col, row) for row in rows for col in cols]
            for first in range(0, len(windows), BATCH):
                batch = windows[first:first + BATCH]
                images = [torch.from_numpy(src.read(window=Window(col, row, CHIP, CHIP))).float().div_(255)
                          for col, row in batch]
                autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16
                            else contextlib.nullcontext())
                with autocast:
                    outputs = network(images)
                for (col, row), found in zip(batch, outputs):
                    boxes.append(found["boxes"].float() + torch.tensor([col, row, col, row], dtype=torch.float32))
                    scores.append(found["scores"].float())
                    labels.append(found["labels"])
        if not boxes:
            return len(windows), 0
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes, scores, labels, NMS_OVERLAP)
        return len(windows), len(keep)

    run(warmup)
    ready = _rss_mib()
    start = time.perf_counter()
    n_windows, n_boxes = run(raster)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "boxes": n_boxes, "windows": n_windows, "rss_ready_mib": ready,
                "precision": "bf16" if use_bf16 else "fp32", "version": _version("torchvision")}


def child_sahi(raster: Path, warmup: Path, weights: Path) -> dict:
    import torch
    import torchvision
    from sahi.models.torchvision import TorchVisionDetectionModel
    from sahi.predict import get_sliced_prediction

    network = torchvision_network(torchvision)
    network.load_state_dict(torch.load(weights, weights_only=True))
    model = TorchVisionDetectionModel(
        model=network, confidence_threshold=THRESHOLD, device="cpu",
        category_mapping={str(i): name for i, name in enumerate(["background", *CLASSES])},
    )

    def run(path: Path) -> int:
        with torch.inference_mode():
            result = get_sliced_prediction(
                str(path), model, slice_height=CHIP, slice_width=CHIP,
                overlap_height_ratio=OVERLAP / CHIP, overlap_width_ratio=OVERLAP / CHIP,
                perform_standard_pred=False,  # no extra whole-image pass: the same work as the others
                batch_size=BATCH, verbose=0,
            )
        return len(result.object_prediction_list)

    run(warmup)
    ready = _rss_mib()
    start = time.perf_counter()
    n_boxes = run(raster)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "boxes": n_boxes, "rss_ready_mib": ready, "precision": "fp32",
            "version": _version("sahi")}


def child_deepforest(raster: Path, warmup: Path, weights: Path, strategy: str) -> dict:
    import logging
    import warnings

    import torch
    import torchvision
    from deepforest import main

    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    label_dict = {name: i for i, name in enumerate(["background", *CLASSES])}
    # DeepForest's RetinaNetHub is this torchvision RetinaNet with hub methods, but its constructor
    # fetches ImageNet backbone weights from the internet; the same network goes in through model=.
    network = torchvision_network(torchvision)
    network.load_state_dict(torch.load(weights, weights_only=True))
    model = main.deepforest(
        model=network,
        config_args={"model": {"name": None}, "batch_size": BATCH, "workers": 0, "accelerator": "cpu",
                     "devices": 1, "nms_thresh": NMS_OVERLAP, "score_thresh": THRESHOLD,
                     "log_root": str(WORK / "deepforest_logs"), "num_classes": len(label_dict),
                     "label_dict": label_dict},
    )
    model.set_labels(label_dict)
    # float32: with Lightning's precision="bf16-mixed" DeepForest 2.1 fails turning the boxes into
    # a DataFrame (numpy has no bfloat16).
    model.create_trainer(precision="32-true", enable_progress_bar=False, enable_model_summary=False, logger=False)

    def run(path: Path) -> int:
        found = model.predict_tile(str(path), patch_size=CHIP, patch_overlap=OVERLAP / CHIP,
                                   iou_threshold=NMS_OVERLAP, dataloader_strategy=strategy)
        return 0 if found is None else len(found)

    run(warmup)
    ready = _rss_mib()
    start = time.perf_counter()
    n_boxes = run(raster)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "boxes": n_boxes, "rss_ready_mib": ready, "precision": "fp32",
                "version": _version("deepforest")}


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "checkout" if package == "geolearn" else "?"


def child_main(args: argparse.Namespace) -> None:
    """Runs one tool on one raster; writes its figures as JSON to ``args.out``."""
    if args.tool == "prepare":
        child_prepare(Path(args.out))
        return
    raster, warmup, weights = Path(args.raster), Path(args.warmup), Path(args.weights)
    # stdout belongs to the tools (DeepForest and SAHI print); the figures go to a file.
    if args.tool in ("geolearn", "geolearn-compiled", "geolearn-release"):
        figures = child_geolearn(raster, warmup, Path(args.package), compiled=args.tool == "geolearn-compiled")
    elif args.tool == "geolearn-openvino":
        figures = child_openvino(raster, warmup, Path(args.package))
    elif args.tool in ("torchvision", "torchvision-fp32"):
        figures = child_torchvision(raster, warmup, weights, bf16=args.tool == "torchvision")
    elif args.tool == "sahi":
        figures = child_sahi(raster, warmup, weights)
    elif args.tool in ("deepforest", "deepforest-window"):
        strategy = "window" if args.tool == "deepforest-window" else "single"
        figures = child_deepforest(raster, warmup, weights, strategy)
    else:
        raise SystemExit(f"unknown tool {args.tool!r}")
    import torch

    figures.update(torch=torch.__version__.split("+")[0], threads=torch.get_num_threads())
    Path(args.out).write_text(json.dumps(figures))


# ---------------------------------------------------------------------------- the parent


def competitor_python() -> Path:
    return COMPETITOR_VENV / "bin" / "python"


def setup_competitors() -> None:
    """Creates the competitors' venv (no system site-packages) and installs the pinned packages."""
    if not competitor_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(COMPETITOR_VENV)], check=True)
    subprocess.run([str(competitor_python()), "-m", "pip", "install", *COMPETITOR_PACKAGES], check=True)


def release_checkout(ref: str) -> Path:
    """geolearn's package as of git ``ref``, extracted once into ``benchmarks/_work/release-REF``."""
    folder = WORK / f"release-{ref}"
    if not (folder / "geolearn").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "geolearn.partial"  # renamed once whole: a killed extraction is redone
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "geolearn"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive.stdout, check=True)
        (partial / "geolearn").rename(folder / "geolearn")
        partial.rmdir()
    return folder


def run_tool(tool: str, raster: Path, warmup: Path, package: Path, weights: Path, code: Path = REPO) -> dict:
    """One tool on one raster in a subprocess; its figures plus the child's peak RSS, or why it failed."""
    python = competitor_python() if tool in COMPETITORS else Path(sys.executable)
    if not python.exists():
        return {"error": f"{COMPETITOR_VENV} is missing: run `python benchmarks/detect.py --setup-competitors`"}
    name = raster.stem
    out = WORK / "results" / f"{tool}_{name}.json"
    log = WORK / "results" / f"{tool}_{name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = dict(os.environ)
    if tool in COMPETITORS:
        env.pop("PYTHONPATH", None)  # nothing of geolearn's venv or checkout in the competitors' process
    command = [str(python), __file__, "--child", tool, "--raster", str(raster), "--warmup", str(warmup),
               "--package", str(package), "--weights", str(weights), "--out", str(out), "--code", str(code)]
    print(f"  {tool} on {raster.name} ...", end=" ", flush=True)
    start = time.perf_counter()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=WORK, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if code != 0 or not out.exists():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        why = lines[-1] if lines else "no output"
        if code < 0:
            why = f"killed by signal {-code} (out of memory?); last output: {why}"
        print(f"failed ({wall:.0f} s)")
        return {"error": f"exit code {code}: {why[:300]} (full log: {log.relative_to(REPO)})"}
    figures = json.loads(out.read_text())
    figures["peak_rss_mib"] = usage.ru_maxrss / 1024
    print(f"{wall:.0f} s", flush=True)
    return figures


def best_of(runs: list[dict]) -> dict:
    """The fastest of a tool's runs, with the highest peak RSS of them all; an error if none worked."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    best = dict(min(good, key=lambda r: r["seconds"]))
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in good)
    best["runs"] = len(good)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, help="side of the raster every tool runs on (default 8192; --quick 2048)")
    parser.add_argument("--large-size", type=int,
                        help="side of the raster for the memory check, geolearn only unless --all-on-large "
                             "(default 20000; --quick and 0: none)")
    parser.add_argument("--tools", help=f"comma-separated, from {','.join(ALL_TOOLS)} "
                                        f"(default {','.join(DEFAULT_TOOLS)}; --quick: geolearn,torchvision)")
    parser.add_argument("--all-on-large", action="store_true",
                        help="run every tool on the large raster too, not only geolearn (SAHI and DeepForest "
                             "hold the whole image in memory)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all tools; the fastest run of each is shown (default 1)")
    parser.add_argument("--release", default=RELEASE, help=f"git ref of geolearn-release (default {RELEASE})")
    parser.add_argument("--busy", type=int, default=0, help="other processes kept busy during the run (default 0)")
    parser.add_argument("--log", action="store_true", help=f"append the run to {RESULTS.relative_to(REPO)}")
    parser.add_argument("--quick", action="store_true", help="a short check that the script works")
    parser.add_argument("--setup-competitors", action="store_true",
                        help=f"create {COMPETITOR_VENV.relative_to(REPO)} with {' '.join(COMPETITOR_PACKAGES)}")
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from runlog import git_commit

    commit = git_commit("benchmarks/detect.py")  # the code this run starts with
    if args.setup_competitors:
        setup_competitors()
        return
    size = args.size or (2048 if args.quick else 8192)
    large = args.large_size if args.large_size is not None else (0 if args.quick else 20000)
    tools = (args.tools or ("geolearn,torchvision" if args.quick else ",".join(DEFAULT_TOOLS))).split(",")
    unknown = set(tools) - set(ALL_TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; choose from {ALL_TOOLS}")
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: at least 1 round")
    if size < CHIP or (large and large < CHIP):
        parser.error(f"rasters need at least {CHIP} px per side")

    rasters = {size: benchmark_raster(size)}
    if large:
        rasters[large] = benchmark_raster(large)
    warmup = benchmark_raster(CHIP)
    package, weights = prepare_models()
    print(f"RetinaNet ResNet-50 FPN, chip {CHIP} px, overlap {OVERLAP} px, batch {BATCH} (geolearn: its default), "
          f"threshold {THRESHOLD}, {os.cpu_count()} CPUs", flush=True)

    code = {tool: REPO for tool in tools}
    if "geolearn-release" in tools:
        code["geolearn-release"] = release_checkout(args.release)
        print(f"geolearn-release: geolearn as of {args.release}")
    if args.busy:
        print(f"{args.busy} other busy process(es) for the whole run")
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy)]
    runs: dict[tuple[str, int], list[dict]] = {}
    skipped: list[str] = []
    try:
        for round_ in range(args.repeat):  # rounds, not back-to-back repeats: load from elsewhere hits every tool alike
            for side, raster in rasters.items():
                for tool in tools:
                    if side == large and side != size and tool != "geolearn" and not args.all_on_large:
                        if round_ == 0:
                            why = "it loads the whole image; " if tool in WHOLE_IMAGE else ""
                            skipped.append(f"{tool} not run on {side} x {side}: {why}--all-on-large runs it")
                        continue
                    runs.setdefault((tool, side), []).append(run_tool(tool, raster, warmup, package, weights,
                                                                      code[tool]))
    finally:
        for process in busy:
            process.kill()
    results = [(tool, side, best_of(tool_runs)) for (tool, side), tool_runs in runs.items()]

    report(results, skipped, size, large)
    if args.log:
        log_run(results, args, commit)


def log_run(results: list[tuple[str, int, dict]], args: argparse.Namespace, commit: str) -> None:
    """Appends the run to ``benchmarks/results/detect.jsonl``: per tool and raster its seconds, MP/s,
    boxes and peak RSS (the fastest of the rounds), with the machine, the commit and the load."""
    from runlog import append, run_record

    figures = {f"{tool} {side}": {key: r[key] for key in ("seconds", "mp_s", "boxes", "peak_rss_mib", "precision")}
               for tool, side, r in results if "error" not in r}
    append(RESULTS, run_record(commit, busy=args.busy,
                               release=args.release if "geolearn-release" in (args.tools or "") else None,
                               rounds=args.repeat, results=figures))


def report(results: list[tuple[str, int, dict]], skipped: list[str], size: int, large: int) -> None:
    print()
    header = (f"{'tool':<18} {'version':>9} {'precision':>9} {'raster':>13} {'boxes':>7} {'seconds':>8} "
              f"{'MP/s':>7} {'RSS ready MiB':>14} {'peak RSS MiB':>13}")
    print(header)
    print("-" * len(header))
    ok = {}
    for tool, side, r in results:
        if "error" in r:
            print(f"{tool:<18} {'':>9} {'':>9} {f'{side} x {side}':>13}  not measured: {r['error']}")
            continue
        r["mp_s"] = side * side / 1e6 / r["seconds"]
        ok[tool, side] = r
        print(f"{tool:<18} {r['version']:>9} {r['precision']:>9} {f'{side} x {side}':>13} {r['boxes']:>7} "
              f"{r['seconds']:>8.1f} {r['mp_s']:>7.3f} {r['rss_ready_mib']:>14.0f} {r['peak_rss_mib']:>13.0f}")
    for line in skipped:
        print(f"  ({line})")
    if ok:
        first = next(iter(ok.values()))
        print(f"torch {first['torch']}, {first['threads']} threads; RSS ready = peak RSS after imports, model "
              f"and warm-up, before the timed run")
        rounds = max(r.get("runs", 1) for r in ok.values())
        if rounds > 1:
            print(f"seconds: the fastest of {rounds} rounds; peak RSS: the highest")

    print()
    geolearn = ok.get(("geolearn", size))
    if geolearn is not None:
        for tool in ("geolearn-compiled", "geolearn-openvino", "geolearn-release", "torchvision", "torchvision-fp32", "sahi", "deepforest", "deepforest-window"):
            other = ok.get((tool, size))
            if other is None:
                continue
            goal = {"sahi": " (goal >= 3)", "deepforest": " (goal >= 3)",
                    "geolearn-release": " (goal >= 1.5 beside a busy process, >= 1 idle)"}.get(tool, "")
            print(f"throughput geolearn / {tool} ({other['precision']}) on {size} x {size}: "
                  f"{geolearn['mp_s'] / other['mp_s']:.2f}x{goal}; peak RSS geolearn / {tool}: "
                  f"{geolearn['peak_rss_mib'] / other['peak_rss_mib']:.2f}")
    compiled, release = ok.get(("geolearn-compiled", size)), ok.get(("geolearn-release", size))
    if compiled is not None and release is not None:
        print(f"throughput geolearn-compiled / geolearn-release on {size} x {size}: "
              f"{compiled['mp_s'] / release['mp_s']:.2f}x")
    if large and large != size:
        for tool in ALL_TOOLS:
            small_run, large_run = ok.get((tool, size)), ok.get((tool, large))
            if small_run is None or large_run is None:
                continue
            goal = " (goal ~1.0, flat)" if tool == "geolearn" else ""
            print(f"peak RSS {tool} {large} x {large} / {size} x {size}: "
                  f"{large_run['peak_rss_mib'] / small_run['peak_rss_mib']:.2f}{goal}")
        big = ok.get(("geolearn", large))
        if big is not None:
            print(f"geolearn peak RSS on {large} x {large}: {big['peak_rss_mib']:.0f} MiB = "
                  f"{big['peak_rss_mib'] * 2**20 / 1e9:.2f} GB (goal <= 1.5 GB)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_parser = argparse.ArgumentParser()
        child_parser.add_argument("--child", dest="tool")
        for option in ("--raster", "--warmup", "--package", "--weights", "--out", "--code"):
            child_parser.add_argument(option)
        child_args = child_parser.parse_args()
        if child_args.tool in ("geolearn", "geolearn-compiled", "geolearn-openvino", "geolearn-release", "torchvision",
                               "torchvision-fp32", "prepare"):
            sys.path.insert(0, child_args.code or str(REPO))  # geolearn from a checkout, without installing
        child_main(child_args)
        # Skip interpreter teardown: unloading torch briefly adds RSS that has nothing to do with
        # the run being measured (as in bench_export.py).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    main()
