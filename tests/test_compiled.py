"""Compiled inference: ``CompiledNetwork``'s padding and fallback, and ``detect_objects(compiled=True)``
finding what the uncompiled network finds (torch.compile itself, on fixed weights)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn
from torchvision.ops import box_iou

from geolearn.cache import cache_root
from geolearn.models.compiled import CACHE_VARIABLE, CompiledNetwork, compile_cache

from conftest import firing_retinanet


def recording_compiler(seen: list[tuple[int, ...]]):
    """Stands for torch.compile: runs the module as it is, noting each input shape; two outputs, as RetinaNet's."""
    def compile_(module: nn.Module):
        def run(images: torch.Tensor) -> list[torch.Tensor]:
            seen.append(tuple(images.shape))
            return [module(images), 2 * module(images)]
        return run
    return compile_


def test_a_short_batch_runs_padded_to_the_first_and_returns_its_own_outputs_only():
    seen: list[tuple[int, ...]] = []
    network = nn.Conv2d(3, 2, 1).eval()
    run = CompiledNetwork(network, compiler=recording_compiler(seen))
    images = torch.randn(5, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        run(images[:4])
        short = run(images[4:])
        expected = network(images[4:])
    assert seen == [(4, 3, 4, 4), (4, 3, 4, 4)]  # one shape: compiled once
    assert [part.shape[0] for part in short] == [1, 1]
    # In a batch of 4 the convolution may sum in another order than for 1 image: float rounding.
    torch.testing.assert_close(short[0], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(short[1], 2 * expected, rtol=0, atol=2e-6)


def failing_compiler(module: nn.Module):
    def run(images: torch.Tensor):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nfatal error: g++ not found")
    return run


def test_when_compiling_fails_it_warns_once_and_runs_the_network_as_it_is():
    network = nn.Conv2d(3, 2, 1).eval()
    run = CompiledNetwork(network, compiler=failing_compiler)
    images = torch.randn(2, 3, 4, 4)
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match=r"could not compile the network \(RuntimeError: InductorError.*"
                                                r"runs uncompiled.*C\+\+ compiler"):
            first = run(images)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            second = run(images)
        expected = network(images)
    assert not run.is_compiled
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)


def test_an_error_of_the_network_itself_is_raised_as_that_error():
    run = CompiledNetwork(nn.Conv2d(3, 2, 1).eval(), compiler=lambda module: module)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="to have 3 channels, but got 4"):
        run(torch.zeros(2, 4, 4, 4))


def test_the_compile_cache_is_the_users_choice_else_in_geolearns_cache():
    environ: dict[str, str] = {}
    assert compile_cache(environ) == cache_root() / "torchinductor"
    assert environ == {CACHE_VARIABLE: str(cache_root() / "torchinductor")}  # where inductor reads it
    chosen = {CACHE_VARIABLE: "/data/inductor"}
    assert str(compile_cache(chosen)) == "/data/inductor" and chosen == {CACHE_VARIABLE: "/data/inductor"}


def matched(boxes: torch.Tensor, others: torch.Tensor, iou: float = 0.9) -> int:
    """How many of ``boxes`` have a box among ``others`` at IoU above ``iou``."""
    if len(boxes) == 0 or len(others) == 0:
        return 0
    return int((box_iou(boxes, others).max(dim=1).values > iou).sum())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_detection_finds_what_the_uncompiled_network_finds(tiny_data, tmp_path, monkeypatch, precision):
    """torch.compile itself, on fixed weights, over a raster of 12 windows (6 batches of 2; the
    compiled graph is built once). float32: the same boxes to float rounding; bfloat16: the same
    objects at IoU > 0.9, as bfloat16 autocast matches float32 (issue 17's criterion)."""
    monkeypatch.delenv(CACHE_VARIABLE, raising=False)  # restored after: compile_cache sets it for the session
    model = firing_retinanet(tiny_data, seed=3)
    model.mixed_precision = precision == "bf16"
    pixels = np.random.default_rng(0).integers(0, 255, (3, 150, 200)).astype(np.uint8)
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=150, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000.0, 4000000.0, 0.3, 0.3)) as dst:
        dst.write(pixels)
    eager = model.detect_objects(path, progress=False, threshold=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would make this test pass vacuously
        compiled = model.detect_objects(path, progress=False, threshold=0.3, compiled=True)
    assert len(eager) >= 10  # the heads fire: enough boxes to compare
    boxes = {name: torch.tensor(np.array([g.bounds for g in frame.geometry])) for name, frame in
             (("eager", eager), ("compiled", compiled))}
    if precision == "fp32":
        assert len(compiled) == len(eager)
        torch.testing.assert_close(boxes["compiled"], boxes["eager"], rtol=0, atol=1e-3 * 0.3)
        np.testing.assert_allclose(compiled["Confidence"], eager["Confidence"], atol=0.01)
        assert compiled["Class"].tolist() == eager["Class"].tolist()
    else:
        assert matched(boxes["compiled"], boxes["eager"]) >= 0.95 * len(eager)
        assert matched(boxes["eager"], boxes["compiled"]) >= 0.95 * len(compiled)
