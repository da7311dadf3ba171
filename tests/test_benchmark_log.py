"""benchmarks/real_accuracy.py's committed log: its table in docs/training.md, the screen's ranking
check, and the SOAP plot's boxes in map units.

The benchmark itself trains for minutes and is not run here; these are the parts whose mistakes
would put wrong figures into the docs without a run noticing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import benchmark_module

REPO = Path(__file__).resolve().parents[1]
NEON = REPO.parent / "shared" / "data" / "neon"


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("real_accuracy")


def record(bench, epochs: int, changed: dict, aps: tuple[float, float, float], method: str = "geolearn") -> dict:
    return {"label": "x", "method": method, "changed": changed, "budget": {"epochs": epochs}, "epochs": epochs,
            "train_s": 60.0, "machine": {"cpu": "test CPU"}, "commit": "abc1234",
            "sites": {site: {"ap40": ap, "ap50": ap / 2} for site, ap in zip(bench.SITES, aps)}}


def test_docs_table_is_generated_from_the_committed_log(bench):
    text = (REPO / "docs" / "training.md").read_text()
    block = text.split(bench.DOCS_BEGIN, 1)[1].split(bench.DOCS_END, 1)[0]
    assert block.strip() == bench.generated_docs().strip(), (
        "docs/training.md's table differs from benchmarks/results/real_accuracy.jsonl: run "
        "python benchmarks/real_accuracy.py --write-docs docs/training.md")
    assert bench.read_log(), "the log holds the runs behind the docs' figures"


def test_table_rows_show_each_sites_aps(bench):
    table = bench.markdown_table([record(bench, 30, {"aug": {"zoom": 0}}, (0.5, 0.25, 0.125))])
    header, _, row = table.splitlines()
    assert "aug.zoom=0" in row and "0.500 / 0.250" in row and "0.250 / 0.125" in row and "0.125 / 0.062" in row
    assert header.count("|") == row.count("|")


def test_screen_agreement_ranks_by_mean_ap(bench):
    s, f = bench.SCREEN_EPOCHS, bench.FULL_EPOCHS
    # Means: A screen 0.2, full 0.5; B screen 0.3, full 0.4 -> the screen ranks B first, full runs A.
    records = [record(bench, s, {}, (0.2, 0.2, 0.2)), record(bench, f, {}, (0.5, 0.5, 0.5)),
               record(bench, s, {"aug": {"zoom": 0}}, (0.3, 0.3, 0.3)),
               record(bench, f, {"aug": {"zoom": 0}}, (0.6, 0.3, 0.3)),
               record(bench, f, {}, (0.9, 0.9, 0.9), method="bare torchvision")]  # not a geolearn setting
    text = bench.screen_agreement(records)
    assert "| x: defaults | 0.200, 2 | 0.500, 1 |" in text
    assert "| x: aug.zoom=0 | 0.300, 1 | 0.400, 2 |" in text
    assert text.endswith("The rankings of these 2 settings disagree.")
    # A later screen of the defaults replaces the earlier one: now both rank the defaults first.
    assert bench.screen_agreement(records + [record(bench, s, {}, (0.4, 0.4, 0.4))]).endswith("agree.")
    assert bench.screen_agreement(records[:2]) == ""  # one setting: nothing to rank
    # A full run of the same settings under another label (other defaults) pairs with no screen.
    relabelled = records[:1] + [record(bench, f, {}, (0.1, 0.1, 0.1)) | {"label": "y"}] + records[2:4]
    assert bench.screen_agreement(relabelled) == ""


@pytest.mark.skipif(not (NEON / "soap_voc").exists(), reason="needs ../shared/data/neon/")
def test_soap_boxes_reach_map_units(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WORK", tmp_path)
    raster, truth = bench.soap_site(NEON)
    assert truth.shape == (37, 4)  # Alive and Dead, one class
    # The VOC file's first crown: xmin 149, ymin 105, xmax 173, ymax 129 pixels; 0.1 m pixels on
    # an origin at (0, 400 * 0.1): x = col * 0.1, y = 40 - row * 0.1.
    assert torch.allclose(truth[0], torch.tensor([14.9, 40 - 12.9, 17.3, 40 - 10.5], dtype=torch.float64))
    import rasterio
    with rasterio.open(raster) as src:
        assert (src.width, src.height, src.count, src.crs.to_epsg()) == (400, 400, 3, 32611)
        assert src.res == (0.1, 0.1)


def test_matched_raster_takes_the_reference_band_moments(bench, tmp_path, monkeypatch):
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    monkeypatch.setattr(bench, "WORK", tmp_path)
    rng = np.random.default_rng(0)

    def write(name, pixels):
        path = tmp_path / name / "r.tif"
        path.parent.mkdir()
        with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=2, dtype="uint8",
                           crs="EPSG:32633", transform=from_origin(0, 64, 1, 1)) as dst:
            dst.write(pixels)
        return path

    source = write("site", rng.normal([[[60.0]], [[150.0]]], [[[10.0]], [[20.0]]], (2, 64, 64)).clip(0, 255).astype("uint8"))
    reference = write("train", rng.normal([[[120.0]], [[100.0]]], [[[30.0]], [[5.0]]], (2, 64, 64)).clip(0, 255).astype("uint8"))
    mean, std = bench.band_moments(bench.matched(source, reference))
    ref_mean, ref_std = bench.band_moments(reference)
    # The moments move to the reference's (within the rounding to whole 8-bit values).
    assert mean == pytest.approx(ref_mean, abs=0.6) and std == pytest.approx(ref_std, abs=0.6)


def test_standardize_chip_gives_each_chip_band_mean_0_std_1(bench):
    # float64 and a seeded draw: float32 sums of 64 values with an offset of 3 round by ~1e-5
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = bench.StandardizeChip.standardize(images * torch.tensor([1.0, 5.0, 0.1], dtype=torch.float64)[:, None, None] + 3.0)
    assert torch.allclose(out.mean((-2, -1)), torch.zeros(2, 3, dtype=torch.float64), atol=1e-9)
    # std 1 up to the 1e-6 the divisor adds against flat chips: 1e-6 / 0.029 for the flattest band
    assert torch.allclose(out.std((-2, -1)), torch.ones(2, 3, dtype=torch.float64), atol=1e-4)
