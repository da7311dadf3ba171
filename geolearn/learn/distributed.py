"""Data-parallel training on ``torch.distributed``: the same script, launched N times.

``torchrun --nproc_per_node N train.py`` (or ``accelerate launch``, or ``geolearn train --nproc N``)
starts N copies of a script that calls ``prepare_data``, ``RetinaNet(data)``, ``fit`` and ``save``.
Each copy finds ``WORLD_SIZE``, ``RANK`` and the rendezvous address in its environment;
``lr_find`` and ``fit`` then join the process group (gloo on CPU, nccl on CUDA) and train one
``DistributedDataParallel`` model:

- **The global batch is prepare_data's** ``batch_size``: each step's chips are split over the
  processes, so an epoch has as many steps as in one process, gradients are averaged over the
  same chips, and a learning rate (given or found) means what it means in one process. To give
  each process more chips, raise ``batch_size`` (and the rate with it, as for one process).
- **BatchNorm over the whole step's chips**: each process's share alone would give statistics of
  ``batch_size / N`` chips; :mod:`geolearn.learn.batchnorm` all-reduces them, on CPU too.
- **Every training chip once per epoch**: the chips are shuffled alike on every rank and dealt
  out without padding (:func:`training_steps`).
- **Validation is the single-process figure on every rank**: validation batches are dealt out
  whole, then the loss sums and the detections are gathered
  (:class:`~geolearn.learn.callbacks.DistributedTraining`), so
  early stopping and checkpoints decide alike everywhere.
- **Rank 0 alone prints, draws and writes**; the best checkpoint reaches the others by broadcast,
  so nodes need not share a disk.

Why not fastai's ``distrib_ctx``: ``fastai.distributed`` imports ``accelerate`` (not a geolearn
dependency); its ``DistributedDL`` broadcasts the shuffle order with ``.cuda()`` (nccl only) and
pads the shards with repeated chips; ``setup_distrib`` assumes nccl; ``sync_bn`` converts to
``SyncBatchNorm``, which runs on CUDA only (and misses the heads' joint normalisation). fastai also reads ``WORLD_SIZE``/``RANK`` itself, and
then all-gathers every batch's loss (which hangs as soon as ranks run different batch counts, as
two LR range tests do) and skips saving on ranks > 0 (which breaks ``lr_find``'s weight restore
there). So fastai runs with those two variables hidden (:func:`fastai_single_process`), and
geolearn wraps DDP itself and gathers once per epoch (``DistributedTraining`` and ``ShardedDL`` in
:mod:`geolearn.learn.callbacks`, which import fastai; this module needs torch only).
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import os
from contextlib import contextmanager, redirect_stdout
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from geolearn._version import __version__
from geolearn.errors import DistributedSetupError, InvalidArgumentError

__all__ = [
    "TIMEOUT_ENV",
    "DEFAULT_TIMEOUT",
    "launched",
    "active",
    "rank",
    "world_size",
    "is_main",
    "join_process_group",
    "fastai_single_process",
    "quiet_unless_main",
    "broadcast_from_main",
    "agreed_max",
    "summed",
    "gathered",
    "on_main",
    "broadcast_module",
    "training_steps",
    "validation_steps",
    "check_same_setup",
]

logger = logging.getLogger(__name__)

# Seconds a process waits for the others (rendezvous, each collective) before it fails.
TIMEOUT_ENV = "GEOLEARN_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
# What torchrun and accelerate launch set, and fastai reads.
_FASTAI_READS = ("WORLD_SIZE", "RANK")


def launched() -> bool:
    """Whether this process is one of several a launcher started (``WORLD_SIZE`` > 1).

    Examples:
        >>> launched()  # a plain python process
        False
    """
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def active() -> bool:
    """Whether a process group of more than one process is joined.

    Examples:
        >>> active()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: in the joined group, else as the launcher set it (``RANK``); 0 outside a launch."""
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0) if launched() else 0


def world_size() -> int:
    """The number of processes in the joined group; 1 outside one."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process prints, draws and writes files (rank 0, or the only process).

    Examples:
        >>> is_main()
        True
    """
    return rank() == 0


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InvalidArgumentError(f"{TIMEOUT_ENV}={text!r}: give the seconds a process waits for the others, a number > 0.")
    return seconds


def join_process_group(device: torch.device) -> torch.device:
    """Joins the launcher's process group once per process; returns the device this rank trains on.

    gloo on CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``). A group the script joined
    itself is used as it is. Outside a launch this does nothing and returns ``device``.

    Raises:
        DistributedSetupError: the others were not reached within ``GEOLEARN_DIST_TIMEOUT``
            seconds (default 600), naming the address tried.
    """
    if device.type == "cuda" and (launched() or active()):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    seconds = _timeout()
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as err:  # torch's DistStoreError is a RuntimeError
        raise DistributedSetupError(
            f"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}: could not join the other processes at "
            f"{address} within {seconds:.0f} s ({err}). Start every process with the same torchrun line, check "
            f"that this machine reaches {address} (--master-addr / --rdzv-endpoint), or raise {TIMEOUT_ENV}."
        ) from err
    atexit.register(_leave)
    logger.info("rank %d of %d joined the process group (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Ranks > 0 print nothing while inside (fastai's table, bars and checkpoint news; a script's report).

    Examples:
        >>> with quiet_unless_main():  # one process is rank 0
        ...     print("shown")
        shown
    """
    if is_main():
        yield
        return
    with open(os.devnull, "w") as sink, redirect_stdout(sink):
        yield


