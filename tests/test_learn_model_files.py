"""learn/emd.py and learn/package.py: the .emd, .pth and .dlpk of a saved model (CONTRACT §4)."""

from __future__ import annotations

import json
import math
import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

import geolearn.learn.package as package
from geolearn.data.esri import ClassInfo
from geolearn.data.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization
from geolearn.errors import ModelDefinitionError, OutputExistsError, OutputNotWritableError
from geolearn.learn.config import ModelConfig
from geolearn.learn.emd import PRO_INFERENCE_FUNCTION, build_emd, read_emd
from geolearn.learn.package import load_state_dict, resolve_model, save_package

# The EMD keys of CONTRACT §4 ("The model definition (.emd) that save() writes") and the JSON
# types arcgis.learn 2.4 writes them with (its _get_emd_params / _create_emd_template), written
# out here independently of the code under test. `None` in a tuple means JSON null is allowed.
CONTRACT_KEYS: dict[str, tuple[type, ...]] = {
    "Framework": (str,),
    "InferenceFunction": (str,),
    "ModelConfiguration": (str,),
    "ModelType": (str,),
    "ExtractBands": (list,),
    "ModelParameters": (dict,),
    "Classes": (list,),
    "ModelFormat": (str,),
    "MinCellSize": (dict, type(None)),
    "MaxCellSize": (dict, type(None)),
    "SupportsVariableTileSize": (bool,),
    "ArcGISLearnVersion": (str,),
    "ModelFile": (str,),
    "ImageHeight": (int,),
    "ImageWidth": (int,),
    "ImageSpaceUsed": (str,),
    "LearningRate": (str,),
    "ModelName": (str,),
    "backend": (str,),
    "average_precision_score": (dict, type(None)),
    "resize_to": (int, type(None)),
    "IsMultispectral": (bool,),
    "IsImageNetNormalization": (bool,),
}
MULTISPECTRAL_KEYS: dict[str, tuple[type, ...]] = {
    "Bands": (list,),
    "ImageryType": (str,),
    "NormalizationStats": (dict,),
    "DoNormalize": (bool,),
}
NORMALIZATION_STATS_KEYS = {
    "band_min_values", "band_max_values", "band_mean_values", "band_std_values",
    "scaled_min_values", "scaled_max_values", "scaled_mean_values", "scaled_std_values",
}
FIXED_VALUES = {
    "Framework": "arcgis.learn.models._inferencing",
    "InferenceFunction": "GeolearnObjectDetector.py",  # geolearn's own raster function, shipped in the package
    "ModelConfiguration": "_RetinaNet_Inference",
    "ModelType": "ObjectDetection",
    "ModelFormat": "NCHW",
    "SupportsVariableTileSize": False,
    "ImageSpaceUsed": "MAP_SPACE",
    "ModelName": "RetinaNet",
    "backend": "pytorch",
}

CLASSES = [ClassInfo(1, "pool", (0, 168, 132)), ClassInfo(2, "tree", (255, 170, 0))]
SCALES = [1.0, 2 ** (-1 / 3), 2 ** (-2 / 3)]
RATIOS = [0.5, 1.0, 2.0]
UTM33N_WKT = (
    'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
    'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32633"]]'
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """.dlpk archives extract under tmp_path, never into the user's cache."""
    monkeypatch.setenv("GEOLEARN_CACHE_DIR", str(tmp_path / "cache"))


def rgb_emd(**overrides):
    """An EMD through build_emd: ModelConfig's fields and build_emd's own arguments, by name."""
    kwargs = dict(
        model_file="pools.pth", backbone="resnet18", scales=SCALES, ratios=RATIOS, classes=CLASSES,
        chip_size=64, learning_rate=1e-3, resize_to=None, extract_bands=[0, 1, 2],
        normalization=Normalization.for_rgb8(), average_precision={"pool": 0.75, "tree": 0.5},
        cell_size=0.3, crs_wkt=UTM33N_WKT, extras={"dataset_type": "PASCAL_VOC_rectangles"},
    )
    kwargs.update(overrides)
    kwargs.pop("is_multispectral", None)  # follows from the normalisation: any but ImageNet's
    kwargs["class_infos"] = kwargs.pop("classes")
    kwargs["n_bands"] = len(kwargs["extract_bands"])
    own = {name: kwargs.pop(name) for name in list(kwargs) if name not in ModelConfig.__dataclass_fields__}
    return build_emd(ModelConfig(**kwargs), **own)


def ms_normalization() -> Normalization:
    return Normalization((0.0, 10.0, 0.0, 100.0), (1000.0, 2010.0, 4000.0, 5100.0),
                         (0.5, 0.25, 0.1, 0.4), (0.1, 0.2, 0.05, 0.3), False)


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "encoder.0.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "encoder.1.running_mean": torch.randn(4, generator=generator),
        "encoder.1.num_batches_tracked": torch.tensor(7),
        "classifier.4.bias": torch.full((18,), -4.0),
    }


