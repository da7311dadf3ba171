"""Tries bad inputs and faults as a new user would, and counts how each one ends.

    python benchmarks/error_probe.py            # the table, and the counts
    python benchmarks/error_probe.py --log      # also appends the counts to benchmarks/results/error_probe.jsonl

Each case does one wrong thing (a corrupt file, a wrong argument, a folder in a bad state) and
says how it must end:

* **error**: an exception raised *by geolearn's own code* (the innermost frame of the traceback is
  in the ``geolearn`` package, so it was raised on purpose, not deep inside a library) whose
  message holds the case's needle (the argument's name, the file's name);
* **warning**: a ``GeolearnWarning`` whose message holds the needle and a count;
* **works**: no error at all (a file geolearn can read after all, such as UTF-16 JSON).

Any other ending is counted against it: **raw** (an exception from a library's frame: a traceback
the user has to decode), **unclear** (geolearn's exception without the needle), **silent** (no
error where one was due). The issue 15 catalogue, ``docs/reference/errors.md``, lists what each
error says.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from geolearn import RetinaNet, detect_objects, export_training_data, prepare_data  # noqa: E402
from geolearn.errors import GeolearnWarning  # noqa: E402
from geolearn.sample import make_scene  # noqa: E402

import runlog  # noqa: E402  (benchmarks/runlog.py: the machine and commit every logged run records)

GEOLEARN = Path(__import__("geolearn").__file__).parent
RESULTS = Path(__file__).parent / "results" / "error_probe.jsonl"


@dataclass
class Case:
    name: str
    expect: str  # "error", "warning" or "works"
    needle: str
    run: Callable[[], Any]


class Fixtures:
    """A small exported scene, a data folder, a model and a saved package, made once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        scene = make_scene(root / "scene", size=256, seed=0)
        self.raster, self.labels = scene.raster, scene.labels
        self.chips = export_training_data(self.raster, self.labels, output_location=root / "chips",
                                          tile_size=64, stride_size=64, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.data = prepare_data(self.chips, chip_size=64, batch_size=4)
            self.model = RetinaNet(self.data, backbone="resnet18", pretrained=False)
            self.no_valid = RetinaNet(prepare_data(self.chips, chip_size=64, batch_size=4, val_split_pct=0.0),
                                      backbone="resnet18", pretrained=False)
        self.package = self.model.save(root / "models" / "trees", compute_metrics=False)
        self.chip = next((self.chips / "images").iterdir())

    def copy(self, name: str) -> Path:
        """A fresh copy of the data folder to damage."""
        target = self.root / "copies" / name
        shutil.copytree(self.chips, target)
        return target

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path


def _prepare(folder: Path, **kwargs: Any) -> Any:
    return prepare_data(folder, **{"chip_size": 64, "batch_size": 4, **kwargs})


def _damaged_label(f: Fixtures, name: str, text: str) -> Path:
    folder = f.copy(name)
    next((folder / "labels").iterdir()).write_text(text)
    return folder


def _voc(box: str) -> str:
    return f"<annotation><object><name>1</name><bndbox>{box}</bndbox></object></annotation>"


def _truncated(path: Path) -> Path:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _png_folder(f: Fixtures, truncate: bool) -> Path:
    folder = export_training_data(f.raster, f.labels, output_location=f.root / "copies" / "png", chip_format="PNG",
                                  tile_size=64, stride_size=64, progress=False)
    if truncate:
        _truncated(next((folder / "images").iterdir()))
    return folder


def _every_chip(data: Any) -> None:
    """Reads every chip, as an epoch does (prepare_data reads headers only)."""
    for dataset in (data.train_ds, data.valid_ds):
        for index in range(len(dataset)):
            dataset[index]


def _coco_folder(f: Fixtures, name: str, content: bytes, files: tuple[str, ...] = ("a.png",)) -> Path:
    folder = f.root / "copies" / name
    (folder / "images").mkdir(parents=True)
    for file in files:
        shutil.copy(f.chip, folder / "images" / file)
    (folder / "labels.json").write_bytes(content)
    return folder


COCO = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}],
        "categories": [{"id": 1, "name": "tree"}]}


