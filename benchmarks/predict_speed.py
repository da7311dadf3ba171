"""Speed of ``RetinaNet.predict`` on a large image: megapixels per second, bf16 against fp32.

    python benchmarks/predict_speed.py [--backbone resnet50] [--size 4096] [--chip-size 256] [--batch-size 8]

The model is built from a saved package (as a user would load it) with random weights and
heads that fire (so detection, seam filtering and merging do real work); the image is a
crop of the sample scene tiled up to ``--size``. Figures from one run, so the bf16/fp32
ratio holds on a noisy machine; fp32 is timed on a quarter of the image to keep the run short.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from geolearn.data.esri import ClassInfo  # noqa: E402
from geolearn.data.normalization import Normalization  # noqa: E402
from geolearn.learn.config import ModelConfig  # noqa: E402
from geolearn.learn.retinanet import RetinaNet  # noqa: E402


def scene_image(size: int) -> np.ndarray:
    with rasterio.open(REPO / "sample_data" / "sample_scene.tif") as src:
        tile = src.read(window=((512, 1536), (512, 1536))).transpose(1, 2, 0)
    reps = -(-size // tile.shape[0])
    return np.ascontiguousarray(np.tile(tile, (reps, reps, 1))[:size, :size])


def build_model(backbone: str, chip_size: int, precision: bool) -> RetinaNet:
    config = ModelConfig(
        class_infos=[ClassInfo(1, "pool", (0, 0, 255)), ClassInfo(2, "tree", (0, 255, 0))],
        chip_size=chip_size,
        normalization=Normalization.for_rgb8(),
        n_bands=3,
        backbone=backbone,
    )
    model = RetinaNet.from_config(config)
    model.mixed_precision = precision
    torch.manual_seed(0)
    torch.nn.init.normal_(model.model.classifier[-1].weight, std=0.01)  # some anchors above the threshold
    model.model.eval().to(memory_format=torch.channels_last)
    return model


def megapixels_per_second(model: RetinaNet, image: np.ndarray, batch_size: int) -> tuple[float, int]:
    model.predict(image[:512, :512], threshold=0.5, batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    boxes, _, _ = model.predict(image, threshold=0.5, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return image.shape[0] * image.shape[1] / 1e6 / seconds, len(boxes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    image = scene_image(args.size)
    print(f"{args.backbone}, chip {args.chip_size} px, batch {args.batch_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    bf16, n_boxes = megapixels_per_second(build_model(args.backbone, args.chip_size, True), image, args.batch_size)
    print(f"bf16: {bf16:.3f} MP/s on {args.size} x {args.size} ({image.shape[0] * image.shape[1] / 1e6:.1f} MP, "
          f"{n_boxes} boxes)")
    quarter = image[: args.size // 2, : args.size // 2]
    fp32, _ = megapixels_per_second(build_model(args.backbone, args.chip_size, False), quarter, args.batch_size)
    bf16_quarter, _ = megapixels_per_second(build_model(args.backbone, args.chip_size, True), quarter, args.batch_size)
    print(f"fp32: {fp32:.3f} MP/s, bf16 on the same quarter: {bf16_quarter:.3f} MP/s, ratio {bf16_quarter / fp32:.2f}")


if __name__ == "__main__":
    main()