def tiny_figure(label: str) -> Figure:
    figure = Figure(figsize=(2, 1.5))
    figure.add_subplot().plot([0, 1, 2], [2, 1, 1.5], label=label)
    return figure


def save_tiny(folder: Path, name: str = "pools", seed: int = 0, **kwargs) -> Path:
    kwargs.setdefault("figures", {"loss_graph": tiny_figure("loss"), "show_results": tiny_figure("results")})
    return save_package(folder, name, state_dict=tiny_state_dict(seed), emd=rgb_emd(model_file=f"{name}.pth"), **kwargs)


def package_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def arcgis_style_emd(folder: Path, **overrides) -> Path:
    """An EMD the way arcgis.learn writes one for RetinaNet (older class keys, no geolearn object)."""
    emd = {
        "Framework": "arcgis.learn.models._inferencing",
        "InferenceFunction": "ArcGISObjectDetector.py",
        "ModelConfiguration": "_RetinaNet_Inference",
        "ModelType": "ObjectDetection",
        "ExtractBands": [0, 1, 2],
        "ModelParameters": {"scales": [1, 0.7937, 0.63], "ratios": [0.5, 1, 2], "backbone": "resnet50",
                            "backend": "pytorch"},
        "Classes": [{"ClassValue": 1, "ClassName": "pool", "Color": [12, 34, 56]},
                    {"ClassValue": 5, "ClassName": "tree"}],
        "ModelFormat": "NCHW",
        "MinCellSize": {"x": 0.3, "y": 0.3, "spatialReference": {"wkid": 32633}},
        "MaxCellSize": {"x": 0.3, "y": 0.3, "spatialReference": {"wkid": 32633}},
        "SupportsVariableTileSize": False,
        "ArcGISLearnVersion": "2.4.0",
        "ModelFile": "arcgis_model.pth",
        "ImageHeight": 256,
        "ImageWidth": 256,
        "ImageSpaceUsed": "MAP_SPACE",
        "LearningRate": "slice('1.0000e-05', '1.0000e-04', None)",
        "ModelName": "RetinaNet",
        "backend": "pytorch",
        "resize_to": None,
        "IsMultispectral": False,
    }
    emd.update(overrides)
    emd = {k: v for k, v in emd.items() if v is not ...}  # `...` deletes a key
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_state_dict(), folder / "arcgis_model.pth")
    path = folder / "arcgis_model.emd"
    path.write_text(json.dumps(emd, indent=4))
    return path


# ----------------------------------------------------------------------------- build_emd


def test_build_emd_has_every_contract_key_with_its_type() -> None:
    emd = rgb_emd()
    for key, types in CONTRACT_KEYS.items():
        assert key in emd, f"missing CONTRACT key {key}"
        assert isinstance(emd[key], types), f"{key}: {type(emd[key]).__name__} is not one of {types}"
        assert not isinstance(emd[key], bool) or bool in types, key  # True is an int in Python
    for key, value in FIXED_VALUES.items():
        assert emd[key] == value, key
    assert emd["ModelParameters"] == {"scales": SCALES, "ratios": RATIOS, "backbone": "resnet18", "backend": "pytorch"}
    assert emd["Classes"] == [{"Value": 1, "Name": "pool", "Color": [0, 168, 132]},
                              {"Value": 2, "Name": "tree", "Color": [255, 170, 0]}]
    assert emd["ExtractBands"] == [0, 1, 2]
    assert emd["ModelFile"] == "pools.pth"
    assert emd["ImageHeight"] == emd["ImageWidth"] == 64
    assert emd["LearningRate"] == "1.0000e-03"  # arcgis.learn's '{:1.4e}'
    assert emd["average_precision_score"] == {"pool": 0.75, "tree": 0.5}
    assert emd["IsMultispectral"] is False and emd["IsImageNetNormalization"] is True
    assert emd["MinCellSize"] == {"x": 0.3, "y": 0.3, "spatialReference": {"wkid": 32633, "latestWkid": 32633}}
    assert emd["MaxCellSize"] == emd["MinCellSize"]
    assert isinstance(emd["ArcGISLearnVersion"], str) and emd["ArcGISLearnVersion"].startswith("2.4")
    # RGB models carry none of the multispectral keys
    assert not set(MULTISPECTRAL_KEYS) & set(emd)
    json.dumps(emd, allow_nan=False)  # plain JSON


def test_build_emd_unknowns_are_null_or_none_string() -> None:
    emd = rgb_emd(learning_rate=None, average_precision=None, cell_size=None, crs_wkt=None, resize_to=None)
    assert emd["LearningRate"] == "None"  # arcgis.learn writes str(None)
    assert rgb_emd(learning_rate=slice(1e-4, 2e-3))["LearningRate"] == "2.0000e-03"
    assert emd["average_precision_score"] is None
    assert emd["MinCellSize"] is None and emd["MaxCellSize"] is None
    assert emd["resize_to"] is None
    assert rgb_emd(average_precision={"pool": float("nan")})["average_precision_score"] == {"pool": None}


