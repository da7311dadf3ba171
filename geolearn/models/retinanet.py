"""The RetinaNet network, module for module as arcgis.learn builds it.

The module names, their registration order and every layer's shape equal arcgis.learn's
``RetinaNetModel`` (itself fastai's course RetinaNet), so a state_dict saved by either loads into
the other with ``strict=True``::

    encoder        ResNet conv1 .. layer4                      → C3, C4, C5 (strides 8, 16, 32)
    c5top5         1×1 conv C5 → 256                           → P5
    c5top6         3×3 stride-2 conv C5 → 256                  → P6 (from C5, not P5)
    p6top7         Sequential(ReLU, 3×3 stride-2 conv)         → P7
    merges[0]      conv_lat(C4) + nearest-up(P5)               → P4
    merges[1]      conv_lat(C3) + nearest-up(P4)               → P3
    smoothers[i]   3×3 conv on P3, P4, P5 (not P6, P7)
    classifier     4 × (3×3 conv, ReLU, BatchNorm) + 3×3 conv → n_anchors · n_classes per cell
    box_regressor  the same                                 + 3×3 conv → n_anchors · 4 per cell

The merges read the *unsmoothed* upper level (smoothing happens after all merges). Both heads
are shared across levels. Outputs are flattened per level with ``permute(0, 2, 3, 1)``, so
anchors run level → row → column → anchor, the order of :func:`geolearn.models.anchors.make_anchors`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geolearn.models.backbones import build_encoder

__all__ = ["RetinaNetModel", "LateralMerge", "build_retinanet", "check_weights_fit", "param_groups"]

# Final classifier bias: sigmoid(-4) ≈ 0.018, so that at the start the ~10⁴ background anchors
# do not swamp the focal loss (the paper's prior π = 0.01 gives -4.6; arcgis.learn uses -4).
_CLASSIFIER_PRIOR_BIAS = -4.0
# Index of layer2 (C3's stage) in the encoder; layer3 and layer4 follow.
_C3_STAGE = 5


def _conv(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    """A conv with bias and ``kernel // 2`` padding, Kaiming-normal weight and zero bias (fastai's ``conv2d``)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=True)
    nn.init.kaiming_normal_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _pyramid_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a 3×3 pyramid conv with padding 1, computed directly on a 1×1 map.

    On a 1×1 map only the kernel's centre tap meets data (the other eight meet the zero padding),
    so the output is that tap applied as a 1×1 convolution: the same values and gradients. It is
    done by hand because PyTorch 2.14's CPU kernel for a stride-2 convolution in bfloat16 (oneDNN)
    puts NaN in the weight gradient of a padding tap a few times in a thousand on a 1×1 input —
    P6 is 1×1 on chips of 64 px and under — and one NaN ruins the model.
    """
    if x.shape[-2:] == (1, 1):
        return F.conv2d(x, conv.weight[:, :, 1:2, 1:2], conv.bias)
    return conv(x)


def _head(chs: int, n_out: int, final_bias: float, n_conv: int = 4) -> nn.Sequential:
    """``n_conv`` × Sequential(conv 3×3, ReLU, BatchNorm) then a zero-weight conv to ``n_out`` channels."""
    layers: list[nn.Module] = [nn.Sequential(_conv(chs, chs), nn.ReLU(), nn.BatchNorm2d(chs)) for _ in range(n_conv)]
    final = _conv(chs, n_out)
    # A zero weight makes every anchor start from the same prior: logits = final_bias, deltas = 0.
    nn.init.zeros_(final.weight)
    nn.init.constant_(final.bias, final_bias)
    layers.append(final)
    return nn.Sequential(*layers)


class LateralMerge(nn.Module):
    """One top-down FPN step: ``conv_lat(lateral) + nearest-upsample(top)`` to the lateral's size.

    Upsampling to the lateral's size, not by ×2, handles odd maps: a 224 px chip gives C4 14 × 14
    but P5 7 × 7 → 14, and C5 4 × 4 from C4 7 × 7 (odd) would give 8 ≠ 7 by doubling.

    Args:
        lateral_channels: channels of the lateral (encoder) feature map.
        chs: channels of the top map and of the output. Default 256.

    Examples:
        >>> merge = LateralMerge(128, chs=256)
        >>> merge(torch.zeros(1, 256, 7, 7), torch.zeros(1, 128, 14, 14)).shape
        torch.Size([1, 256, 14, 14])
    """

    def __init__(self, lateral_channels: int, chs: int = 256) -> None:
        super().__init__()
        self.conv_lat = _conv(lateral_channels, chs, kernel_size=1)

    def forward(self, top: Tensor, lateral: Tensor) -> Tensor:
        """Merges an upper level into a lateral one.

        Args:
            top: ``[B, chs, h, w]`` the upper pyramid level.
            lateral: ``[B, lateral_channels, H, W]`` the encoder's map at this level.

        Returns:
            ``[B, chs, H, W]``.
        """
        return self.conv_lat(lateral) + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")


def _joint_batch_norm(norm: nn.BatchNorm2d, xs: Sequence[Tensor]) -> list[Tensor]:
    """Training-mode ``norm`` over several feature maps at once, with their joint batch statistics.

    Each ``[B, C, h, w]`` map is laid out pixel by pixel as ``[B·h·w, C]`` (a view when it is
    channels_last, as in training here), the rows of all maps are stacked — the one copy — and
    normalised together by ``F.batch_norm``, whose 2-D form takes statistics over the rows;
    the result is cut back into channels_last views. The running statistics update as
    ``nn.BatchNorm2d`` updates them. Concatenating the maps along a spatial axis instead would
    copy each of them twice more and leave the next convolution a channels-first tensor to
    convert (on the sample scene that cost ~15 % of a training step).
    """
    rows = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in xs])
    momentum = norm.momentum
    if norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        if momentum is None:  # a cumulative average, as nn.BatchNorm2d does with momentum=None
            momentum = 1.0 / float(norm.num_batches_tracked)
    # A layer may take its statistics elsewhere (geolearn.learn.batchnorm: over every process's chips).
    batch_norm = getattr(norm, "batch_norm", F.batch_norm)
    joint = batch_norm(rows, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                       training=True, momentum=momentum or 0.0, eps=norm.eps)
    parts = joint.split([x.numel() // x.shape[1] for x in xs])
    return [part.view(x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 3, 1, 2)
            for part, x in zip(parts, xs)]


def _run_head(head: nn.Sequential, levels: Sequence[Tensor], k: int) -> Tensor:
    """Runs a head on every level and joins them: ``[B, A_total, k]``, level → row → column → anchor.

    The levels share the head's weights and so its BatchNorm layers' running statistics
    (arcgis.learn's layout). Calling the head level by level, as arcgis.learn does, normalises
    each level with its own batch statistics in training while the running statistics blend
    all levels, so the evaluated model is not the trained one (on the sample scene the
    validation loss of a batch came out nearly twice its training-mode loss). Here each
    BatchNorm normalises all levels together with their joint batch statistics — what the
    running statistics estimate — so training and evaluation agree
    (:func:`_joint_batch_norm`). In eval mode BatchNorm works pixel by pixel, so it runs level
    by level and the output equals arcgis.learn's exactly.
    """
    *blocks, final = head
    xs = list(levels)
    for conv, relu, norm in blocks:
        xs = [relu(conv(x)) for x in xs]
        xs = _joint_batch_norm(norm, xs) if norm.training else [norm(x) for x in xs]
    outs = [final(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, k) for x in xs]
    return torch.cat(outs, dim=1)


class RetinaNetModel(nn.Module):
    """RetinaNet with arcgis.learn's module names (see the module docstring for the layout).

    Args:
        encoder: ``nn.Sequential`` whose last three children produce C3, C4, C5 (strides 8, 16, 32),
            as :func:`~geolearn.models.backbones.build_encoder` returns.
        encoder_channels: channels of C3, C4, C5.
        n_classes: object classes, without background (arcgis.learn's ``data.c - 1``).
        n_anchors: anchors per cell (``len(scales) * len(ratios)``). Default 9.
        chs: FPN and head width. Default 256.

    ``model(images)`` maps ``images [B, n_bands, S, S]`` to
    ``[cls_logits [B, A, n_classes], box_deltas [B, A, 4]]`` (see :meth:`forward`).
    At initialisation every logit is -4 (sigmoid ≈ 0.018) and every delta 0.

    Raises:
        ValueError: ``n_classes`` < 1.

    Examples:
        >>> from geolearn.models.backbones import build_encoder
        >>> encoder, channels = build_encoder("resnet18", pretrained=False)
        >>> model = RetinaNetModel(encoder, channels, n_classes=2).eval()
        >>> with torch.no_grad():
        ...     cls_logits, box_deltas = model(torch.zeros(1, 3, 64, 64))
        >>> cls_logits.shape, box_deltas.shape  # 9 anchors × (8² + 4² + 2² + 1 + 1) cells
        (torch.Size([1, 774, 2]), torch.Size([1, 774, 4]))
        >>> list(model.state_dict())[:2]  # arcgis.learn's key names
        ['encoder.0.weight', 'encoder.1.weight']
    """

    def __init__(
        self,
        encoder: nn.Sequential,
        encoder_channels: Sequence[int],
        n_classes: int,
        n_anchors: int = 9,
        chs: int = 256,
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes={n_classes}: a detector needs at least one object class.")
        c3, c4, c5 = encoder_channels
        self.n_classes = n_classes
        self.n_anchors = n_anchors
        # Registration order = state_dict order = arcgis.learn's; do not reorder.
        self.encoder = encoder
        self.c5top5 = _conv(c5, chs, kernel_size=1)
        self.c5top6 = _conv(c5, chs, stride=2)
        self.p6top7 = nn.Sequential(nn.ReLU(), _conv(chs, chs, stride=2))
        self.merges = nn.ModuleList([LateralMerge(c4, chs), LateralMerge(c3, chs)])
        self.smoothers = nn.ModuleList([_conv(chs, chs) for _ in range(3)])
        self.classifier = _head(chs, n_classes * n_anchors, _CLASSIFIER_PRIOR_BIAS)
        self.box_regressor = _head(chs, 4 * n_anchors, 0.0)

    def _encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """C3, C4, C5 of a batch."""
        features = []
        x = images
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i >= len(self.encoder) - 3:
                features.append(x)
        c3, c4, c5 = features
        return c3, c4, c5

    def pyramid(self, images: Tensor) -> list[Tensor]:
        """The feature pyramid ``[P3, P4, P5, P6, P7]``.

        Args:
            images: ``[B, n_bands, S, S]`` normalised chips.

        Returns:
            Five maps ``[B, chs, n, n]``, ``n`` as :func:`~geolearn.models.anchors.level_sizes` gives.
        """
        c3, c4, c5 = self._encode(images)
        p5 = self.c5top5(c5)
        p6 = _pyramid_conv(self.c5top6, c5)
        relu, conv = self.p6top7
        p7 = _pyramid_conv(conv, relu(p6))
        p4 = self.merges[0](p5, c4)  # from the unsmoothed P5, as arcgis.learn does
        p3 = self.merges[1](p4, c3)
        smoothed = [smooth(p) for smooth, p in zip(self.smoothers, (p3, p4, p5))]
        return [*smoothed, p6, p7]

    def forward(self, images: Tensor) -> list[Tensor]:
        """Runs the network.

        Args:
            images: ``[B, n_bands, S, S]`` normalised chips.

        Returns:
            ``[cls_logits [B, A, n_classes], box_deltas [B, A, 4]]`` with
            ``A = n_anchors · Σ_levels n²``: logits before the sigmoid, deltas ``(dy, dx, dh, dw)``
            as :func:`geolearn.models.boxes.encode` defines them, anchors in the order of
            :func:`~geolearn.models.anchors.make_anchors`.
        """
        levels = self.pyramid(images)
        return [
            _run_head(self.classifier, levels, self.n_classes),
            _run_head(self.box_regressor, levels, 4),
        ]


def build_retinanet(
    backbone: str | Callable[..., nn.Module] = "resnet50",
    *,
    n_classes: int,
    n_bands: int = 3,
    band_names: Sequence[str] | None = None,
    pretrained: bool = True,
    n_anchors: int = 9,
    chs: int = 256,
    weights: Mapping[str, Tensor] | None = None,
) -> RetinaNetModel:
    """A RetinaNet on a ResNet encoder, as ``arcgis.learn.RetinaNet(data, backbone=...)`` builds it.

    Args:
        backbone: a supported name or torchvision function (see
            :func:`~geolearn.models.backbones.build_encoder`). Default ``"resnet50"``.
        n_classes: object classes without background (``data.c - 1``). Keyword only, required.
        n_bands: input bands (other than 3 rebuilds the first convolution). Default 3.
        band_names: names of the ``n_bands`` bands, or None (the default).
        pretrained: ImageNet weights for the encoder (warns and goes on without when offline).
            Default True.
        n_anchors: anchors per cell (``len(scales) * len(ratios)``). Default 9.
        chs: FPN and head width. Default 256.
        weights: a state_dict to take as the parameters (cast to their dtypes), in place of
            random or ImageNet ones; its names and shapes must fit exactly
            (:func:`check_weights_fit`). Default None.

    Returns:
        The network, in training mode.

    Raises:
        ValueError: an unsupported backbone, bad ``n_bands``/``band_names``, or ``n_classes`` < 1.

    Examples:
        >>> model = build_retinanet("resnet18", n_classes=2, n_bands=4, pretrained=False)
        >>> model.encoder[0].in_channels, model.n_classes, model.n_anchors
        (4, 2, 9)
    """
    if weights is None:
        encoder, channels = build_encoder(backbone, pretrained=pretrained, n_bands=n_bands, band_names=band_names)
        return RetinaNetModel(encoder, channels, n_classes, n_anchors=n_anchors, chs=chs)
    # Build on the meta device and take the given tensors as the parameters: allocating and
    # initialising random ones only to overwrite them held two copies of the weights at once
    # (+146 MB at the peak for resnet50) and took most of a model load's time.
    with torch.device("meta"):
        encoder, channels = build_encoder(backbone, pretrained=False, n_bands=n_bands, band_names=band_names)
        network = RetinaNetModel(encoder, channels, n_classes, n_anchors=n_anchors, chs=chs)
    expected = network.state_dict()  # meta tensors: names, shapes and dtypes, no memory
    check_weights_fit(expected, weights)
    network.load_state_dict({name: value.to(expected[name].dtype) if name in expected else value
                             for name, value in weights.items()}, strict=True, assign=True)
    return network


def check_weights_fit(expected: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> None:
    """Refuses weights whose names or shapes differ from the network's, saying how, in one line.

    torch's own error lists every key; this names how many differ and one of each kind.

    Raises:
        ValueError: names missing from ``weights``, names the network lacks, or other shapes.

    Examples:
        >>> network = {"head.weight": torch.zeros(18, 256), "head.bias": torch.zeros(18)}
        >>> check_weights_fit(network, {"head.weight": torch.zeros(9, 256)})
        Traceback (most recent call last):
        ...
        ValueError: the weights do not fit the network: 1 missing (e.g. 'head.bias'); 1 of another shape (e.g. 'head.weight': [9, 256] in the weights, [18, 256] in the network)
    """
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    reshaped = [name for name in expected if name in weights and tuple(weights[name].shape) != tuple(expected[name].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} the network does not have (e.g. {unexpected[0]!r})")
    if reshaped:
        name = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape (e.g. {name!r}: {list(weights[name].shape)} in the weights, "
                        f"{list(expected[name].shape)} in the network)")
    if problems:
        raise ValueError("the weights do not fit the network: " + "; ".join(problems))


def param_groups(model: RetinaNetModel) -> list[list[nn.Parameter]]:
    """The three parameter groups for discriminative learning rates (a fastai ``splitter``).

    Args:
        model: the network.

    Returns:
        ``[stem .. layer2 (encoder.0 .. encoder.5), layer3 + layer4 (encoder.6, encoder.7),
        everything else (FPN and heads)]``.

    Examples:
        >>> model = build_retinanet("resnet18", n_classes=2, pretrained=False)
        >>> [len(group) for group in param_groups(model)]  # parameter tensors per group
        [30, 30, 52]
    """
    encoder = list(model.encoder)
    early = [p for m in encoder[: _C3_STAGE + 1] for p in m.parameters()]
    late = [p for m in encoder[_C3_STAGE + 1 :] for p in m.parameters()]
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    return [early, late, rest]
