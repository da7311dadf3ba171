"""Runs killed while writing (SIGKILL, no clean-up code runs): what is on disk afterwards.

For each writer, one uninterrupted write is timed, then ten writes are killed at moments spread
over that time (the first at once, the last near the end). After each kill of a save or of
detection's layer writer the previous output must be whole and readable (or the new one, when the
kill came after the write finished), no file at a final path may be partial, and the next write
must clear what the killed one left. After a killed export, ``prepare_data`` must read the earlier
export whole (or the new one, when the kill came after it was staged), and the next export must
clear what the killed one left.

Each write runs in a child Python that imports geolearn, says it is ready and then waits for the
word to go, so that a kill moment falls inside the write itself rather than in Python's start-up.
(Forked children hang: torch's OpenMP threads do not survive a fork once the parent has used them.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch

from geolearn import export_training_data, prepare_data
from geolearn.atomic import partial_files
from geolearn.data.esri import read_map_txt
from geolearn.data.georef import write_features
from geolearn.data.normalization import Normalization
from geolearn.data.esri import ClassInfo
from geolearn.learn.config import ModelConfig
from geolearn.learn.package import load_state_dict, resolve_model, save_package
from geolearn.sample import make_scene

KILLS = 10

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_faults
name, args = json.loads(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
getattr(test_faults, name)(*args)
print("done", flush=True)
"""


def _ready_children(name: str, runs: list[tuple]) -> list[subprocess.Popen]:
    """One child per run, all started at once (their imports overlap), each waiting to go."""
    import geolearn

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(geolearn.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(Path(__file__).parent), json.dumps([name, args])],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                for args in runs]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    return children


def _go(child: subprocess.Popen) -> None:
    child.stdin.write("go\n")
    child.stdin.flush()


def _timed(child: subprocess.Popen) -> float:
    """Seconds from go to the write's end (not the interpreter's, which takes a while after torch)."""
    started = time.perf_counter()
    _go(child)
    assert child.stdout.readline().strip() == "done", "the uninterrupted write failed"
    duration = time.perf_counter() - started
    assert child.wait(120) == 0
    return duration


def _kill_after(child: subprocess.Popen, moment: float) -> None:
    _go(child)
    time.sleep(moment)
    child.kill()
    child.wait(30)


def _moments(duration: float) -> list[float]:
    """Ten kill moments spread over the first 80 % of a write of ``duration`` seconds, the first at
    once: a killed write may run faster than the timed one, and a kill after it ends tests nothing."""
    return [0.8 * duration * k / KILLS for k in range(KILLS)]


# Kills that must fall inside the write for a test to mean something. Not more: the machine is
# shared, and on a busy one a write outruns its timing now and then (seen: 4 of 10 inside).
INSIDE = KILLS // 3


# ----------------------------------------------------------------------------- save


def _weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"encoder.0.weight": torch.randn(4, 3, 3, 3, generator=generator),
            "head.weight": torch.randn(4_000_000, generator=generator)}  # 16 MB: the write takes a while


def _emd() -> dict:
    config = ModelConfig(class_infos=[ClassInfo(1, "tree", (0, 168, 132))], chip_size=64,
                         normalization=Normalization.for_rgb8(), n_bands=3)
    return config.to_emd("trees.pth")


def _save(folder: str, seed: int) -> None:
    save_package(Path(folder), "trees", state_dict=_weights(seed), emd=_emd())


