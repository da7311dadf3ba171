"""The network as inference runs it: batch norms folded into convolutions, weights cast once.

In eval mode a ``BatchNorm2d`` right after a convolution is a per-channel scale and shift, which
can go into that convolution's weights and bias: one pass over the feature map fewer per layer,
and ResNet-50 has 53 such layers. On 2 cores of an AMD EPYC (float32, 512 px, batch 2) the
RetinaNet's forward ran 1.06 times as fast folded, with the same boxes (docs/performance.md,
``benchmarks/backends.py``); the pyramid's maps differ by float32 rounding (relative ~1e-5).
The heads' batch norms come after a ReLU and before a zero-padded convolution; folding them would
be exact only away from the map's border, so they stay.

:func:`inference_network` builds that network from a model without changing it: containers are
copied, the convolutions and batch norms are shared. In float32 each :class:`InferenceConv`
computes its folded weights at every call (~2 % of a forward: keeping them would hold a second
copy of the encoder's weights, 94 MB for ResNet-50, against the 1.5 GB memory goal of detection);
for a lower-precision autocast dtype every convolution's weights are folded and cast once instead,
since a cast at each call costs about a tenth of a bfloat16 forward.

``torch.compile`` with freezing folds and casts by itself
(:class:`~geolearn.models.compiled.CompiledNetwork`), so the compiled path does not use this.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["InferenceConv", "inference_network"]


class InferenceConv(nn.Module):
    """A convolution, with the eval-mode batch norm after it folded in, in the weights' inference dtype.

    Args:
        conv: the convolution (zero padding; shared, not copied).
        norm: the ``BatchNorm2d`` applied to its output, with running statistics; None: none.
        dtype: keep the weights cast to this dtype (computed once; ``weight`` and ``bias``
            buffers); None (the default): compute them from ``conv`` and ``norm`` at each call,
            holding no copy.

    Raises:
        ValueError: ``conv`` pads other than with zeros, or ``norm`` has no running statistics.

    Examples:
        >>> conv, norm = nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1).eval()
        >>> _ = conv.weight.data.fill_(2.0), norm.running_mean.fill_(1.0), norm.running_var.fill_(4.0 - norm.eps)
        >>> with torch.no_grad():
        ...     InferenceConv(conv, norm)(torch.full((1, 1, 1, 1), 3.0))  # (2 · 3 − 1) / √4
        tensor([[[[2.5000]]]])
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r}: only zero-padded convolutions are folded.")
        if norm is not None and norm.running_var is None:
            raise ValueError("a BatchNorm2d without running statistics normalises with each batch's: it cannot be folded.")
        self.conv = conv
        self.norm = norm
        self.dtype = dtype
        if dtype is not None:
            weight, bias = self.folded_weights()
            self.register_buffer("weight", weight.detach().to(dtype), persistent=False)
            self.register_buffer("bias", None if bias is None else bias.detach().to(dtype), persistent=False)

    def folded_weights(self) -> tuple[Tensor, Tensor | None]:
        """The weight ``[out, in / groups, k, k]`` and bias ``[out]`` (or None) of the one convolution.

        For inference: the folded weights are new tensors, outside the model's autograd graph.
        """
        conv, norm = self.conv, self.norm
        if norm is None:
            return conv.weight, conv.bias
        return fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                    norm.weight, norm.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``norm(conv(x))`` as one convolution.

        Args:
            x: ``[B, in, H, W]``.

        Returns:
            ``[B, out, H', W']``.
        """
        weight, bias = (self.weight, self.bias) if self.dtype is not None else self.folded_weights()
        conv = self.conv
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_norm_pairs(module: nn.Module) -> dict[str, str]:
    """``{convolution's name: its batch norm's name}`` among ``module``'s children.

    A child convolution directly followed by a child ``BatchNorm2d`` in an ``nn.Sequential`` (the
    ResNet stem, a downsample), and ``conv<i>`` with ``bn<i>`` in torchvision's residual blocks.
    """
    if isinstance(module, nn.Sequential):
        children = list(module.named_children())
        return {
            name: next_name for (name, child), (next_name, next_child) in zip(children, children[1:])
            if isinstance(child, nn.Conv2d) and isinstance(next_child, nn.BatchNorm2d)
        }
    if isinstance(module, (BasicBlock, Bottleneck)):
        return {name: f"bn{name[4:]}" for name, _ in module.named_children()
                if name.startswith("conv") and isinstance(getattr(module, f"bn{name[4:]}", None), nn.BatchNorm2d)}
    return {}


def inference_network(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """``model`` for inference: each convolution–batch-norm pair as one :class:`InferenceConv`.

    The model must be in eval mode (its batch norms then use their running statistics) and its
    weights must not change while the result is used; the model itself is left as it is. Its
    containers are copied (so ``model.train()`` does not reach the result), its modules' weights
    are shared.

    Args:
        model: e.g. a :class:`~geolearn.models.retinanet.RetinaNetModel`, in eval mode.
        dtype: the autocast dtype inference runs in (``torch.bfloat16``): every convolution's
            weights are then folded and cast once; None (the default) or ``torch.float32``: the
            folded weights are computed at each call, and other convolutions stay as they are.

    Returns:
        A module computing what ``model`` computes, to float32 rounding (or ``dtype``'s).

    Raises:
        ValueError: ``model`` is in training mode.

    Examples:
        >>> from geolearn.models.backbones import build_encoder
        >>> encoder, _ = build_encoder("resnet18", pretrained=False)
        >>> folded = inference_network(encoder.eval())
        >>> sum(isinstance(m, InferenceConv) for m in folded.modules())  # stem, 8 blocks × 2, 3 downsamples
        20
        >>> x = torch.rand(1, 3, 64, 64)
        >>> torch.allclose(folded(x), encoder(x), atol=1e-5)
        True
    """
    if model.training:
        raise ValueError("inference_network(model): the model is in training mode; call model.eval() first, "
                         "as folding uses the batch norms' running statistics.")
    cast = None if dtype in (None, torch.float32) else dtype
    return _prepared(model, cast)


def _prepared(module: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """:func:`inference_network` of one module, by recursion over its children."""
    if isinstance(module, nn.Conv2d):
        return module if dtype is None else InferenceConv(module, None, dtype)
    children = dict(module.named_children())
    if not children:
        return module
    pairs = _conv_norm_pairs(module)
    norms = set(pairs.values())
    prepared: dict[str, nn.Module] = {}
    for name, child in children.items():
        if name in pairs:
            prepared[name] = InferenceConv(child, children[pairs[name]], dtype)
        elif name in norms:
            prepared[name] = nn.Identity()
        else:
            prepared[name] = _prepared(child, dtype)
    # A shallow copy: the same parameters and attributes, its own table of children.
    clone = copy.copy(module)
    clone._modules = prepared
    return clone