def test_build_emd_multispectral_adds_its_keys() -> None:
    norm = ms_normalization()
    emd = rgb_emd(extract_bands=[0, 1, 2, 3], is_multispectral=True, normalization=norm,
                  band_names=["red", "green", "blue", "nir"], imagery_type="ms")
    for key, types in {**CONTRACT_KEYS, **MULTISPECTRAL_KEYS}.items():
        assert isinstance(emd[key], types), key
    assert emd["IsMultispectral"] is True and emd["IsImageNetNormalization"] is False
    assert emd["Bands"] == ["red", "green", "blue", "nir"] and emd["ImageryType"] == "ms"
    assert emd["DoNormalize"] is True
    stats = emd["NormalizationStats"]
    assert set(stats) == NORMALIZATION_STATS_KEYS
    assert all(isinstance(v, list) and len(v) == 4 for v in stats.values())
    assert stats["band_min_values"] == [0.0, 10.0, 0.0, 100.0]
    assert stats["band_max_values"] == [1000.0, 2010.0, 4000.0, 5100.0]
    # raw mean/std from the scaled ones: min + mean * (max - min), std * (max - min)
    assert stats["band_mean_values"] == pytest.approx([500.0, 510.0, 400.0, 2100.0])
    assert stats["band_std_values"] == pytest.approx([100.0, 400.0, 200.0, 1500.0])
    assert stats["scaled_min_values"] == [0.0] * 4 and stats["scaled_max_values"] == [1.0] * 4
    assert stats["scaled_mean_values"] == [0.5, 0.25, 0.1, 0.4]
    assert stats["scaled_std_values"] == [0.1, 0.2, 0.05, 0.3]
    with pytest.raises(ValueError, match="normalization"):
        rgb_emd(extract_bands=[0, 1, 2, 3], is_multispectral=True, normalization=None)


def test_geolearn_extras_live_under_one_geolearn_object() -> None:
    emd = rgb_emd(band_names=["r", "g", "b"])
    assert set(emd) == set(CONTRACT_KEYS) | {"geolearn"}
    own = emd["geolearn"]
    assert own["version"] == __import__("geolearn").__version__
    assert own["normalization"] == Normalization.for_rgb8().to_json()
    assert own["scales"] == SCALES and own["ratios"] == RATIOS
    assert own["chip_size"] == 64 and own["cell_size"] == 0.3 and own["crs_wkt"] == UTM33N_WKT
    assert own["n_bands"] == 3 and own["band_names"] == ["r", "g", "b"]
    assert own["dataset_type"] == "PASCAL_VOC_rectangles"  # from extras
    assert own["zoom"] == 1.0
    with pytest.raises(ValueError, match="chip_size"):
        rgb_emd(extras={"chip_size": 5})
    with pytest.raises(ValueError, match=r"zoom=0\b.*> 0"):
        rgb_emd(zoom=0)


def test_the_calibrated_threshold_round_trips_and_a_bad_one_names_the_key(tmp_path: Path) -> None:
    assert rgb_emd()["geolearn"]["threshold"] is None
    assert read_emd(save_package(tmp_path / "none", "none", state_dict=tiny_state_dict(),
                                 emd=rgb_emd()) / "none.emd").config.threshold is None
    folder = save_package(tmp_path / "t", "t", state_dict=tiny_state_dict(), emd=rgb_emd(threshold=0.27))
    assert read_emd(folder / "t.emd").config.threshold == 0.27
    with pytest.raises(ValueError, match=r"threshold=1\.2: a detection score between 0 and 1"):
        rgb_emd(threshold=1.2)
    emd = rgb_emd()
    emd["geolearn"]["threshold"] = "0.3"
    folder = save_package(tmp_path / "bad", "bad", state_dict=tiny_state_dict(), emd=emd)
    with pytest.raises(ModelDefinitionError, match=r"bad\.emd: key 'geolearn\.threshold' must be a score between 0 and 1"):
        read_emd(folder / "bad.emd")


@pytest.mark.parametrize("zoom", [0, -1.5, "2", True])
def test_a_bad_zoom_in_the_emd_names_the_key(tmp_path: Path, zoom) -> None:
    emd = rgb_emd()
    emd["geolearn"]["zoom"] = zoom
    folder = save_package(tmp_path / "z", "z", state_dict=tiny_state_dict(), emd=emd)
    with pytest.raises(ModelDefinitionError, match=r"z\.emd: key 'geolearn\.zoom' must be a number > 0"):
        read_emd(folder / "z.emd")


