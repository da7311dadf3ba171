"""BatchNorm over every process's chips, on CPU and GPU alike.

Under a launcher each process sees its share of a step's chips (``batch_size / N``), and a plain
BatchNorm layer normalises with the statistics of that share alone: with 8 chips over 2 processes,
statistics of 4 chips. Training RetinaNet from random weights on so few chips per statistic lost
average precision against one process (benchmarks/results/train_distributed.jsonl). torch's
``SyncBatchNorm`` takes the statistics over all processes but runs on CUDA only, and RetinaNet's
heads normalise all pyramid levels jointly through ``F.batch_norm`` (``_joint_batch_norm`` in
:mod:`geolearn.models.retinanet`), which no module swap reaches.

:func:`synced_batch_norm` has ``F.batch_norm``'s signature: in training it all-reduces each
channel's count, sum and sum of squares, normalises with the joint statistics through torch's
own kernel, and its backward all-reduces the two per-channel sums the input gradient needs, so
the gradient is that of one process holding every chip; otherwise it is ``F.batch_norm``.
:class:`SyncedBatchNorm2d` is ``nn.BatchNorm2d`` calling it, and :func:`sync_batch_norms` turns a
model's BatchNorm layers into it for the length of a fit, keeping the same parameters, buffers
and state_dict names.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["synced_batch_norm", "SyncedBatchNorm2d", "sync_batch_norms"]


def synced_batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                      weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
                      momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``F.batch_norm`` whose training statistics are those of every process's ``input`` together.

    ``input`` is ``[N, C, ...]``; statistics run over every dimension but ``C``. The running
    statistics move towards the joint mean and the joint unbiased variance, alike on every
    process. Collective: every process of the group must call it with the same ``C``. Outside
    training it is ``F.batch_norm``.
    """
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    channels = input.shape[1]
    if weight is None:
        weight = torch.ones(channels, device=input.device)
    if bias is None:
        bias = torch.zeros(channels, device=input.device)
    mean, var, n = _joint_statistics(input)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * n / max(n - 1, 1)).to(running_var.dtype), momentum)
    return _SyncedNormalize.apply(input, weight, bias, mean, var, eps, n)


def _joint_statistics(input: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per channel, the float32 mean and biased variance of every process's ``input``, and the count.

    Each process's own ``var_mean`` (one pass), then one all-reduce of (n, n·mean, n·(var + mean²))
    in float64, where the combination's cancellation costs nothing.
    """
    dims = [d for d in range(input.ndim) if d != 1]
    var, mean = torch.var_mean(input.detach().float(), dims, correction=0)
    n = input.numel() // input.shape[1]
    packed = torch.stack([torch.full_like(mean, n), n * mean, n * (var + mean.square())]).double()
    dist.all_reduce(packed)
    total, first, second = packed
    joint_mean = first / total
    return joint_mean.float(), (second / total - joint_mean.square()).clamp(min=0).float(), int(total[0])


class _SyncedNormalize(torch.autograd.Function):
    """``(x - mean) · invstd · weight + bias`` with joint statistics, and the gradient of one process
    holding every chip: the input gradient all-reduces the per-channel sums of ``dy`` and
    ``dy · x̂`` (as torch's CUDA ``SyncBatchNorm`` does); the weight and bias gradients stay this
    process's share (``DistributedDataParallel`` then averages them)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float, n: int) -> Tensor:
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps))
        ctx.n = n
        # The normalisation itself is torch's kernel, given the joint statistics.
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [d for d in range(x.ndim) if d != 1]
        shape = [1, -1] + [1] * (x.ndim - 2)
        x_hat = (x.float() - mean.view(shape)) * invstd.view(shape)
        dy = dy.float()
        sum_dy, sum_dy_x_hat = dy.sum(dims), (dy * x_hat).sum(dims)
        joint = torch.stack([sum_dy, sum_dy_x_hat])
        dist.all_reduce(joint)
        dx = (dy - joint[0].view(shape) / ctx.n - x_hat * (joint[1].view(shape) / ctx.n)) * (weight * invstd).view(shape)
        return dx.to(x.dtype), sum_dy_x_hat.to(weight.dtype), sum_dy.to(weight.dtype), None, None, None, None


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` taking its training statistics over every process (:func:`synced_batch_norm`).

    It adds no state: parameters, buffers and state_dict names are ``nn.BatchNorm2d``'s.
    """

    batch_norm = staticmethod(synced_batch_norm)  # also what _joint_batch_norm calls for this layer

    def forward(self, input: Tensor) -> Tensor:
        """``nn.BatchNorm2d.forward``'s bookkeeping, then :func:`synced_batch_norm`."""
        self._check_input_dim(input)
        momentum = self.momentum or 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average, as nn.BatchNorm2d does with momentum=None
                momentum = 1.0 / float(self.num_batches_tracked)
        use_running = not self.training or self.track_running_stats
        return synced_batch_norm(input, self.running_mean if use_running else None,
                                 self.running_var if use_running else None, self.weight, self.bias,
                                 self.training or self.running_mean is None, momentum, self.eps)


def sync_batch_norms(model: nn.Module) -> Callable[[], None]:
    """Makes ``model``'s ``nn.BatchNorm2d`` layers :class:`SyncedBatchNorm2d`; returns what undoes it.

    The layers change class in place, so the optimizer keeps its parameters and a checkpoint its
    names (torch's ``convert_sync_batchnorm`` builds new modules instead).
    """
    layers = [module for module in model.modules() if type(module) is nn.BatchNorm2d]
    for layer in layers:
        layer.__class__ = SyncedBatchNorm2d

    def undo() -> None:
        for layer in layers:
            layer.__class__ = nn.BatchNorm2d

    return undo