def test_a_killed_save_leaves_the_previous_package_and_the_next_save_clears_up(tmp_path: Path) -> None:
    folder = tmp_path / "trees"
    timing, *killed = _ready_children("_save", [(str(tmp_path / "timing"), 1)] + [(str(folder), 1)] * KILLS)
    seen = {"previous": 0, "new": 0}
    for child, moment in zip(killed, _moments(_timed(timing))):
        _save(str(folder), 0)  # the previous package; also clears what the last killed save left
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        _kill_after(child, moment)
        emd, _ = resolve_model(folder)  # whole and readable: the EMD, the weights, the .dlpk
        weights = load_state_dict(folder / "trees.pth")
        with zipfile.ZipFile(folder / "trees.dlpk") as archive:
            assert archive.testzip() is None
        if torch.equal(weights["head.weight"], _weights(0)["head.weight"]):
            seen["previous"] += 1
        else:
            assert torch.equal(weights["head.weight"], _weights(1)["head.weight"]), f"kill at {moment:.3f} s"
            seen["new"] += 1
    assert seen["previous"] >= INSIDE  # enough kills fell inside the write
    _save(str(folder), 2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------- detect's output


def _frame(count: int) -> gpd.GeoDataFrame:
    corners = np.arange(count, dtype=np.float64)[:, None] * np.array([1.0, 0.0, 1.0, 0.0]) + [0.0, 0.0, 0.8, 0.8]
    return gpd.GeoDataFrame({"Class": ["tree"] * count, "Confidence": np.full(count, 90.0)},
                            geometry=shapely.box(*corners.T), crs="EPSG:32633")


def _write_layer(path: str, count: int) -> None:
    write_features(_frame(count), path, overwrite=True)


@pytest.mark.parametrize("suffix", [".gpkg", ".shp"])
def test_a_killed_detection_write_leaves_the_previous_layer_and_the_next_write_clears_up(tmp_path: Path, suffix):
    layer = tmp_path / f"trees{suffix}"
    previous, new = 1_000, 60_000
    timing, *killed = _ready_children("_write_layer", [(str(tmp_path / f"timing{suffix}"), new)]
                                      + [(str(layer), new)] * KILLS)
    seen = {previous: 0, new: 0}
    for child, moment in zip(killed, _moments(_timed(timing))):
        _write_layer(str(layer), previous)
        assert partial_files(layer, (".shx", ".dbf", ".prj", ".cpg")) == []
        _kill_after(child, moment)
        found = gpd.read_file(layer)  # whole and readable
        assert len(found) in seen, f"kill at {moment:.3f} s: {len(found)} features"
        seen[len(found)] += 1
    assert seen[previous] >= INSIDE
    _write_layer(str(layer), previous)
    assert partial_files(layer, (".shx", ".dbf", ".prj", ".cpg")) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------- export


def _export(raster: str, labels: str, root: str, stride: int = 64) -> None:
    export_training_data(raster, labels, output_location=root, tile_size=128, stride_size=stride, overwrite=True,
                         progress=False)


def _listed_and_present(root: Path) -> tuple[int, set[str]]:
    listed = {name for pair in read_map_txt(root) for name in pair}
    present = {p.name for folder in ("images", "labels") for p in (root / folder).iterdir()}
    return len(read_map_txt(root)), present - listed


def test_a_killed_export_leaves_the_earlier_one_and_the_next_export_clears_up(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=640, seed=2)
    root = tmp_path / "chips"
    sources = (str(scene.raster), str(scene.labels))
    # The killed exports use another stride, so that the earlier export and theirs differ in chip count.
    runs = [(*sources, str(tmp_path / "timing"), 96)] + [(*sources, str(root), 96)] * KILLS
    timing, *killed = _ready_children("_export", runs)
    outcomes = []
    for child, moment in zip(killed, _moments(_timed(timing))):
        _export(*sources, str(root))  # clears what the last killed export left
        assert not list(root.glob(".exporting-*"))
        earlier, unlisted = _listed_and_present(root)
        assert earlier > 0 and unlisted == set()
        _kill_after(child, moment)
        data = prepare_data(root, chip_size=128, batch_size=4)  # finishes a swap the kill interrupted
        chips, unlisted = _listed_and_present(root)
        assert unlisted == set() and len(data.train_ds) + len(data.valid_ds) == chips
        outcomes.append("earlier" if chips == earlier else "new")
    finished = _listed_and_present(tmp_path / "timing")[0]
    assert finished != earlier and set(outcomes) <= {"earlier", "new"}
    assert outcomes.count("earlier") >= INSIDE, outcomes
    _export(*sources, str(root))
    assert _listed_and_present(root)[1] == set() and not list(root.glob(".exporting-*"))
