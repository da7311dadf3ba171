"""Shared builders of tiny training-data folders, made in tmp_path from code."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from geolearn.data.labels import ChipLabels, write_kitti, write_voc

@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """The session's .dlpk extractions go to a temporary cache, never the user's ~/.cache/geolearn.

    Set in os.environ so that subprocesses (the CLI tests) inherit it too.
    """
    before = os.environ.get("GEOLEARN_CACHE_DIR")
    os.environ["GEOLEARN_CACHE_DIR"] = str(tmp_path_factory.mktemp("geolearn-cache"))
    yield
    if before is None:
        os.environ.pop("GEOLEARN_CACHE_DIR", None)
    else:
        os.environ["GEOLEARN_CACHE_DIR"] = before


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never touch the network: outward connections fail as they would offline.

    Loopback stays open for local services (a Dask LocalCluster, say). Code that would
    download (torchvision's ImageNet weights) takes its offline path.
    """
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo
    local = ("127.0.0.1", "::1", "localhost", None, "")

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family == socket.AF_UNIX or host in local:
            return real_connect(sock, address)
        raise OSError(f"tests must not touch the network (tried {address!r})")

    def getaddrinfo(host, *args, **kwargs):
        if host in local:
            return real_getaddrinfo(host, *args, **kwargs)
        raise socket.gaierror(f"tests must not touch the network (looked up {host!r})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# A chip of 64 × 64 px with one bright object per box, on a dark noisy background.
CHIP = 64


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """Writes a [C, H, W] array as PNG/JPEG/TIFF by the file's suffix."""
    driver = {".png": "PNG", ".jpg": "JPEG", ".tif": "GTiff"}[path.suffix]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver=driver, width=pixels.shape[2], height=pixels.shape[1],
            count=pixels.shape[0], dtype=pixels.dtype,
        ) as dst:
            dst.write(pixels)
    return path


def chip_pixels(boxes, *, seed: int = 0, bands: int = 3, dtype: str = "uint8", size: int = CHIP) -> np.ndarray:
    """A dark chip with each xyxy pixel box filled bright."""
    rng = np.random.default_rng(seed)
    high = 255 if dtype == "uint8" else 10000
    pixels = (rng.random((bands, size, size)) * high * 0.2).astype(dtype)
    for xmin, ymin, xmax, ymax in boxes:
        pixels[:, int(ymin) : int(ymax), int(xmin) : int(xmax)] = int(high * 0.95)
    return pixels


# Chip stem -> (boxes, class tokens). Chip 3 is a background chip (empty label file).
VOC_CHIPS = {
    "000000000": ([[10, 12, 30, 20]], ["1"]),
    "000000001": ([[40, 40, 60, 56], [2, 2, 10, 10]], ["2", "1"]),
    "000000002": ([[20, 20, 44, 44]], ["2"]),
    "000000003": ([], []),
    "000000004": ([[5, 30, 25, 50]], ["1"]),
}


def esri_files(root: Path, classes: dict[int, str], mode: str, band_stats=None, bands: int = 3) -> None:
    """Writes the three Esri metadata files an ArcGIS export has."""
    emd = {
        "MetaDataMode": mode,
        "ImageHeight": CHIP,
        "ImageWidth": CHIP,
        "ImageSpaceUsed": "MAP_SPACE",
        "Classes": [{"Value": v, "Name": n, "Color": [10 * v, 20 * v, 30 * v]} for v, n in classes.items()],
    }
    (root / "esri_model_definition.emd").write_text(json.dumps(emd))
    stats = {"MetaDataMode": mode, "NumBands": bands}
    if band_stats is not None:
        stats["BandStatsState"] = band_stats
    (root / "esri_accumulated_stats.json").write_text(json.dumps(stats))
    suffix = ".xml" if mode == "PASCAL_VOC_rectangles" else ".txt"
    lines = [f"images\\{p.name} labels\\{p.stem}{suffix}\n" for p in sorted((root / "images").iterdir())]
    (root / "map.txt").write_text("".join(lines))


def make_folder(root: Path, chips=VOC_CHIPS, *, fmt: str = "voc", suffix: str = ".png", esri: bool = True,
                classes=None, bands: int = 3, dtype: str = "uint8") -> Path:
    """An export-like folder: images/ + labels/ (VOC or KITTI) + optional Esri files."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, (stem, (boxes, tokens)) in enumerate(chips.items()):
        write_image(root / "images" / f"{stem}{suffix}", chip_pixels(boxes, seed=i, bands=bands, dtype=dtype))
        labels = ChipLabels.from_lists(boxes, tokens)
        if fmt == "voc":
            write_voc(root / "labels" / f"{stem}.xml", labels, image_name=stem + suffix, width=CHIP, height=CHIP, depth=bands)
        else:
            write_kitti(root / "labels" / f"{stem}.txt", labels)
    if esri:
        mode = "PASCAL_VOC_rectangles" if fmt == "voc" else "KITTI_rectangles"
        esri_files(root, classes or {1: "pool", 2: "tree"}, mode, bands=bands)
    return root


@pytest.fixture
def voc_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "voc")


# Fifteen 64 px chips: enough for a train and a validation batch, quick on a CPU.
TINY_CHIPS = {f"{i:09d}": chip for i, chip in enumerate(list(VOC_CHIPS.values()) * 3)}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """prepare_data on TINY_CHIPS: 64 px chips, batches of 4, a third for validation."""
    from geolearn import prepare_data

    root = make_folder(tmp_path_factory.mktemp("tiny"), TINY_CHIPS)
    return prepare_data(root, chip_size=64, batch_size=4, val_split_pct=0.34)


def firing_retinanet(data, seed: int):
    """An untrained float32 RetinaNet whose classifier fires on scattered anchors (random last
    layer, seeded): varied scores and boxes for tests where two paths must agree on every box."""
    import torch

    from geolearn.learn.retinanet import RetinaNet

    torch.manual_seed(seed)
    model = RetinaNet(data, backbone="resnet18", pretrained=False, mixed_precision=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last = model.model.classifier[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * 0.03)
        last.bias.fill_(-2.0)
        regressor = model.model.box_regressor[-1]
        regressor.weight.copy_(torch.randn(regressor.weight.shape, generator=generator) * 0.01)
    return model


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported by its path; the test is skipped outside a source checkout."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if not path.exists():
        pytest.skip("run from a source checkout")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