# ----------------------------------------------------------------------------- save_package


def test_save_package_writes_every_file_and_plain_weights(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "models" / "pools")
    assert folder == tmp_path / "models" / "pools"
    assert sorted(package_files(folder)) == [
        "GeolearnObjectDetector.py", "ModelCharacteristics/loss_graph.png", "ModelCharacteristics/show_results.png",
        "model_metrics.html", "pools.dlpk", "pools.emd", "pools.pth",
    ]
    with zipfile.ZipFile(folder / "pools.dlpk") as archive:  # the EMD names it, so Pro finds it beside the EMD
        assert "GeolearnObjectDetector.py" in archive.namelist()
    loaded = torch.load(folder / "pools.pth", weights_only=True)
    assert list(loaded) == list(tiny_state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in tiny_state_dict().items())
    assert load_state_dict(folder / "pools.pth").keys() == tiny_state_dict().keys()
    emd = json.loads((folder / "pools.emd").read_text())
    assert emd == rgb_emd()
    assert (folder / "ModelCharacteristics" / "loss_graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing but the package next to it
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["pools"]


def test_save_package_with_optimizer_writes_exactly_model_and_opt(tmp_path: Path) -> None:
    optimizer_state = {"state": [{"grad_avg": torch.ones(3), "step": 4}], "hypers": [{"lr": 1e-3, "mom": 0.9}]}
    folder = save_tiny(tmp_path / "pools", optimizer_state=optimizer_state)
    content = torch.load(folder / "pools.pth", weights_only=True)
    assert set(content) == {"model", "opt"}
    assert all(torch.equal(content["model"][k], v) for k, v in tiny_state_dict().items())
    assert content["opt"]["hypers"] == [{"lr": 1e-3, "mom": 0.9}]
    assert set(load_state_dict(folder / "pools.pth")) == set(tiny_state_dict())


def test_optimizer_state_that_cannot_load_safely_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights_only"):
        save_tiny(tmp_path / "pools", optimizer_state={"hypers": [{"lr": slice(1e-4, 1e-3)}]})
    assert not (tmp_path / "pools").exists() and hidden_leftovers(tmp_path) == []


def test_metrics_page_is_self_contained(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "pools", metrics={"epochs": 3, "valid_loss": 0.4123456})
    page = (folder / "model_metrics.html").read_text()
    assert "resnet18" in page and "1.0000e-03" in page
    assert "<td>0.75</td>" in page and "<td>0.5</td>" in page and "mean" in page
    assert "valid_loss" in page and "0.4123" in page
    assert page.count("data:image/png;base64,") == 2
    assert "src=\"ModelCharacteristics" not in page  # embedded, not linked


def test_missing_figures_are_skipped(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "pools", figures={"loss_graph": tiny_figure("loss")})
    assert not (folder / "ModelCharacteristics" / "show_results.png").exists()
    assert "base64" in (folder / "model_metrics.html").read_text()
    folder = save_tiny(tmp_path / "bare", name="bare", figures=None)
    assert not (folder / "ModelCharacteristics").exists()


def test_dlpk_unzips_to_the_folders_files(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "pools", extra_files={"torch_scripts/pools-cpu.pt": b"traced"})
    with zipfile.ZipFile(folder / "pools.dlpk") as archive:
        names = archive.namelist()
        unzipped = {name: archive.read(name) for name in names}
    files = package_files(folder)
    files.pop("pools.dlpk")
    assert sorted(names) == sorted(files)
    assert all("\\" not in name and not name.startswith("/") for name in names)
    assert unzipped == files


def test_resolve_model_on_emd_folder_and_dlpk_gives_the_same_model(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "models" / "pools")
    from_emd = resolve_model(folder / "pools.emd")
    from_folder = resolve_model(folder)
    from_dlpk = resolve_model(folder / "pools.dlpk")
    assert from_emd == from_folder == (folder / "pools.emd", folder)
    assert from_dlpk[0].name == "pools.emd" and from_dlpk[1] == from_dlpk[0].parent
    assert from_dlpk[1].is_relative_to(tmp_path / "cache")  # extracted into the cache, not next to the user's files
    definitions = [read_emd(emd) for emd, _ in (from_emd, from_folder, from_dlpk)]
    assert definitions[0].emd == definitions[1].emd == definitions[2].emd
    weights = [load_state_dict(d.model_file) for d in definitions]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])
    # resolving the .dlpk again reuses the extracted folder
    assert resolve_model(folder / "pools.dlpk") == from_dlpk
    assert len(list((tmp_path / "cache" / "dlpk").iterdir())) == 1


