"""The network compiled with ``torch.compile`` for inference: one batch shape, a persistent cache, eager where it fails.

``torch.compile`` (TorchInductor) fuses a RetinaNet's convolutions with their batch norms and
activations and, with *freezing*, folds the weights into the compiled graph once (bf16 casts
included). It pays only after the compilation: tens of seconds on a first run, fewer with the
compiled graphs cached on disk, so detection compiles only when asked (``compiled=True``).

Three choices make it predictable:

* **One shape.** Each new input shape compiles again, so :class:`CompiledNetwork` pads a short
  batch (the last windows of a raster) with zero images to the size of the first and returns
  only the real images' outputs.
* **A persistent cache.** Inductor's caches go to ``TORCHINDUCTOR_CACHE_DIR``; unless the user
  has chosen one, geolearn uses ``torchinductor`` in its own cache (``~/.cache/geolearn``; torch's
  default lives in the temporary directory, which many systems empty at boot).
* **Eager where compile fails.** No C++ compiler, an unsupported Python or platform, or a graph
  inductor cannot lower: one warning, and the same network runs uncompiled. An error that the
  uncompiled network raises too (a wrong band count, say) is raised as that error.

Freezing folds the weights in as they are when compiled, so a :class:`CompiledNetwork` belongs
to one inference call: the weights must not change while it is used (training does change them).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable, MutableMapping, Sequence

import torch
from torch import Tensor, nn

from geolearn.cache import cache_root

__all__ = ["CACHE_VARIABLE", "CompiledNetwork", "compile_cache"]

logger = logging.getLogger(__name__)

CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def compile_cache(environ: MutableMapping[str, str] = os.environ) -> Path:
    """Where inductor keeps compiled graphs: the user's ``TORCHINDUCTOR_CACHE_DIR``, else
    ``torchinductor`` in geolearn's cache (:func:`~geolearn.cache.cache_root`), set in ``environ``
    for inductor to read.

    Examples:
        >>> compile_cache({"TORCHINDUCTOR_CACHE_DIR": "/data/inductor"})
        PosixPath('/data/inductor')
    """
    return Path(environ.setdefault(CACHE_VARIABLE, str(cache_root() / "torchinductor")))


class CompiledNetwork:
    """``network`` compiled for inference at one batch shape, called as the network is.

    Args:
        network: a module in eval mode, called under ``torch.inference_mode()`` (and autocast,
            when wanted) with ``Tensor[B, C, S, S]``; it returns a tensor or a sequence of tensors
            with the batch first.
        compiler: ``torch.compile`` (the default), or any function of a module that returns a
            callable (a test passes one that fails, to see the fallback).

    Examples:
        >>> net = nn.Conv2d(3, 2, 1).eval()
        >>> run = CompiledNetwork(net, compiler=lambda module: module)  # stands for torch.compile
        >>> with torch.inference_mode():
        ...     run(torch.zeros(4, 3, 8, 8)).shape, run(torch.zeros(3, 3, 8, 8)).shape
        (torch.Size([4, 2, 8, 8]), torch.Size([3, 2, 8, 8]))
        >>> run.batch  # the short batch ran padded to the first one's size
        4
    """

    def __init__(self, network: nn.Module, compiler: Callable[[nn.Module], Callable] | None = None) -> None:
        self.network = network
        if compiler is None:
            compile_cache()
            compiler = _inductor_frozen
        self._compiled: Callable | None = compiler(network)
        self.batch: int | None = None

    @property
    def is_compiled(self) -> bool:
        """False once compiling has failed and the network runs eagerly."""
        return self._compiled is not None

    def __call__(self, images: Tensor) -> Tensor | list[Tensor]:
        if self._compiled is None:
            return self.network(images)
        count, first = len(images), self.batch is None
        self.batch = max(self.batch or 0, count)
        # Always a new tensor made here: the compiled graph is guarded on its input's kind (an
        # inference-mode tensor or not) as well as its shape, and each mismatch compiles again.
        filler = images.new_zeros((self.batch - count, *images.shape[1:]))
        padded = torch.cat([images, filler]).contiguous(memory_format=_memory_format(images))
        start = time.perf_counter()
        try:
            output = self._compiled(padded)
        except Exception as error:  # noqa: BLE001 - any failure to compile falls back; see the module notes
            self._compiled = None
            output = self.network(images)  # the uncompiled network's own error, if it has one, surfaces here
            warnings.warn(f"torch.compile could not compile the network ({type(error).__name__}: "
                          f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no message'}); "
                          "it runs uncompiled. Compiling needs a C++ compiler (gcc or clang) on the PATH.",
                          RuntimeWarning, stacklevel=2)
            return output
        if first:
            logger.info("compiled the network for batches of %d in %.0f s (cache: %s)", self.batch,
                        time.perf_counter() - start, os.environ.get(CACHE_VARIABLE))
        return _first(output, count)


def _inductor_frozen(network: nn.Module) -> Callable:
    """``torch.compile`` with inductor, a static shape and frozen weights (folded into the graph)."""
    return torch.compile(network, dynamic=False, options={"freezing": True})


def _memory_format(images: Tensor) -> torch.memory_format:
    return torch.channels_last if images.ndim == 4 and images.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def _first(output: Tensor | Sequence[Tensor], count: int) -> Tensor | list[Tensor]:
    """The first ``count`` items of the batch of a tensor or of each tensor of a sequence."""
    if isinstance(output, Tensor):
        return output[:count]
    return [part[:count] for part in output]
