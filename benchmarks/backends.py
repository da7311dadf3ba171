"""Inference backends on the same windows: speed, and how closely their detections match torch float32.

    python benchmarks/backends.py [--windows 16] [--top 0.001] [--log]

Issue 17 ships a backend other than torch only if it is faster *and* its detections match torch
float32's as closely as torch bfloat16's do. This runs, in one process and on the same windows
of the sample scene (512 px, tiled to cover ``--windows`` windows, batches of 2, channels_last), the
network of ``benchmarks/detect.py``'s package (ResNet-50, random weights; made by detect.py)
through:

* ``torch fp32`` — the reference;
* ``torch bf16`` — autocast (what geolearn runs where the CPU is fast at bf16);
* ``torch folded`` — :func:`geolearn.models.folding.inference_network` (batch norms folded into the
  convolutions, weights cast once), in the machine's precision: what detection runs uncompiled;
* ``torch compiled`` — :class:`geolearn.models.compiled.CompiledNetwork`, in the machine's precision;
* ``openvino`` — OpenVINO's CPU plugin on the converted network, at its default precision hint for
  this CPU (bf16 where the CPU has it, else f32), when the ``openvino`` package is installed.

Each backend's outputs go through the same decoding and per-window NMS
(:func:`geolearn.models.postprocess.detect`) at one score threshold: the score that the best
``--top`` share of torch float32's anchor scores pass (random weights score every anchor near the
prior; a fixed threshold would keep none or all); a box "matches" when torch float32 has one of
the same class at IoU > 0.9. Printed per backend: seconds per batch (median after a warm-up; compile/convert time apart), windows/s, boxes,
and the share of its boxes matched and of torch float32's boxes it finds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from torchvision.ops import box_iou

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geolearn.learn.retinanet import RetinaNet  # noqa: E402
from geolearn.models.compiled import CompiledNetwork  # noqa: E402
from geolearn.models.folding import inference_network  # noqa: E402
from geolearn.models.postprocess import detect  # noqa: E402
from geolearn.models.precision import resolve_precision  # noqa: E402

PACKAGE = REPO / "benchmarks" / "_work" / "geolearn_resnet50_512"
CHIP = 512
BATCH = 2


def scene_windows(count: int) -> torch.Tensor:
    """``count`` 512 px windows of the sample scene, raw uint8 values as float, [N, 3, 512, 512]."""
    with rasterio.open(REPO / "sample_data" / "sample_scene.tif") as src:
        scene = src.read([1, 2, 3])
    side = scene.shape[1] // CHIP
    corners = [((i // side) % side * CHIP, i % side * CHIP) for i in range(count)]
    windows = [scene[:, row:row + CHIP, col:col + CHIP] for row, col in corners]
    return torch.from_numpy(np.stack(windows)).float()


def timed(run, batches: list[torch.Tensor]) -> tuple[list, float, float]:
    """Outputs per batch, seconds of the first call, median seconds of the others."""
    outputs, seconds = [], []
    for batch in batches:
        start = time.perf_counter()
        outputs.append([part.float() for part in run(batch)])
        seconds.append(time.perf_counter() - start)
    return outputs, seconds[0], statistics.median(seconds[1:])


def openvino_runner(network: torch.nn.Module, example: torch.Tensor):
    import openvino as ov

    start = time.perf_counter()
    converted = ov.convert_model(network, example_input=example)
    compiled = ov.Core().compile_model(converted, "CPU")
    convert_s = time.perf_counter() - start
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")

    def run(images: torch.Tensor) -> list[torch.Tensor]:
        result = compiled(images.numpy())
        return [torch.from_numpy(result[index]) for index in range(len(result))]

    return run, convert_s, f"openvino {ov.__version__.split('-')[0]} ({hint})"


def detections(outputs: list, anchors: torch.Tensor, threshold: float) -> list:
    return [found for output in outputs for found in detect(output, anchors, CHIP, score_thresh=threshold,
                                                            nms_overlap=0.1)]


def agreement(found: list, reference: list) -> tuple[int, int, int]:
    """Boxes, of them matched in the reference (same class, IoU > 0.9), reference boxes found."""
    boxes = matched = found_ref = 0
    for mine, theirs in zip(found, reference):
        boxes += len(mine.chip_boxes)
        if len(mine.chip_boxes) and len(theirs.chip_boxes):
            iou = box_iou(mine.chip_boxes, theirs.chip_boxes) * (mine.labels[:, None] == theirs.labels[None, :])
            matched += int((iou.max(dim=1).values > 0.9).sum())
            found_ref += int((iou.max(dim=0).values > 0.9).sum())
    return boxes, matched, found_ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--top", type=float, default=0.001,
                        help="share of fp32's anchor scores above the threshold (default 0.001)")
    parser.add_argument("--log", action="store_true", help="append the run to benchmarks/results/backends.jsonl")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from runlog import append, git_commit, machine, run_record

    if not PACKAGE.exists():
        raise SystemExit(f"{PACKAGE} is missing: run `python benchmarks/detect.py --quick` once to make it")
    commit = git_commit("benchmarks/backends.py")
    model = RetinaNet.from_model(PACKAGE)
    network = model.model.eval().to(memory_format=torch.channels_last)
    images = model.config.normalization.normalize(scene_windows(args.windows)).contiguous(
        memory_format=torch.channels_last)
    batches = list(images.split(BATCH))
    dtype = resolve_precision(None, torch.device("cpu"))
    machine_precision = "bf16" if dtype is torch.bfloat16 else "fp32"

    runs = {}
    with torch.inference_mode():
        for name, run, precision in (("torch fp32", network, None), ("torch bf16", network, torch.bfloat16),
                                     (f"torch folded {machine_precision}", inference_network(network, dtype), dtype),
                                     (f"torch compiled {machine_precision}", CompiledNetwork(network), dtype)):
            runs[name] = (*timed(lambda batch: _autocast(run, precision, batch), batches), 0.0)
    try:
        run, convert_s, name = openvino_runner(network, batches[0])
        runs[name] = (*timed(run, batches), convert_s)
    except ImportError:
        print("openvino is not installed: pip install openvino")

    scores = torch.cat([output[0].flatten() for output in runs["torch fp32"][0]]).sigmoid()
    threshold = float(torch.quantile(scores, 1 - args.top))
    reference = detections(runs["torch fp32"][0], model.anchors, threshold)
    print(f"RetinaNet ResNet-50 (detect.py's package), {args.windows} windows of 512 px, batch {BATCH}, "
          f"threshold {threshold:.4f} (top {args.top:.1%} of fp32's scores); {machine()['cpu']}, "
          f"{torch.get_num_threads()} threads")
    table = {}
    for name, (outputs, first_s, median_s, convert_s) in runs.items():
        boxes, matched, found_ref = agreement(detections(outputs, model.anchors, threshold), reference)
        total_ref = sum(len(d.chip_boxes) for d in reference)
        table[name] = {"median_s_per_batch": round(median_s, 3), "first_s": round(first_s + convert_s, 1),
                       "windows_per_s": round(BATCH / median_s, 2), "boxes": boxes,
                       "matched": matched, "reference_found": found_ref, "reference_boxes": total_ref}
        print(f"{name:28s} {median_s:6.2f} s/batch  {BATCH / median_s:5.2f} windows/s  "
              f"first {first_s + convert_s:5.1f} s  speed vs fp32 {runs['torch fp32'][2] / median_s:4.2f}x  "
              f"boxes {boxes:5d}  matched {matched}/{boxes}  fp32's found {found_ref}/{total_ref}")
    if args.log:
        append(REPO / "benchmarks" / "results" / "backends.jsonl", run_record(commit, results=table))


def _autocast(run, dtype, batch):
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        return run(batch)


if __name__ == "__main__":
    main()