def test_default_cache_keeps_the_most_recently_loaded_packages(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(package, "CACHE_KEEP", 2)
    cache = tmp_path / "cache" / "dlpk"
    folders = {name: save_tiny(tmp_path / "models" / name, name=name) for name in ("a", "b", "c")}
    extracted = {}
    for age, name in enumerate(("a", "b")):
        extracted[name] = resolve_model(folders[name] / f"{name}.dlpk")[1]
        os.utime(extracted[name], (1_000_000 + age, 1_000_000 + age))  # a loaded before b
    assert resolve_model(folders["a"] / "a.dlpk")[1] == extracted["a"]  # reloading a makes it the newest
    stale = cache / ".old-0123.extracting-abcd1234"
    stale.mkdir()
    os.utime(stale, (1_000_000, 1_000_000))  # left by a killed extraction long ago
    fresh = cache / ".new-0123.extracting-abcd1234"
    fresh.mkdir()  # another process extracting now
    resolve_model(folders["c"] / "c.dlpk")
    kept = sorted(p.name.split("-")[0] for p in cache.iterdir())
    assert kept == [".new", "a", "c"]  # b was least recently loaded; the live staging folder stays
    # a folder the caller names is the caller's: nothing there is removed
    mine = tmp_path / "mine"
    for name in ("a", "b", "c"):
        resolve_model(folders[name] / f"{name}.dlpk", extract_dir=mine)
    assert len(list(mine.iterdir())) == 3


def test_read_emd_round_trips_build_emd(tmp_path: Path) -> None:
    norm = ms_normalization()
    emd = rgb_emd(extract_bands=[0, 2, 3, 5], is_multispectral=True, normalization=norm, resize_to=80,
                  zoom=1.25, band_names=["b1", "b3", "b4", "b6"], learning_rate=3e-4)
    folder = save_package(tmp_path / "ms", "ms", state_dict=tiny_state_dict(), emd=emd)
    definition = read_emd(folder / "ms.emd")
    model = definition.config
    assert definition.path == folder / "ms.emd" and definition.model_file == folder / "ms.pth"
    assert model.backbone == "resnet18" and model.scales == tuple(SCALES) and model.ratios == tuple(RATIOS)
    assert model.class_infos == tuple(CLASSES) and definition.class_mapping == {1: "pool", 2: "tree"}
    assert model.chip_size == 64 and model.resize_to == 80 and model.zoom == 1.25
    assert model.extract_bands == (0, 2, 3, 5) and model.n_bands == 4 and definition.is_multispectral
    assert model.normalization == norm
    assert model.band_names == ("b1", "b3", "b4", "b6")
    assert model.learning_rate == pytest.approx(3e-4)
    assert definition.average_precision == {"pool": 0.75, "tree": 0.5}
    assert model.cell_size == 0.3 and model.crs_wkt == UTM33N_WKT
    assert definition.written_by_geolearn and definition.geolearn["dataset_type"] == "PASCAL_VOC_rectangles"


def test_read_emd_of_an_arcgis_learn_model_uses_defaults(tmp_path: Path) -> None:
    emd_path = arcgis_style_emd(tmp_path / "arcgis_model")
    definition = read_emd(emd_path)
    model = definition.config
    assert definition.model_file == tmp_path / "arcgis_model" / "arcgis_model.pth"
    assert model.class_infos == (ClassInfo(1, "pool", (12, 34, 56)), ClassInfo(5, "tree", package_default_color(5)))
    assert model.backbone == "resnet50" and model.scales == (1.0, 0.7937, 0.63) and model.ratios == (0.5, 1.0, 2.0)
    assert model.chip_size == 256 and model.extract_bands == (0, 1, 2) and model.n_bands == 3
    assert not definition.is_multispectral and model.normalization == Normalization.for_rgb8()
    assert model.normalization.mean == IMAGENET_MEAN and model.normalization.std == IMAGENET_STD
    assert model.learning_rate == pytest.approx(1e-4)  # the top of the slice
    assert definition.average_precision is None and model.resize_to is None and model.zoom == 1.0
    assert model.cell_size == 0.3 and model.crs_wkt is None
    assert definition.geolearn == {} and not definition.written_by_geolearn
    assert resolve_model(emd_path.parent)[0] == emd_path


def package_default_color(value: int) -> tuple[int, int, int]:
    from geolearn.data.esri import default_color

    return default_color(value)


def test_read_emd_minimal_arcgis_emd(tmp_path: Path) -> None:
    """Only the required keys: everything else defaults the way arcgis.learn's from_model does."""
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save(tiny_state_dict(), folder / "old.pth")
    (folder / "old.emd").write_text(json.dumps({
        "ModelFile": "old.pth", "ImageWidth": 224, "Classes": [{"Value": 1, "Name": "car"}], "LearningRate": "0.0",
    }))
    model = read_emd(folder / "old.emd").config
    assert model.backbone == "resnet50"
    assert model.scales == pytest.approx([1, 2 ** (-1 / 3), 2 ** (-2 / 3)]) and model.ratios == (0.5, 1.0, 2.0)
    assert model.chip_size == 224 and model.extract_bands == (0, 1, 2)
    assert model.learning_rate is None and model.cell_size is None


def test_read_emd_of_an_arcgis_multispectral_model(tmp_path: Path) -> None:
    stats = {
        "band_min_values": [0, 0, 0, 0], "band_max_values": [4000, 4000, 4000, 8000],
        "band_mean_values": [800, 900, 1000, 3000], "band_std_values": [200, 200, 200, 800],
        "scaled_min_values": [0, 0, 0, 0], "scaled_max_values": [1, 1, 1, 1],
        "scaled_mean_values": [0.2, 0.225, 0.25, 0.375], "scaled_std_values": [0.05, 0.05, 0.05, 0.1],
    }
    emd_path = arcgis_style_emd(tmp_path / "ms", IsMultispectral=True, ExtractBands=[0, 1, 2, 3],
                                Bands=["red", "green", "blue", "nir"], ImageryType="ms",
                                NormalizationStats=stats, DoNormalize=True)
    definition = read_emd(emd_path)
    model = definition.config
    assert definition.is_multispectral and model.n_bands == 4 and model.band_names == ("red", "green", "blue", "nir")
    assert model.normalization == Normalization((0.0,) * 4, (4000.0, 4000.0, 4000.0, 8000.0),
                                                (0.2, 0.225, 0.25, 0.375), (0.05, 0.05, 0.05, 0.1), False)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "key", "found"),
    [
        ({"ModelFile": ...}, "ModelFile", "missing"),
        ({"Classes": {"Value": 1, "Name": "pool"}}, "Classes", "dict"),
        ({"Classes": []}, "Classes", r"list \[\]"),
        ({"ImageHeight": "256"}, "ImageHeight", "str '256'"),
        ({"ImageHeight": ..., "ImageWidth": ...}, "ImageHeight", "missing"),
        ({"ModelParameters": {"backbone": 50}}, "ModelParameters.backbone", "int 50"),
        ({"ModelParameters": {"scales": [1, -2]}}, "ModelParameters.scales", r"list \[1, -2\]"),
        ({"ExtractBands": "0,1,2"}, "ExtractBands", "str"),
        ({"IsMultispectral": True}, "NormalizationStats", "missing"),
        ({"ModelName": "FasterRCNN", "ModelConfiguration": "_FasterRCNN"}, "ModelName", "FasterRCNN"),
    ],
    ids=["no-ModelFile", "Classes-not-list", "Classes-empty", "ImageHeight-str", "no-chip-size",
         "backbone-int", "negative-scale", "ExtractBands-str", "ms-without-stats", "other-model"],
)
def test_malformed_emd_names_the_file_and_key(tmp_path: Path, change: dict, key: str, found: str) -> None:
    emd_path = arcgis_style_emd(tmp_path / "bad", **change)
    with pytest.raises(ModelDefinitionError, match=rf"arcgis_model\.emd: key '{key}' .*found .*{found}") as info:
        read_emd(emd_path)
    assert isinstance(info.value, ValueError)
    assert str(emd_path) in str(info.value)