def _yolo_folder(f: Fixtures, yaml_text: str) -> Path:
    folder = f.root / "copies" / "yolo"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    shutil.copy(f.chip, folder / "images" / "a.png")
    (folder / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (folder / "data.yaml").write_text(yaml_text)
    return folder


def _killed_export(f: Fixtures) -> Path:
    folder = f.copy("killed")
    (folder / "esri_model_definition.emd").unlink()  # what another tool's killed export leaves
    return folder


def _export(f: Fixtures, **kwargs: Any) -> Any:
    arguments = {"input_raster": f.raster, "input_class_data": f.labels, "output_location": f.root / "exports" / str(time.time_ns()),
                 "tile_size": 64, "stride_size": 64, "progress": False, **kwargs}
    return export_training_data(**arguments)


def _retinanet(f: Fixtures, **kwargs: Any) -> Any:
    return RetinaNet(f.data, backbone=kwargs.pop("backbone", "resnet18"), pretrained=False, **kwargs)


def _nan_weights(f: Fixtures) -> Any:
    model = RetinaNet.from_model(f.package)
    with torch.no_grad():
        next(model.model.parameters()).fill_(math.nan)
    return model.save(f.root / "models" / "nan")


def _unwritable_save(f: Fixtures) -> Any:
    return f.model.save("/sys/geolearn-probe/trees")  # /sys refuses writes, even to root


def _damaged_dlpk(f: Fixtures) -> Path:
    dlpk = next(f.package.glob("*.dlpk"))
    target = f.root / "files" / "damaged.dlpk"
    target.parent.mkdir(parents=True, exist_ok=True)
    whole = bytearray(dlpk.read_bytes())
    with zipfile.ZipFile(dlpk) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(".pth"))
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100  # inside the weights
    whole[at:at + 16] = b"\xff" * 16
    target.write_bytes(bytes(whole))
    return target


def _mismatched_weights(f: Fixtures) -> Path:
    folder = f.root / "models" / "mismatched"
    shutil.copytree(f.package, folder)
    pth = next(folder.glob("*.pth"))
    state = torch.load(pth, weights_only=True)
    state = state.get("model", state)
    state.pop(next(iter(state)))
    torch.save(state, pth)
    return folder


def _emd_not_json(f: Fixtures) -> Path:
    folder = f.root / "models" / "badjson"
    shutil.copytree(f.package, folder)
    next(folder.glob("*.emd")).write_text("{ not json")
    return folder


