"""ResNet encoders for the RetinaNet, with ImageNet weights when they can be had.

One table, :data:`BACKBONES`, holds every per-backbone fact. :func:`build_encoder` turns a name
(or torchvision's own builder function, as arcgis.learn accepts) into the ``nn.Sequential`` of
the ResNet's first eight children that arcgis.learn calls ``encoder``.

Pretrained weights come through torchvision's own mechanism (``weights.get_state_dict``, cached
under ``$TORCH_HOME/hub/checkpoints``). Offline, that fails; we warn once and train from random
initialisation rather than stop, because a notebook on an air-gapped workstation should still run.

Multispectral chips (``n_bands != 3``) get a new first convolution whose kernel is built from the
pretrained RGB kernel (:func:`multispectral_kernel`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torchvision.models import (
    ResNet,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
    WeightsEnum,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from torchvision.models.resnet import BasicBlock, Bottleneck

from geolearn.errors import GeolearnWarning

__all__ = [
    "Backbone",
    "BACKBONES",
    "supported_backbones",
    "resolve_backbone",
    "build_encoder",
    "zero_init_residuals",
    "pretrained_state_dict",
    "multispectral_kernel",
    "adapt_first_conv",
]


@dataclass(frozen=True)
class Backbone:
    """What the detector needs to know about one backbone.

    Attributes:
        name: arcgis.learn's name for it (``'resnet50'``).
        builder: torchvision's model function.
        weights: the ImageNet weights arcgis.learn (through fastai) uses: torchvision's V1.
        channels: output channels of layer2, layer3, layer4 (C3, C4, C5).

    Examples:
        >>> BACKBONES["resnet50"].channels
        (512, 1024, 2048)
    """

    name: str
    builder: Callable[..., ResNet]
    weights: WeightsEnum
    channels: tuple[int, int, int]


BACKBONES: dict[str, Backbone] = {
    spec.name: spec
    for spec in (
        Backbone("resnet18", resnet18, ResNet18_Weights.IMAGENET1K_V1, (128, 256, 512)),
        Backbone("resnet34", resnet34, ResNet34_Weights.IMAGENET1K_V1, (128, 256, 512)),
        Backbone("resnet50", resnet50, ResNet50_Weights.IMAGENET1K_V1, (512, 1024, 2048)),
        Backbone("resnet101", resnet101, ResNet101_Weights.IMAGENET1K_V1, (512, 1024, 2048)),
        Backbone("resnet152", resnet152, ResNet152_Weights.IMAGENET1K_V1, (512, 1024, 2048)),
    )
}

# Children of a torchvision ResNet kept as the encoder: conv1, bn1, relu, maxpool, layer1..layer4
# (avgpool and fc dropped), so the keys read encoder.0.*, encoder.1.*, encoder.4.* ... encoder.7.*.
_ENCODER_CHILDREN = 8
# Seconds a stalled socket may wait while downloading weights. urllib waits forever by default,
# which on a network that silently drops packets would freeze a notebook at model creation.
_DOWNLOAD_TIMEOUT_S = 30.0
# Backbones already warned about missing weights in this process (one warning each).
_WARNED_NO_WEIGHTS: set[str] = set()
# Band names that take the matching pretrained channel, in the RGB kernel's channel order.
_RGB_NAMES = ("red", "green", "blue")


def supported_backbones() -> list[str]:
    """The backbone names :func:`build_encoder` accepts.

    Returns:
        The names of :data:`BACKBONES`, smallest network first.

    Examples:
        >>> supported_backbones()
        ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152']
    """
    return list(BACKBONES)


def resolve_backbone(backbone: str | Callable[..., nn.Module]) -> Backbone:
    """The table entry for a name (``'resnet50'``, any case) or a torchvision builder function.

    Args:
        backbone: a name from :data:`BACKBONES` (any case), or torchvision's function such as
            ``torchvision.models.resnet50``.

    Returns:
        The backbone's table entry.

    Raises:
        ValueError: anything else; the message lists the supported names.

    Examples:
        >>> import torchvision
        >>> resolve_backbone("ResNet34").name, resolve_backbone(torchvision.models.resnet50).channels
        ('resnet34', (512, 1024, 2048))
    """
    if isinstance(backbone, str):
        spec = BACKBONES.get(backbone.lower())
    else:
        spec = next((s for s in BACKBONES.values() if s.builder is backbone), None)
        if spec is None and callable(backbone) and getattr(backbone, "__module__", "").startswith("torchvision."):
            # The same torchvision function reached through another import path or a re-export.
            spec = BACKBONES.get(getattr(backbone, "__name__", ""))
    if spec is None:
        raise ValueError(
            f"backbone={backbone!r} is not supported; use one of {supported_backbones()} "
            "(a name, or the torchvision function such as torchvision.models.resnet50)."
        )
    return spec


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Gives new sockets a timeout, unless the process already set its own default."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def pretrained_state_dict(spec: Backbone) -> dict[str, Tensor] | None:
    """ImageNet weights of a backbone from torchvision's cache, downloading them if needed.

    A stalled download gives up after 30 s (unless the process set its own socket timeout).

    Args:
        spec: the backbone's table entry (:data:`BACKBONES`).

    Returns:
        The torchvision ResNet's state_dict, or None when the weights cannot be had (no internet,
        a proxy refusing, a broken cache file). Then a :class:`~geolearn.errors.GeolearnWarning`
        says so and how to fix it, once per process and backbone.

    Examples:
        >>> state = pretrained_state_dict(BACKBONES["resnet18"])  # doctest: +SKIP
        >>> state["conv1.weight"].shape  # doctest: +SKIP
        torch.Size([64, 3, 7, 7])
    """
    try:
        with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
            return spec.weights.get_state_dict(progress=False, check_hash=True)
    # URLError, HTTPError, timeouts and connection resets are OSErrors; a truncated or corrupt
    # cached file makes torch.load raise RuntimeError, UnpicklingError or EOFError, and a
    # download with the wrong hash RuntimeError.
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        if spec.name not in _WARNED_NO_WEIGHTS:
            _WARNED_NO_WEIGHTS.add(spec.name)
            file_name = spec.weights.url.rsplit("/", 1)[-1]
            cached = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
            warnings.warn(
                f"ImageNet weights for {spec.name} could not be loaded ({type(error).__name__}: {error}); "
                "training starts from random initialisation, which needs far more data and epochs. "
                f"To fix: run once with internet access, or download {spec.weights.url} and save it as "
                f"{cached} (that is $TORCH_HOME/hub/checkpoints/{file_name}; replace a broken file there).",
                GeolearnWarning,
                stacklevel=3,
            )
        return None


def _band_sources(n_bands: int, band_names: Sequence[str] | None) -> list[int]:
    """For each band, the RGB channel (0, 1, 2) whose pretrained kernel it starts from.

    Bands named red/green/blue (any case) take their own channel; the others take R, G, B, R, ...
    cyclically, in their order.
    """
    names = [name.lower() for name in band_names] if band_names is not None else [""] * n_bands
    sources, cycle = [], 0
    for name in names:
        if name in _RGB_NAMES:
            sources.append(_RGB_NAMES.index(name))
        else:
            sources.append(cycle % 3)
            cycle += 1
    return sources


def multispectral_kernel(
    rgb_weight: Tensor, n_bands: int, band_names: Sequence[str] | None = None
) -> Tensor:
    """The first convolution's kernel for ``n_bands`` input bands, from a kernel for RGB.

    Rule, chosen so that the pretrained features and the BatchNorm statistics after the first
    convolution still fit:

    * ``n_bands >= 3``: band ``b`` gets the RGB channel ``source[b]`` — red/green/blue bands
      (named in ``band_names``, any case) their own channel, every other band R, G, B, R, ...
      in turn — and **every** band, the named ones included, is scaled by ``3 / n_bands``. On an
      image whose bands carry similar signals the response (the sum over input channels) then
      stays that of the RGB kernel (exactly when ``n_bands`` is a multiple of 3); not scaling
      the RGB bands would make the first layer's activations ``n/3`` times too large for the
      pretrained BatchNorm that follows.
    * ``n_bands < 3``: RGB channel ``c`` is added to band ``c % n_bands`` (one band gets
      R + G + B): a grey image gives exactly the pretrained response.

    Args:
        rgb_weight: ``Tensor[O, 3, k, k]``, channels in R, G, B order.
        n_bands: the number of input bands.
        band_names: ``n_bands`` band names, or None (the default: no band is named).

    Returns:
        ``Tensor[O, n_bands, k, k]``.

    Raises:
        ValueError: ``rgb_weight`` does not have 3 input channels, ``n_bands`` < 1, or
            ``band_names`` has another length than ``n_bands``.

    Examples:
        >>> rgb = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)  # one output channel, 1 × 1 kernel
        >>> multispectral_kernel(rgb, 4, ["red", "green", "blue", "nir"]).flatten()  # nir starts from R; all × 3/4
        tensor([0.7500, 1.5000, 2.2500, 0.7500])
        >>> multispectral_kernel(rgb, 1).flatten()  # one band: R + G + B
        tensor([6.])
    """
    if rgb_weight.ndim != 4 or rgb_weight.shape[1] != 3:
        raise ValueError(f"rgb_weight must have shape [out, 3, k, k], got {tuple(rgb_weight.shape)}.")
    if n_bands < 1:
        raise ValueError(f"n_bands={n_bands} must be at least 1.")
    if band_names is not None and len(band_names) != n_bands:
        raise ValueError(f"band_names={list(band_names)} names {len(band_names)} bands but n_bands={n_bands}.")
    if n_bands < 3:
        out = rgb_weight.new_zeros(rgb_weight.shape[0], n_bands, *rgb_weight.shape[2:])
        for channel in range(3):
            out[:, channel % n_bands] += rgb_weight[:, channel]
        return out
    return rgb_weight[:, _band_sources(n_bands, band_names)] * (3 / n_bands)


def adapt_first_conv(conv: nn.Conv2d, n_bands: int, band_names: Sequence[str] | None = None) -> nn.Conv2d:
    """A copy of an RGB convolution taking ``n_bands`` inputs, kernel from :func:`multispectral_kernel`.

    Args:
        conv: a convolution with 3 input channels (ResNet's conv1).
        n_bands: the number of input bands (see :func:`multispectral_kernel`).
        band_names: ``n_bands`` band names, or None (the default).

    Returns:
        A new ``nn.Conv2d`` with the same geometry and ``n_bands`` input channels; ``conv`` itself
        when the new kernel would be the old one (3 bands in R, G, B order). The bias is copied.

    Raises:
        ValueError: see :func:`multispectral_kernel`.

    Examples:
        >>> conv = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        >>> adapt_first_conv(conv, 4)
        Conv2d(4, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
        >>> adapt_first_conv(conv, 3) is conv
        True
    """
    if n_bands == 3 and _band_sources(3, band_names) == [0, 1, 2]:
        return conv
    new = nn.Conv2d(
        n_bands,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(multispectral_kernel(conv.weight, n_bands, band_names))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def zero_init_residuals(model: nn.Module) -> None:
    """Zeroes the last BatchNorm scale of every residual block, so each block starts as the identity.

    Training from random weights converges faster and tolerates higher learning rates this
    way (Goyal et al. 2017, "Accurate, Large Minibatch SGD"; torchvision's
    ``zero_init_residual``). We do it here rather than through torchvision's argument because a
    backbone given as a function need not accept that argument. Only the initial values
    change: the module names and shapes stay arcgis.learn's.

    Args:
        model: a module holding torchvision ``BasicBlock`` or ``Bottleneck`` blocks; changed
            in place.

    Examples:
        >>> from torchvision.models import resnet18
        >>> model = resnet18(weights=None)
        >>> zero_init_residuals(model)
        >>> int(model.layer1[0].bn2.weight.count_nonzero())
        0
    """
    for module in model.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)


def build_encoder(
    backbone: str | Callable[..., nn.Module],
    *,
    pretrained: bool = True,
    n_bands: int = 3,
    band_names: Sequence[str] | None = None,
) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """The RetinaNet's encoder: a torchvision ResNet cut before its pooling head.

    Args:
        backbone: a name from :data:`BACKBONES` or torchvision's function
            (``torchvision.models.resnet34``).
        pretrained: start from ImageNet weights (downloaded once into ``$TORCH_HOME``); when they
            cannot be had, warn and start from random initialisation, with residual blocks
            zero-initialised (:func:`zero_init_residuals`). Default True. Keyword only.
        n_bands: input bands; other than 3 (or 3 named bands not in R, G, B order) rebuilds the
            first convolution (:func:`adapt_first_conv`). Default 3.
        band_names: names of the ``n_bands`` bands; ``red``/``green``/``blue`` take their pretrained
            channels. Default None.

    Returns:
        ``(encoder, (C3, C4, C5 channels))``; ``encoder`` is ``nn.Sequential(conv1, bn1, relu,
        maxpool, layer1, layer2, layer3, layer4)`` mapping ``[B, n_bands, H, W]`` to C5
        ``[B, C5, ceil(H/32), ceil(W/32)]``; its attribute ``pretrained`` says whether the
        ImageNet weights were loaded.

    Raises:
        ValueError: an unsupported backbone, or bad ``n_bands``/``band_names``.

    Warns:
        GeolearnWarning: ``pretrained`` and the ImageNet weights cannot be had (once per backbone).

    Examples:
        >>> encoder, channels = build_encoder("resnet18", pretrained=False, n_bands=4)
        >>> channels, encoder.pretrained
        ((128, 256, 512), False)
        >>> encoder(torch.zeros(1, 4, 256, 256)).shape  # C5: 256 / 32 = 8 cells a side
        torch.Size([1, 512, 8, 8])
    """
    spec = resolve_backbone(backbone)
    model = spec.builder(weights=None)
    state = pretrained_state_dict(spec) if pretrained else None
    if state is not None:
        model.load_state_dict(state)
    else:
        zero_init_residuals(model)
    encoder = nn.Sequential(*list(model.children())[:_ENCODER_CHILDREN])
    encoder[0] = adapt_first_conv(encoder[0], n_bands, band_names)
    # Whether ImageNet weights were loaded: training from random weights must not freeze the backbone.
    encoder.pretrained = state is not None
    return encoder, spec.channels