def test_duplicate_classes_and_unequal_sides_are_refused(tmp_path: Path) -> None:
    emd_path = arcgis_style_emd(tmp_path / "dup", Classes=[{"Value": 1, "Name": "a"}, {"Value": 1, "Name": "b"}])
    with pytest.raises(ModelDefinitionError, match=r"'Classes' repeats the class value \[1\]"):
        read_emd(emd_path)
    emd_path = arcgis_style_emd(tmp_path / "rect", ImageHeight=256, ImageWidth=128)
    with pytest.raises(ModelDefinitionError, match="ImageHeight 256 and ImageWidth 128 differ"):
        read_emd(emd_path)


def test_missing_weights_and_broken_json(tmp_path: Path) -> None:
    emd_path = arcgis_style_emd(tmp_path / "nopth")
    (emd_path.parent / "arcgis_model.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"ModelFile 'arcgis_model.pth' .* does not exist"):
        read_emd(emd_path)
    assert read_emd(emd_path, require_model_file=False).config.chip_size == 256
    emd_path.write_text("{not json")
    with pytest.raises(ModelDefinitionError, match="not valid JSON"):
        read_emd(emd_path)


def make_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    ("bad_entry", "message"),
    [
        (("../evil.txt", b"x"), r"entry '\.\./evil\.txt' points outside the package"),
        (("models/../../evil.txt", b"x"), r"entry 'models/\.\./\.\./evil\.txt' points outside"),
        (("..\\evil.txt", b"x"), r"entry '\.\.\\\\evil\.txt' points outside"),
        (("/tmp/geolearn_evil.txt", b"x"), r"entry '/tmp/geolearn_evil\.txt' has an absolute path"),
        (("C:/evil.txt", b"x"), r"entry 'C:/evil\.txt' has an absolute path"),
        (symlink_entry("link.pth", "/etc/passwd"), r"entry 'link\.pth' is a symbolic link"),
    ],
    ids=["dotdot", "nested-dotdot", "backslash-dotdot", "absolute", "drive", "symlink"],
)
def test_unsafe_dlpk_is_refused_and_writes_nothing(tmp_path: Path, bad_entry, message: str) -> None:
    emd = json.dumps(rgb_emd()).encode()
    dlpk = make_zip(tmp_path / "evil.dlpk", [("pools.emd", emd), ("pools.pth", b"weights"), bad_entry])
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ModelDefinitionError, match=message) as info:
        resolve_model(dlpk)
    assert str(dlpk) in str(info.value)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # not even the cache folder
    assert not Path("/tmp/geolearn_evil.txt").exists()
    assert not (tmp_path.parent / "evil.txt").exists()


