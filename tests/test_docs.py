"""The documentation site builds, with warnings as errors, and the tutorial notebook runs.

``mkdocs build --strict`` fails on a broken link or page reference, a docstring that names a
parameter its function does not have, an API page whose object does not exist, and — since
mkdocs.yml executes docs/tutorial.ipynb with ``allow_errors: false`` — on any notebook cell
that raises. The tutorial trains for ``GEOLEARN_TUTORIAL_EPOCHS`` epochs: one here, the demo's
count when the site is built for reading. The build that runs the tutorial trains a model and is
marked slow (``pytest -m slow``); the strict build without running it is in the default run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _build_site(tmp_path, execute: bool):
    """``mkdocs build --strict`` of the site into ``tmp_path/site``; the tutorial run for one epoch or not run."""
    site = tmp_path / "site"
    env = {
        **os.environ,
        "GEOLEARN_TUTORIAL_EPOCHS": "1",
        "GEOLEARN_TUTORIAL_OUT": str(tmp_path / "tutorial"),
        "GEOLEARN_DOCS_EXECUTE": "true" if execute else "false",
        "NO_MKDOCS_2_WARNING": "1",  # mkdocs-material's notice about its successor: not a build problem
        # The tutorial trains from random weights (pretrained=False): nothing to download.
        "TORCH_HOME": str(tmp_path / "torch_home"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-6000:]}\n{result.stderr[-12000:]}"
    return site


@pytest.mark.skipif(not (REPO / "mkdocs.yml").exists(), reason="run from a source checkout")
def test_docs_build_strict(tmp_path):
    """Links, page references, docstrings and API pages, without running the tutorial (quick)."""
    site = _build_site(tmp_path, execute=False)
    for page in ("getting-started", "evaluation", "arcgis-learn", "reference/retinanet", "cli", "tutorial"):
        assert (site / page / "index.html").exists(), page
    reference = (site / "reference" / "retinanet" / "index.html").read_text(encoding="utf-8")
    assert "average_precision_score" in reference and "lr_find" in reference and "ModelConfig" in reference


@pytest.mark.slow  # trains the tutorial's model for an epoch: minutes on 2 cores
@pytest.mark.skipif(not (REPO / "mkdocs.yml").exists(), reason="run from a source checkout")
def test_docs_build_strict_and_tutorial_runs(tmp_path):
    site = _build_site(tmp_path, execute=True)
    tutorial = (site / "tutorial" / "index.html").read_text(encoding="utf-8")
    # Executed, not just rendered: the epoch table, figures and the detections are in the page.
    assert "average_precision" in tutorial and "train_loss" in tutorial
    assert tutorial.count("data:image/png;base64") >= 5
    assert "COCO mAP@[.5:.95]" in tutorial and "detections_arcgis_style" in tutorial
    for page in ("getting-started", "evaluation", "arcgis-learn", "reference/retinanet", "cli"):
        assert (site / page / "index.html").exists(), page
    reference = (site / "reference" / "retinanet" / "index.html").read_text(encoding="utf-8")
    assert "average_precision_score" in reference and "lr_find" in reference


def test_evaluation_worked_example_matches_the_metrics():
    """docs/evaluation.md computes these three numbers by hand; the code must agree."""
    from geolearn.metrics import average_precision, coco_map

    targets = [
        (torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]]), torch.tensor([1, 1])),
        (torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1])),
    ]
    predictions = [
        (torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 12]]), torch.tensor([1, 1, 1]),
         torch.tensor([0.9, 0.7, 0.6])),
        (torch.tensor([[5.0, 0, 15, 10]]), torch.tensor([1]), torch.tensor([0.8])),
    ]
    assert average_precision(predictions, targets, iou_thresh=0.1) == pytest.approx({1: 11 / 12})
    assert average_precision(predictions, targets, iou_thresh=0.5) == pytest.approx({1: 0.5})
    assert coco_map(predictions, targets) == pytest.approx((7 * 0.5 + 3 * 34 / 101) / 10)
    text = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
    for shown in ("11/12 ≈ 0.917", "1/2 = 0.5", "≈ **0.451**", "{1: 0.9166...}", "0.4509..."):
        assert shown in text
