"""Regenerates the bundled sample scene (sample_scene.tif and its pool/tree labels).

Usage:
    python sample_data/make_sample_scene.py [--out DIR] [--size 2560] [--seed 2026]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    from geolearn.sample import make_scene
except ModuleNotFoundError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from geolearn.sample import make_scene


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--size", type=int, default=2560, help="width and height in pixels")
    parser.add_argument("--seed", type=int, default=2026, help="random seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("geolearn").setLevel(logging.INFO)
    files = make_scene(args.out, args.size, seed=args.seed, name="sample_scene")
    for path in (files.raster, files.labels, files.labels_4326):
        print(f"{path}  ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