def test_dlpk_that_is_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "broken.dlpk").write_bytes(b"not a zip")
    with pytest.raises(ModelDefinitionError, match=r"broken\.dlpk: not a \.dlpk \(zip\) archive"):
        resolve_model(tmp_path / "broken.dlpk")


def test_save_into_a_folder_that_refuses_writes_names_it_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    def refuse(path, mode=0o777):  # as a read-only disk or another user's folder does (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", refuse)
    with pytest.raises(OutputNotWritableError, match=r"shared/pools: cannot save here: Permission denied .*a folder you can write"):
        save_package(tmp_path / "shared" / "pools", "pools", state_dict={"w": torch.zeros(2)}, emd=rgb_emd())


def test_dlpk_with_a_damaged_entry_names_the_archive_and_the_entry(tmp_path: Path) -> None:
    dlpk = make_zip(tmp_path / "pools.dlpk", [("pools.emd", json.dumps(rgb_emd()).encode()), ("pools.pth", b"w" * 4096)])
    whole = bytearray(dlpk.read_bytes())
    at = whole.index(b"w" * 64)  # inside the stored weights: the CRC no longer matches
    whole[at:at + 8] = b"garbled!"
    dlpk.write_bytes(bytes(whole))
    with pytest.raises(ModelDefinitionError, match=r"pools\.dlpk: its entry pools\.pth is damaged .*Copy the \.dlpk again"):
        resolve_model(dlpk)
    assert not list(package._cache_dir().glob(f"*{package._sha256(dlpk)[:16]}*"))  # no half-extracted copy


