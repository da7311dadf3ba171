"""Backbones of geolearn.models.backbones: the table, encoders, weights fallback, multispectral conv1.

No test downloads: TORCH_HOME points to an empty tmp folder and torchvision's download
function is replaced by one that fails as an offline machine does.
"""

from __future__ import annotations

import urllib.error
import warnings

import pytest
import torch
import torchvision
from torch import nn

from geolearn.errors import GeolearnWarning
from geolearn.models import backbones
from geolearn.models.backbones import (
    BACKBONES,
    adapt_first_conv,
    build_encoder,
    multispectral_kernel,
    resolve_backbone,
    supported_backbones,
)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch cache, downloads that fail, and a fresh once-per-process warning record."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(backbones, "_WARNED_NO_WEIGHTS", set())

    def no_network(url, *args, **kwargs):
        # what urllib raises on a machine without DNS, after load_state_dict_from_url found no cached file
        import os

        from torch.hub import get_dir

        cached = os.path.join(get_dir(), "checkpoints", os.path.basename(url))
        if os.path.exists(cached):
            return torch.load(cached, map_location="cpu", weights_only=True)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    return tmp_path / "torch"


def rgb_kernel() -> torch.Tensor:
    """A [2, 3, 1, 1] kernel whose R, G, B channels are 1, 2, 4 (sums identify the mix)."""
    return torch.tensor([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1).repeat(2, 1, 1, 1)


def test_table_lists_arcgis_backbones():
    assert supported_backbones() == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert BACKBONES["resnet50"].channels == (512, 1024, 2048)
    assert BACKBONES["resnet34"].channels == (128, 256, 512)


def test_backbone_by_name_or_torchvision_function():
    assert resolve_backbone("ResNet34").name == "resnet34"
    assert resolve_backbone(torchvision.models.resnet34).name == "resnet34"
    assert resolve_backbone(torchvision.models.resnet.resnet101).name == "resnet101"


@pytest.mark.parametrize("bad", ["vgg16", torchvision.models.vgg11, 42])
def test_unsupported_backbone_lists_the_supported(bad):
    with pytest.raises(ValueError, match=r"not supported; use one of \['resnet18'"):
        resolve_backbone(bad)


def test_encoder_is_the_first_eight_resnet_children():
    encoder, channels = build_encoder("resnet18", pretrained=False)
    assert isinstance(encoder, nn.Sequential) and len(encoder) == 8
    assert channels == (128, 256, 512)
    keys = list(encoder.state_dict())
    assert keys[:2] == ["0.weight", "1.weight"]
    assert "4.0.conv1.weight" in keys and "7.1.bn2.num_batches_tracked" in keys
    with torch.no_grad():
        assert encoder.eval()(torch.zeros(1, 3, 100, 100)).shape == (1, 512, 4, 4)  # ceil(100 / 32)


def test_encoder_from_torchvision_function():
    encoder, channels = build_encoder(torchvision.models.resnet34, pretrained=False)
    assert channels == (128, 256, 512)
    assert len(encoder[5]) == 4  # resnet34's layer2 has 4 blocks


def test_missing_weights_warn_once_and_training_goes_on(offline):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, _ = build_encoder("resnet18", pretrained=True)
        second, _ = build_encoder("resnet18", pretrained=True)
    ours = [w for w in caught if issubclass(w.category, GeolearnWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert "ImageNet weights for resnet18 could not be loaded" in message
    assert "random initialisation" in message
    assert str(offline / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert isinstance(first, nn.Sequential) and isinstance(second, nn.Sequential)


def test_missing_weights_warn_once_per_backbone(offline):
    with pytest.warns(GeolearnWarning, match="resnet18"):
        build_encoder("resnet18", pretrained=True)
    with pytest.warns(GeolearnWarning, match="resnet34"):
        build_encoder("resnet34", pretrained=True)


def test_weights_file_put_where_the_warning_says_is_used(offline):
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        reference.conv1.weight.fill_(0.125)
    checkpoints = offline / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeolearnWarning)
        encoder, _ = build_encoder("resnet18", pretrained=True)
    assert torch.all(encoder[0].weight == 0.125)


def test_broken_weights_file_warns_and_goes_on(offline, monkeypatch):
    # the real torch.hub loader on a truncated cache file (no network involved: the file exists)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", torch.hub.load_state_dict_from_url)
    checkpoints = offline / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(GeolearnWarning, match="replace a broken file"):
        encoder, _ = build_encoder("resnet18", pretrained=True)
    assert isinstance(encoder, nn.Sequential)


def test_four_bands_repeat_rgb_cyclically_scaled_by_three_quarters():
    kernel = multispectral_kernel(rgb_kernel(), 4)
    assert kernel.shape == (2, 4, 1, 1)
    torch.testing.assert_close(kernel[0, :, 0, 0], torch.tensor([1.0, 2.0, 4.0, 1.0]) * 0.75)


def test_named_rgb_bands_take_their_pretrained_channel():
    kernel = multispectral_kernel(rgb_kernel(), 4, ["NIR", "Red", "green", "BLUE"])
    # nir is the first unnamed band: it starts the R, G, B cycle
    torch.testing.assert_close(kernel[0, :, 0, 0], torch.tensor([1.0, 1.0, 2.0, 4.0]) * 0.75)
    kernel = multispectral_kernel(rgb_kernel(), 5, ["blue", "green", "red", "nir", "swir"])
    torch.testing.assert_close(kernel[0, :, 0, 0], torch.tensor([4.0, 2.0, 1.0, 1.0, 2.0]) * 0.6)


def test_band_count_multiple_of_three_keeps_the_total_response():
    kernel = multispectral_kernel(rgb_kernel(), 6)
    torch.testing.assert_close(kernel.sum(dim=1), rgb_kernel().sum(dim=1))


@pytest.mark.parametrize(("n_bands", "expected"), [(1, [7.0]), (2, [5.0, 2.0])])
def test_fewer_bands_than_rgb_fold_the_channels(n_bands, expected):
    torch.testing.assert_close(multispectral_kernel(rgb_kernel(), n_bands)[0, :, 0, 0], torch.tensor(expected))


def test_band_names_must_match_the_band_count():
    with pytest.raises(ValueError, match="names 3 bands but n_bands=4"):
        multispectral_kernel(rgb_kernel(), 4, ["red", "green", "blue"])


def test_adapted_conv_keeps_geometry_and_takes_n_bands():
    conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    new = adapt_first_conv(conv, 4, ["red", "green", "blue", "nir"])
    assert new.weight.shape == (64, 4, 7, 7)
    assert (new.stride, new.padding, new.bias) == ((2, 2), (3, 3), None)
    torch.testing.assert_close(new.weight[:, :3], conv.weight * 0.75)
    torch.testing.assert_close(new.weight[:, 3], conv.weight[:, 0] * 0.75)


def test_three_bands_in_rgb_order_keep_the_conv_and_bgr_permutes_it():
    conv = nn.Conv2d(3, 8, 3)
    assert adapt_first_conv(conv, 3) is conv
    assert adapt_first_conv(conv, 3, ["red", "green", "blue"]) is conv
    bgr = adapt_first_conv(conv, 3, ["blue", "green", "red"])
    torch.testing.assert_close(bgr.weight, conv.weight[:, [2, 1, 0]])
    torch.testing.assert_close(bgr.bias, conv.bias)


def test_multispectral_encoder_runs_on_four_bands():
    encoder, _ = build_encoder("resnet18", pretrained=False, n_bands=4, band_names=["red", "green", "blue", "nir"])
    assert encoder[0].weight.shape == (64, 4, 7, 7)
    with torch.no_grad():
        assert encoder.eval()(torch.rand(1, 4, 64, 64)).shape == (1, 512, 2, 2)


@pytest.mark.parametrize("backbone, last_norm", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_random_backbone_starts_every_residual_block_as_the_identity(backbone, last_norm):
    encoder, _ = build_encoder(backbone, pretrained=False)
    blocks = [block for layer in encoder[4:] for block in layer]
    assert len(blocks) == (8 if backbone == "resnet18" else 16)
    for block in blocks:
        assert torch.count_nonzero(getattr(block, last_norm).weight) == 0
        assert torch.all(block.bn1.weight == 1)  # only the block's last scale is zeroed
    # A block with a zero residual branch and no downsampling passes its input through (after ReLU).
    block = encoder[4][1].eval()
    x = torch.rand(1, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(x))
