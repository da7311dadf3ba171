"""BatchNorm over every process's chips, on CPU and GPU alike.

Under a launcher each process sees its share of a step's chips (``batch_size / N``), and a plain
BatchNorm layer normalises with the statistics of that share alone: with 8 chips over 2 processes,
statistics of 4 chips. Training RetinaNet from random weights on so few chips per statistic lost
average precision against one process (benchmarks/results/train_distributed.jsonl). torch's
``SyncBatchNorm`` takes the statistics over all processes but runs on CUDA only, and RetinaNet's
heads normalise all pyramid levels jointly through ``F.batch_norm`` (``_joint_batch_norm`` in
:mod:`geolearn.models.retinanet`), which no module swap reaches.

:func:`synced_batch_norm` has ``F.batch_norm``'s signature: in training it sums each channel's
values and squared deviations over every process (``torch.distributed.nn.functional.all_reduce``,
whose backward all-reduces the gradients, so the gradient is that of one process holding every
chip) and normalises with those; otherwise it is ``F.batch_norm``. :class:`SyncedBatchNorm2d` is
``nn.BatchNorm2d`` calling it, and :func:`sync_batch_norms` turns a model's BatchNorm layers into
it for the length of a fit, keeping the same parameters, buffers and state_dict names.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce

__all__ = ["synced_batch_norm", "SyncedBatchNorm2d", "sync_batch_norms"]


def synced_batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                      weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
                      momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``F.batch_norm`` whose training statistics are those of every process's ``input`` together.

    ``input`` is ``[N, C, ...]``; statistics run over every dimension but ``C``, in float32 (the
    result comes back in ``input``'s dtype). The running statistics move towards the joint mean
    and the joint unbiased variance, alike on every process. Collective: every process of the
    group must call it with the same ``C``. Outside training it is ``F.batch_norm``.
    """
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    dims = [d for d in range(input.ndim) if d != 1]
    shape = [1, -1] + [1] * (input.ndim - 2)
    values = input.float()
    count = torch.tensor([values.numel() // values.shape[1]], dtype=values.dtype, device=values.device)
    totals = all_reduce(torch.cat([values.sum(dims), count]))
    n = totals[-1]
    mean = totals[:-1] / n
    centred = values - mean.view(shape)
    var = all_reduce(centred.square().sum(dims)) / n  # two passes: steadier than E[x²] - E[x]²
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.detach().to(running_mean.dtype), momentum)
            running_var.lerp_((var.detach() * n / (n - 1).clamp(min=1)).to(running_var.dtype), momentum)
    out = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out.to(input.dtype)


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