def _cli(*args: str) -> None:
    """Runs the CLI; raises when it does not end with exit code 2 and one line on stderr."""
    done = subprocess.run([sys.executable, "-m", "geolearn.cli", *args], capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode == 2 and len(lines) == 1:
        raise SystemExit(f"cli: {lines[0]}")  # counted as geolearn's clear error (see _ending)
    raise RuntimeError(f"exit {done.returncode}, {len(lines)} lines on stderr: {done.stderr[-300:]}")


def cases(f: Fixtures) -> list[Case]:
    out = f.root / "out"
    png = f.chip
    return [
        # ---- prepare_data: arguments
        Case("prepare_data: folder missing", "error", "nowhere", lambda: _prepare(f.root / "nowhere")),
        Case("prepare_data: chip_size=0", "error", "chip_size", lambda: _prepare(f.chips, chip_size=0)),
        Case("prepare_data: chip_size=-5", "error", "chip_size", lambda: _prepare(f.chips, chip_size=-5)),
        Case("prepare_data: chip_size='big'", "error", "chip_size", lambda: _prepare(f.chips, chip_size="big")),
        Case("prepare_data: batch_size=0", "error", "batch_size", lambda: _prepare(f.chips, batch_size=0)),
        Case("prepare_data: batch_size=2.5", "error", "batch_size", lambda: _prepare(f.chips, batch_size=2.5)),
        Case("prepare_data: val_split_pct=-0.1", "error", "val_split_pct", lambda: _prepare(f.chips, val_split_pct=-0.1)),
        Case("prepare_data: val_split_pct=1", "error", "val_split_pct", lambda: _prepare(f.chips, val_split_pct=1.0)),
        Case("prepare_data: val_split_pct=nan", "error", "val_split_pct", lambda: _prepare(f.chips, val_split_pct=math.nan)),
        Case("prepare_data: dataset_type='Nope'", "error", "Nope", lambda: _prepare(f.chips, dataset_type="Nope")),
        Case("prepare_data: unknown keyword", "error", "colour", lambda: _prepare(f.chips, colour=True)),
        # ---- prepare_data: files
        Case("prepare_data: no images/", "error", "images/", lambda: _prepare(f.file("empty/x.txt", "").parent)),
        Case("prepare_data: malformed XML label", "error", ".xml", lambda: _prepare(_damaged_label(f, "xml", "<annotation><object>"))),
        Case("prepare_data: CVAT XML label", "error", "<annotations>", lambda: _prepare(_damaged_label(f, "cvat", "<annotations><image/></annotations>"))),
        Case("prepare_data: inverted box", "error", "inverted", lambda: _prepare(_damaged_label(f, "inv", _voc("<xmin>9</xmin><ymin>1</ymin><xmax>2</xmax><ymax>5</ymax>")))),
        Case("prepare_data: NaN coordinate", "error", "non-finite", lambda: _prepare(_damaged_label(f, "nan", _voc("<xmin>nan</xmin><ymin>1</ymin><xmax>2</xmax><ymax>5</ymax>")))),
        Case("prepare_data: text coordinate", "error", "xmin", lambda: _prepare(_damaged_label(f, "txt", _voc("<xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>5</ymax>")))),
        Case("prepare_data: truncated PNG chip", "error", "truncated", lambda: _prepare(_png_folder(f, truncate=True))),
        Case("training batches: truncated TIFF chip", "error", "truncated", lambda: _every_chip(_prepare(_truncated(next((f.copy("trunc") / "images").iterdir())).parents[1]))),
        Case("prepare_data: chip that is not an image", "error", "cannot be read", lambda: (lambda d: (next((d / "images").iterdir()).write_bytes(b"nope"), _prepare(d)))(f.copy("notimg"))),
        Case("prepare_data: COCO in UTF-16", "works", "", lambda: _prepare(_coco_folder(f, "u16", json.dumps(COCO).encode("utf-16"), ("a.png", "gone.png")), val_split_pct=0.0)),
        Case("prepare_data: COCO in Latin-1", "error", "UTF-8", lambda: _prepare(_coco_folder(f, "latin", json.dumps({**COCO, "info": "café"}, ensure_ascii=False).encode("latin-1")))),
        Case("prepare_data: COCO image without its file", "warning", "gone.png", lambda: _prepare(_coco_folder(f, "gone", json.dumps(COCO).encode()), val_split_pct=0.0)),
        Case("prepare_data: COCO bbox as a string", "error", "annotation 0", lambda: _prepare(_coco_folder(f, "strbox", json.dumps({**COCO, "annotations": [{"image_id": 1, "category_id": 1, "bbox": "2210"}]}).encode()))),
        Case("prepare_data: malformed YOLO data.yaml", "error", "data.yaml", lambda: _prepare(_yolo_folder(f, "names: [tree\n"), val_split_pct=0.0)),
        Case("prepare_data: chips without label files", "warning", "have no labels", lambda: (lambda d: (next((d / "labels").iterdir()).unlink(), _prepare(d)))(f.copy("nolabel"))),
        Case("prepare_data: export killed half-way", "error", "did not finish", lambda: _prepare(_killed_export(f))),
        Case("prepare_data: EMD not JSON", "error", "esri_model_definition.emd", lambda: (lambda d: ((d / "esri_model_definition.emd").write_text("{"), _prepare(d)))(f.copy("emdjson"))),
        # ---- export_training_data
        Case("export: raster missing", "error", "missing.tif", lambda: _export(f, input_raster=f.root / "missing.tif")),
        Case("export: labels missing", "error", "missing.gpkg", lambda: _export(f, input_class_data=f.root / "missing.gpkg")),
        Case("export: labels not a vector file", "error", "notes.gpkg", lambda: _export(f, input_class_data=f.file("notes.gpkg", "hello"))),
        Case("export: raster not an image", "error", "fake.tif", lambda: _export(f, input_raster=f.file("fake.tif", "hello"))),
        Case("export: tile_size=0", "error", "tile_size", lambda: _export(f, tile_size=0)),
        Case("export: stride_size=-1", "error", "stride_size", lambda: _export(f, stride_size=-1)),
        Case("export: chip_format='BMP'", "error", "BMP", lambda: _export(f, chip_format="BMP")),
        Case("export: min_polygon_overlap_ratio=2", "error", "min_polygon_overlap_ratio", lambda: _export(f, min_polygon_overlap_ratio=2)),
        Case("export: classvalue_field missing", "error", "Nope", lambda: _export(f, classvalue_field="Nope")),
        Case("export: output exists", "error", "overwrite=True", lambda: _export(f, output_location=f.chips)),
        Case("export: output is a file", "error", "is a file", lambda: _export(f, output_location=f.file("afile", "x"))),
        # ---- RetinaNet(...)
        Case("RetinaNet: scales=[]", "error", "scales", lambda: _retinanet(f, scales=[])),
        Case("RetinaNet: scales='huge'", "error", "scales", lambda: _retinanet(f, scales="huge")),
        Case("RetinaNet: scales=[-1, 1]", "error", "scales", lambda: _retinanet(f, scales=[-1, 1])),
        Case("RetinaNet: ratios=[0, 1]", "error", "ratios", lambda: _retinanet(f, ratios=[0, 1])),
        Case("RetinaNet: ratios=[nan]", "error", "ratios", lambda: _retinanet(f, ratios=[math.nan])),
        Case("RetinaNet: backbone='resnet7'", "error", "resnet7", lambda: _retinanet(f, backbone="resnet7")),
        Case("RetinaNet: unknown keyword", "error", "colour", lambda: _retinanet(f, colour=True)),
        Case("RetinaNet: data is a path", "error", "prepare_data", lambda: RetinaNet(str(f.chips))),
        # ---- fit
        Case("fit(0)", "error", "epochs", lambda: f.model.fit(0)),
        Case("fit(-1)", "error", "epochs", lambda: f.model.fit(-1)),
        Case("fit(2.5)", "error", "epochs", lambda: f.model.fit(2.5)),
        Case("fit(lr=0)", "error", "lr", lambda: f.model.fit(1, lr=0)),
        Case("fit(lr=-1e-3)", "error", "lr", lambda: f.model.fit(1, lr=-1e-3)),
        Case("fit(lr=nan)", "error", "lr", lambda: f.model.fit(1, lr=math.nan)),
        Case("fit(lr='fast')", "error", "lr", lambda: f.model.fit(1, lr="fast")),
        Case("fit(lr=slice(0, 1e-3))", "error", "lr", lambda: f.model.fit(1, lr=slice(0, 1e-3))),
        Case("fit(checkpoint='some')", "error", "checkpoint", lambda: f.model.fit(1, lr=1e-3, checkpoint="some")),
        Case("fit() without validation chips (checkpoint=True)", "warning", "no checkpoint is kept", lambda: f.no_valid.fit(1, lr=1e-3)),
        Case("fit(early_stopping) without validation chips", "error", "validation", lambda: f.no_valid.fit(1, lr=1e-3, early_stopping=True)),
        # ---- predict, show_results, average_precision_score
        Case("predict: threshold=1.5", "error", "threshold", lambda: f.model.predict(png, threshold=1.5)),
        Case("predict: threshold=nan", "error", "threshold", lambda: f.model.predict(png, threshold=math.nan)),
        Case("predict: nms_overlap=-1", "error", "nms_overlap", lambda: f.model.predict(png, nms_overlap=-1)),
        Case("predict: image missing", "error", "missing.png", lambda: f.model.predict(f.root / "missing.png")),
        Case("predict: 4-band array for a 3-band model", "error", "bands", lambda: f.model.predict(np.zeros((64, 64, 4), np.uint8))),
        Case("predict: truncated PNG", "error", "truncated", lambda: f.model.predict(_truncated(f.file("t.png", png.read_bytes())))),
        Case("show_results without validation chips", "error", "validation", lambda: f.no_valid.show_results()),
        Case("average_precision_score without validation chips", "error", "validation", lambda: f.no_valid.average_precision_score()),
        # ---- detect_objects
        Case("detect_objects: raster missing", "error", "missing.tif", lambda: detect_objects(f.root / "missing.tif", f.package, output_name=out / "a.gpkg", progress=False)),
        Case("detect_objects: threshold=2", "error", "threshold", lambda: detect_objects(f.raster, f.package, {"threshold": 2}, output_name=out / "b.gpkg", progress=False)),
        Case("detect_objects: unknown model argument", "error", "colour", lambda: detect_objects(f.raster, f.package, {"colour": 1}, output_name=out / "c.gpkg", progress=False)),
        Case("detect_objects: output exists", "error", "overwrite", lambda: detect_objects(f.raster, f.package, output_name=f.labels, progress=False)),
        Case("detect_objects: output format unknown", "error", ".xyz", lambda: detect_objects(f.raster, f.package, output_name=out / "d.xyz", progress=False)),
        Case("detect_objects: model missing", "error", "missing.dlpk", lambda: detect_objects(f.raster, f.root / "missing.dlpk", output_name=out / "e.gpkg", progress=False)),
        # ---- save, from_model
        Case("save: NaN weights", "error", "NaN", lambda: _nan_weights(f)),
        Case("save: folder refuses writes", "error", "geolearn-probe", lambda: _unwritable_save(f)),
        Case("from_model: missing", "error", "missing.emd", lambda: RetinaNet.from_model(f.root / "missing.emd")),
        Case("from_model: .dlpk not a zip", "error", "fake.dlpk", lambda: RetinaNet.from_model(f.file("fake.dlpk", "nope"))),
        Case("from_model: .dlpk with a damaged entry", "error", "damaged.dlpk", lambda: RetinaNet.from_model(_damaged_dlpk(f))),
        Case("from_model: weights that do not fit the EMD", "error", ".pth", lambda: RetinaNet.from_model(_mismatched_weights(f))),
        Case("from_model: EMD not JSON", "error", ".emd", lambda: RetinaNet.from_model(_emd_not_json(f))),
        # ---- the CLI: one line on stderr, exit code 2
        Case("cli export: labels not a vector file", "error", "notes.gpkg", lambda: _cli("export", str(f.raster), str(f.file("notes.gpkg", "hi")), str(f.root / "cli1"))),
        Case("cli detect: raster missing", "error", "missing.tif", lambda: _cli("detect", str(f.root / "missing.tif"), "--model", str(f.package), "--out", str(f.root / "cli.gpkg"))),
        Case("cli train: folder missing", "error", "nowhere", lambda: _cli("train", str(f.root / "nowhere"), "--out", str(f.root / "m"))),
    ]


def _ending(case: Case) -> tuple[str, str]:
    """(ending, message): 'error', 'warning', 'works', or what went wrong: 'raw', 'unclear', 'silent'."""
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(None):
        warnings.simplefilter("always")
        try:
            case.run()
        except SystemExit as exit_:  # the CLI case: exit code 2 with one line (see _cli)
            return ("error" if case.needle in str(exit_) else "unclear"), str(exit_)
        except Exception as err:  # noqa: BLE001 - sorting endings is the point
            frame = traceback.extract_tb(err.__traceback__)[-1]
            ours = Path(frame.filename).resolve().is_relative_to(GEOLEARN)
            message = f"{type(err).__name__}: {err}"
            if not ours:
                return "raw", f"{message} (raised in {Path(frame.filename).name}:{frame.lineno})"
            return ("error" if case.needle in str(err) else "unclear"), message
    ours = [w for w in caught if issubclass(w.category, GeolearnWarning) and case.needle in str(w.message)]
    if ours:
        return "warning", str(ours[0].message)
    return ("works" if case.expect == "works" else "silent"), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", action="store_true", help="append the counts to benchmarks/results/error_probe.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fixtures = Fixtures(Path(tmp))
        rows = []
        for case in cases(fixtures):
            ending, message = _ending(case)
            rows.append((case, ending, message))
            mark = "ok " if ending == case.expect else "BAD"
            print(f"{mark} {case.name:<50} {ending:<8} {' '.join(message.split())[:150]}", flush=True)
    good = sum(ending == case.expect for case, ending, _ in rows)
    clear = sum(ending == "error" for _, ending, _ in rows)
    print(f"\n{len(rows)} cases: {good} end as they should ({clear} in a clear geolearn error, "
          f"{sum(e == 'warning' for _, e, _ in rows)} in a counted warning, {sum(e == 'works' for _, e, _ in rows)} read fine); "
          f"{len(rows) - good} do not.")
    if args.log:
        endings: dict[str, int] = {}
        for _, ending, _ in rows:
            endings[ending] = endings.get(ending, 0) + 1
        runlog.append(RESULTS, {
            "commit": runlog.git_commit("benchmarks/error_probe.py"), "time": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": runlog.machine()["cpu"], "command": "python benchmarks/error_probe.py --log", "cases": len(rows),
            "as_expected": good, "clear_errors": clear, "endings": endings,
            "not_as_expected": [c.name for c, e, _ in rows if e != c.expect],
        })

if __name__ == "__main__":
    main()