@contextmanager
def fastai_single_process() -> Iterator[None]:
    """Hides ``WORLD_SIZE`` and ``RANK`` from fastai while it runs (see the module's docstring).

    Examples:
        >>> with fastai_single_process():
        ...     "WORLD_SIZE" in os.environ
        False
    """
    saved = {name: os.environ.pop(name) for name in _FASTAI_READS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object); ``value`` itself in one process.

    Examples:
        >>> broadcast_from_main(3e-4)
        0.0003
    """
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def agreed_max(value: float) -> float:
    """The largest of the ranks' ``value`` (a decision every rank must take alike).

    Examples:
        >>> agreed_max(0.5)
        0.5
    """
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def summed(values: Sequence[float]) -> list[float]:
    """Each of ``values`` summed over the ranks (in float64).

    Examples:
        >>> summed([1.5, 2.0])
        [1.5, 2.0]
    """
    if not active():
        return [float(value) for value in values]
    tensor = torch.tensor([float(value) for value in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def gathered(value: Any) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order.

    Examples:
        >>> gathered("mine")
        ['mine']
    """
    if not active():
        return [value]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    return everyone


def on_main(what: str, action: Callable[[], Any]) -> Any:
    """Runs ``action`` on rank 0 alone (writing a file, say), the other ranks waiting for it.

    Returns ``action()`` on rank 0 (and in one process), None on the others. When it fails,
    rank 0 raises its error and every other rank a ``RuntimeError`` quoting it, rather than
    waiting for a collective that never comes.

    Examples:
        >>> on_main("add", lambda: 1 + 1)
        2
    """
    if not active():
        return action()
    result, failure = None, None
    if is_main():
        try:
            result = action()
        except Exception as err:  # every rank must hear of it before anyone raises
            failure = err
    message = broadcast_from_main(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        raise RuntimeError(f"rank 0 could not {what}: {message}")
    return result


def broadcast_module(module: torch.nn.Module, *, buffers_only: bool = False) -> None:
    """Copies rank 0's parameters and buffers (or its buffers alone) into ``module`` on every rank.

    Buffers alone matter after DDP training: it gives every rank rank 0's buffers at the start
    of each forward pass, and each rank's BatchNorm then updates its running statistics with
    its own chips, so after the last step the ranks' statistics differ.
    """
    if not active():
        return
    tensors = module.buffers() if buffers_only else itertools.chain(module.parameters(), module.buffers())
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# ----------------------------------------------------------------------------- sharding


def training_steps(order: Sequence[int], batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's chips in each training step of an epoch: every chip once, the same step count on every rank.

    The ``n`` chips, in ``order``, are cut into ``s = ceil(n / batch_size)`` steps whose sizes
    differ by at most one (step ``j`` holds ``order[j·n//s : (j+1)·n//s]``, never more than
    ``batch_size`` chips), and each step into ``world_size`` contiguous parts the same way (part
    ``p`` of a step of ``m`` is ``step[p·m//W : (p+1)·m//W]``); rank ``r`` takes part ``(r + j) mod
    W``, so the larger parts go round the ranks. One process drops the last partial batch
    instead (fastai's ``drop_last``): here no chip is left out or repeated.

    Raises:
        InvalidArgumentError: a step would leave a rank without a chip (``n // s < world_size``).

    Examples:
        >>> training_steps(range(10), batch_size=4, world_size=2, rank=0)
        [[0], [4, 5], [6, 7]]
        >>> training_steps(range(10), batch_size=4, world_size=2, rank=1)
        [[1, 2], [3], [8, 9]]
    """
    order = list(order)
    n = len(order)
    steps = max(1, -(-n // batch_size))
    if n // steps < world_size:
        raise InvalidArgumentError(
            f"{n} training chips in steps of batch_size={batch_size} leave a step with fewer chips than the "
            f"{world_size} processes; prepare_data with batch_size >= {world_size} (a multiple of it is best) "
            "and at least that many training chips, or start fewer processes."
        )
    mine = []
    for j in range(steps):
        step = order[j * n // steps : (j + 1) * n // steps]
        m, part = len(step), (rank + j) % world_size
        mine.append(step[part * m // world_size : (part + 1) * m // world_size])
    return mine


def validation_steps(n: int, batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's share of the validation batches: whole batches, in order, contiguous per rank.

    The batches are one process's (chips ``[k·b, (k+1)·b)``); rank ``r`` takes batches
    ``[r·B//W, (r+1)·B//W)`` of ``B``. Each batch's loss is then the one-process figure, and the
    ranks' detections joined in rank order are the chips in their order.

    Examples:
        >>> validation_steps(10, batch_size=4, world_size=2, rank=0), validation_steps(10, 4, 2, rank=1)
        ([[0, 1, 2, 3]], [[4, 5, 6, 7], [8, 9]])
    """
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    count = len(batches)
    return batches[rank * count // world_size : (rank + 1) * count // world_size]


# ----------------------------------------------------------------------------- the setup check


def _setup_fingerprint(data) -> dict[str, str]:
    def chips(dataset) -> str:
        names = "\n".join(f"{os.path.basename(str(path))} {len(labels.classes)}"
                          for path, labels in zip(dataset.images, dataset.labels))
        return f"{len(dataset.images)} chips, digest {hashlib.sha256(names.encode()).hexdigest()[:12]}"

    return {
        "geolearn": __version__,
        "torch": torch.__version__,
        "classes": str(list(data.classes)),
        "chip_size": str(data.chip_size),
        "batch_size": str(data.batch_size),
        "training chips": chips(data.train_ds),
        "validation chips": chips(data.valid_ds),
    }


def check_same_setup(data) -> None:
    """Checks that every rank runs the same geolearn and torch on the same chips.

    Compares a fingerprint (versions, classes, chip and batch size, and a digest of the chip
    names and their box counts, split by training and validation) across the ranks; every rank
    raises the same error when they differ.

    Raises:
        DistributedSetupError: naming what differs and each rank's value.
    """
    if not active():
        return
    mine = _setup_fingerprint(data)
    everyone = gathered(mine)
    differing = [key for key in mine if len({fingerprint[key] for fingerprint in everyone}) > 1]
    if differing:
        detail = "; ".join(
            f"{key}: " + " / ".join(f"rank {r}: {fingerprint[key]}" for r, fingerprint in enumerate(everyone))
            for key in differing
        )
        raise DistributedSetupError(
            f"the {len(everyone)} processes differ in {', '.join(differing)} ({detail}). Every process must run the "
            "same geolearn and torch versions on the same exported chips, read with the same prepare_data "
            "arguments (path, seed, val_split_pct, batch_size, chip_size)."
        )