def test_folder_with_several_or_no_emd_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.emd").write_text("{}")
    (folder / "b.emd").write_text("{}")
    with pytest.raises(ModelDefinitionError, match=r"holds 2 model definitions \['a\.emd', 'b\.emd'\]"):
        resolve_model(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no model definition \(\.emd\) found .*weights\.pth"):
        resolve_model(empty)
    with pytest.raises(FileNotFoundError, match="no such model"):
        resolve_model(tmp_path / "absent.emd")
    with pytest.raises(ModelDefinitionError, match=r"\.pth file is not a model package"):
        resolve_model(empty / "weights.pth")


def test_load_state_dict_refuses_other_content(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    torch.save({"model": sd, "opt": {}, "epoch": 3}, tmp_path / "extra.pth")
    with pytest.raises(ModelDefinitionError, match=r"exactly \{'model': state_dict, 'opt'.*found a dict with keys \['model', 'opt', 'epoch'\]"):
        load_state_dict(tmp_path / "extra.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ModelDefinitionError, match="found list"):
        load_state_dict(tmp_path / "list.pth")
    torch.save({"model": sd}, tmp_path / "model_only.pth")
    with pytest.raises(ModelDefinitionError, match=r"keys \['model'\]"):
        load_state_dict(tmp_path / "model_only.pth")
    # an arbitrary pickled object is never unpickled (weights_only=True)
    torch.save({"weights": sd, "fn": math.floor}, tmp_path / "code.pth")
    with pytest.raises(ModelDefinitionError, match=r"code\.pth: cannot be loaded as plain weights .*weights_only=True"):
        load_state_dict(tmp_path / "code.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with pytest.raises(ModelDefinitionError, match="cannot be loaded as plain weights"):
        load_state_dict(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="no such weights"):
        load_state_dict(tmp_path / "absent.pth")


# ----------------------------------------------------------------------------- atomic saves


def hidden_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_interrupted_save_keeps_the_previous_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_tiny(tmp_path / "models" / "pools", seed=0)
    before = package_files(folder)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. the analyst interrupts the kernel while the .dlpk is zipped

    monkeypatch.setattr(package, "_write_dlpk", crash)
    with pytest.raises(KeyboardInterrupt):
        save_tiny(folder, seed=1)
    assert package_files(folder) == before
    assert hidden_leftovers(folder.parent) == []
    model = read_emd(resolve_model(folder)[0])
    assert all(torch.equal(load_state_dict(model.model_file)[k], v) for k, v in tiny_state_dict(0).items())


def test_interrupted_first_save_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package, "_write_dlpk", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_tiny(tmp_path / "models" / "pools")
    assert list((tmp_path / "models").iterdir()) == []


def test_failed_swap_puts_the_previous_package_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_tiny(tmp_path / "pools", seed=0)
    before = package_files(folder)
    real_rename = package.os.rename

    def rename(source, destination):
        if Path(source).name.startswith(".pools.saving-"):
            raise OSError("rename failed")
        return real_rename(source, destination)

    monkeypatch.setattr(package.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        save_tiny(folder, seed=1)
    assert package_files(folder) == before
    assert hidden_leftovers(tmp_path) == []


def test_next_save_clears_what_a_killed_save_left(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "pools", seed=0)
    # killed while writing: a half-written staging folder
    staging = tmp_path / ".pools.saving-0123abcd"
    staging.mkdir()
    (staging / "pools.pth").write_bytes(b"half")
    # killed after the swap, before the backup was deleted
    done = tmp_path / ".pools.previous-89abcdef"
    done.mkdir()
    save_tiny(folder, seed=1)
    assert hidden_leftovers(tmp_path) == []
    assert torch.equal(load_state_dict(folder / "pools.pth")["encoder.0.weight"], tiny_state_dict(1)["encoder.0.weight"])


def test_next_save_puts_back_a_package_a_kill_between_the_renames_left_aside(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "pools", seed=0)
    before = package_files(folder)
    staging = tmp_path / ".pools.saving-0123abcd"  # the new package, complete but never moved in
    save_tiny(staging, seed=1)
    folder.rename(tmp_path / ".pools.previous-89abcdef")  # the first rename; the kill came before the second
    with pytest.raises(OutputExistsError):  # the previous package is back, and overwrite=False keeps it
        save_tiny(folder, seed=2, overwrite=False)
    assert package_files(folder) == before
    assert hidden_leftovers(tmp_path) == []


def test_resave_replaces_the_package(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "pools", seed=0, extra_files={"pools-cpu.pt": b"old"})
    save_tiny(folder, seed=1, figures={})
    assert sorted(package_files(folder)) == ["GeolearnObjectDetector.py", "model_metrics.html", "pools.dlpk",
                                             "pools.emd", "pools.pth"]
    assert torch.equal(load_state_dict(folder / "pools.pth")["encoder.0.weight"], tiny_state_dict(1)["encoder.0.weight"])
    assert hidden_leftovers(tmp_path) == []


def test_save_refuses_to_delete_what_it_did_not_write(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "pools")
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(OutputExistsError, match=r"holds files a model save did not write: \['notes\.txt'\]"):
        save_tiny(folder, seed=1)
    assert (folder / "notes.txt").read_text() == "my notes"
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.docx").write_bytes(b"...")
    with pytest.raises(OutputExistsError, match="thesis.docx"):
        save_tiny(documents, name="Documents")
    assert (documents / "thesis.docx").exists()
    assert hidden_leftovers(tmp_path) == []


def test_overwrite_false_refuses_an_existing_model(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "pools")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        save_tiny(folder, overwrite=False)
    (tmp_path / "empty").mkdir()
    assert save_tiny(tmp_path / "empty", name="empty", overwrite=False) == tmp_path / "empty"


def test_save_package_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name="):
        save_package(tmp_path / "x", "../x", state_dict=tiny_state_dict(), emd=rgb_emd())
    with pytest.raises(ValueError, match="state_dict"):
        save_package(tmp_path / "x", "x", state_dict={"w": [1.0]}, emd=rgb_emd())
    with pytest.raises(ValueError, match="extra_files"):
        save_package(tmp_path / "x", "x", state_dict=tiny_state_dict(), emd=rgb_emd(),
                     extra_files={"../escape.pt": b""})
    assert not (tmp_path / "x").exists() and hidden_leftovers(tmp_path) == []


def test_only_geolearns_raster_function_is_shipped_and_a_0_1_folder_is_replaceable(tmp_path: Path) -> None:
    # An EMD pointing Pro at its own copy of Esri's script ships no script of ours.
    folder = save_package(tmp_path / "esri", "esri", state_dict=tiny_state_dict(),
                          emd=rgb_emd(inference_function=PRO_INFERENCE_FUNCTION))
    assert not (folder / "GeolearnObjectDetector.py").exists()
    # A folder saved by geolearn 0.1 held Esri's script name: a new save may replace it.
    old = tmp_path / "pools"
    old.mkdir()
    (old / "ArcGISObjectDetector.py").write_text("# written by an earlier save")
    (old / "pools.pth").write_bytes(b"old")
    save_tiny(old)
    assert (old / "GeolearnObjectDetector.py").exists() and not (old / "ArcGISObjectDetector.py").exists()
