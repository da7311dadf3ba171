"""fastai callbacks: bfloat16 autocast for training, the ``average_precision`` column, a time
budget, progress that stays readable in a log, and data-parallel training under a launcher.

Only training uses them, and only training imports fastai (this module, the data pipeline and
:class:`~geolearn.learn.retinanet.RetinaNet`'s training methods): a model that only predicts
never loads it.

fastai's ``MixedPrecision`` callback autocasts on CUDA only. Recent CPUs with AMX or AVX512-BF16
train RetinaNet about 3× faster in bfloat16 than in float32 (:func:`geolearn.models.precision.resolve_precision`
decides where), so :class:`Autocast` does it on any device. bfloat16 has float32's range: no loss
scaling is needed, which keeps the callback small. float16 needs a gradient scaler and is only
worth it on CUDA, where fastai's own callback does it.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from fastai.callback.core import Callback, CancelFitException, CancelTrainException
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastai.callback.tracker import SaveModelCallback
from fastai.data.core import TfmdDL
from fastai.learner import AvgLoss, Metric, save_model
from fastai.imports import noop  # the one Learner.no_logging sets (fastcore has another)
from fastcore.xtras import join_path_file
from torch.nn.parallel import DistributedDataParallel

from geolearn.atomic import atomic_write
from geolearn.data.dataset import ChipDataset
from geolearn.learn import distributed
from geolearn.learn.batchnorm import sync_batch_norms
from geolearn.errors import TrainingDivergedError
from geolearn.learn.evaluation import DetectionSettings, batch_detections, batch_targets
from geolearn.metrics import average_precision, mean_average_precision
from geolearn.progress import watched

__all__ = ["Autocast", "AtomicCheckpoint", "precision_callbacks", "AveragePrecisionMetric", "TimeBudget", "TableProgress",
           "StopOnNonFiniteLoss", "ShardedDL", "DistributedTraining"]

logger = logging.getLogger(__name__)


class Autocast(Callback):
    """Runs forward pass and loss under ``torch.autocast`` in bfloat16, on any device.

    Like fastai's ``MixedPrecision`` (same hooks and order) minus the gradient
    scaler, which bfloat16 does not need; predictions are cast back to float32
    so that loss and metrics are computed in full precision.

    Args:
        dtype: the autocast dtype. Default ``torch.bfloat16``.

    Examples:
        >>> callback = Autocast()
        >>> callback.dtype, callback.order
        (torch.bfloat16, 10)
        >>> learn = Learner(data, model, loss_func=loss, cbs=[callback])  # doctest: +SKIP
    """

    order = 10

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self._context = None

    def before_batch(self) -> None:
        """Enters autocast on the model's device type."""
        device_type = next(self.learn.model.parameters()).device.type
        self._context = torch.autocast(device_type, dtype=self.dtype)
        self._context.__enter__()

    def after_pred(self) -> None:
        """Casts the predictions back to float32."""
        pred = self.learn.pred
        self.learn.pred = [p.float() for p in pred] if isinstance(pred, (list, tuple)) else pred.float()

    def after_loss(self) -> None:
        """Leaves autocast: the backward pass runs outside it, as PyTorch recommends."""
        self._exit()

    # A cancelled or failed batch must not leave autocast switched on.
    def after_cancel_batch(self) -> None:
        """Leaves autocast when a batch is cancelled."""
        self._exit()

    def after_fit(self) -> None:
        """Leaves autocast at the end of training, whatever happened."""
        self._exit()

    def _exit(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None


def precision_callbacks(dtype: torch.dtype | None) -> list[Callback]:
    """The callbacks that train in ``dtype``.

    Args:
        dtype: ``torch.bfloat16`` (any device), ``torch.float16`` (CUDA), or None for float32.

    Returns:
        ``[]`` for None, fastai's ``MixedPrecision`` (with its gradient scaler) for float16, else
        :class:`Autocast` in ``dtype``.

    Examples:
        >>> precision_callbacks(None), precision_callbacks(torch.bfloat16), precision_callbacks(torch.float16)
        ([], [Autocast], [MixedPrecision])
    """
    if dtype is None:
        return []
    if dtype == torch.float16:
        return [MixedPrecision(amp_mode="fp16")]
    return [Autocast(dtype)]


@dataclass
class AveragePrecisionMetric(Metric):
    """fastai metric: mean arcgis-style AP over the validation set (CONTRACT §5).

    Its column is named ``average_precision``; classes without ground truth in the
    validation set are left out of the mean.

    Args:
        settings: how outputs become detections, and the IoU a detection needs.

    Attributes:
        settings: as given.
        predictions: per validation chip so far, ``(chip_boxes, labels, scores)``.
        targets: per validation chip so far, ``(chip_boxes, labels)``.

    Examples:
        >>> from types import SimpleNamespace
        >>> from geolearn.models.anchors import make_anchors
        >>> metric = AveragePrecisionMetric(DetectionSettings(make_anchors(64), chip_size=64))
        >>> cls_logits = torch.full((1, 774, 2), -10.0)
        >>> cls_logits[0, 5, 0] = 3.0  # finds a box at (0, 0, 14, 14) px
        >>> learn = SimpleNamespace(  # what fastai's Learner holds after a validation batch
        ...     pred=[cls_logits, torch.zeros(1, 774, 4)],
        ...     yb=(torch.tensor([[[-1.0, -1.0, -0.5625, -0.5625]]]), torch.tensor([[1]])),  # (0, 0, 14, 14) px
        ... )
        >>> metric.reset()
        >>> metric.accumulate(learn)
        >>> metric.name, metric.value
        ('average_precision', 1.0)
    """

    settings: DetectionSettings
    predictions: list = field(default_factory=list)
    targets: list = field(default_factory=list)

    def reset(self) -> None:
        """Forgets the chips seen (fastai calls it before each validation pass)."""
        self.predictions, self.targets = [], []

    def accumulate(self, learn) -> None:
        """Adds a validation batch: detections from ``learn.pred``, targets from ``learn.yb``.

        Args:
            learn: the fastai ``Learner`` (anything with ``pred`` and ``yb``).
        """
        unit_boxes, labels = learn.yb
        self.predictions += batch_detections(learn.pred, self.settings)
        self.targets += batch_targets(unit_boxes, labels, self.settings.chip_size)

    @property
    def value(self) -> float:
        """Mean arcgis-style AP, in [0, 1], over the chips accumulated (0.0 without ground truth)."""
        ap = average_precision(self.predictions, self.targets, iou_thresh=self.settings.iou_thresh)
        return mean_average_precision(ap)

    @property
    def name(self) -> str:
        """The column name, ``'average_precision'``."""
        return "average_precision"


class TimeBudget(Callback):
    """Fits a training schedule into a wall-clock budget, validation included.

    On a CPU the useful question is "how good a model in 15 minutes", not "in how many epochs":
    an epoch's time depends on the chips, the chip size and what else the machine runs. The
    schedule (one-cycle's warm-up and annealing) advances by whichever is further along, the
    batches done out of ``epochs`` or the time spent out of ``seconds``, so it completes when
    either runs out. When time runs out the epoch's training stops, its validation runs (the
    time it took last is kept in reserve), and fitting ends with the schedule finished.

    Args:
        seconds: wall-clock budget from the start of ``fit``, > 0.

    Examples:
        >>> budget = TimeBudget(900)
        >>> budget.seconds, budget.order
        (900.0, 55)
        >>> model.fit(100, time_budget=900)  # doctest: +SKIP
    """

    # After TrainEvalCallback (-10), which counts batches; before ParamScheduler (60), which reads
    # pct_train in before_batch.
    order = 55

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"time_budget={seconds!r}: give the seconds training may take, a number > 0.")
        self.seconds = float(seconds)

    def before_fit(self) -> None:
        """Starts the clock."""
        self._start = time.perf_counter()
        self._validation_seconds = 0.0
        self.stopped_early = False

    def _time_fraction(self) -> float:
        """Share of the budget spent, with the next validation's time held back (the most any
        rank has spent, under a launcher: every rank must schedule and stop alike)."""
        usable = max(self.seconds - self._validation_seconds, 1e-9)
        return distributed.agreed_max((time.perf_counter() - self._start) / usable)

    def before_batch(self) -> None:
        """Advances the schedule by time when time is further along than the batch count."""
        if self.training:
            by_batches = self.learn.train_iter / (self.n_iter * self.n_epoch)
            self.learn.pct_train = min(max(by_batches, self._time_fraction()), 1.0)

    def after_batch(self) -> None:
        """Ends the epoch's training when the budget (minus a validation) is spent."""
        if self.training and self._time_fraction() >= 1.0:
            self.stopped_early = True
            raise CancelTrainException()

    def after_cancel_train(self) -> None:
        """Keeps the cut epoch's training loss in the table.

        fastai's Recorder (which runs before this callback) leaves a cancelled training phase's
        metrics out of the epoch's row, which shifts every later column left: the checkpoint would
        then track the average precision as if it were the validation loss. The batches that did
        run give a true average, so they are recorded.
        """
        recorder = getattr(self.learn, "recorder", None)
        if recorder is not None:
            recorder.cancel_train = False

    def before_validate(self) -> None:
        """Times the validation pass."""
        self._validate_start = time.perf_counter()

    def after_validate(self) -> None:
        """Keeps the validation's time in reserve for the last epoch."""
        self._validation_seconds = time.perf_counter() - self._validate_start

    def before_epoch(self) -> None:
        """Ends fitting once the budget is spent.

        Not in ``after_epoch``: the table row, the checkpoint and the progress bar must see the
        last epoch first, and they run after this callback there.
        """
        if self.stopped_early:
            logger.info("time budget of %.0f s reached after %d epochs", self.seconds, self.epoch)
            raise CancelFitException()


class TableProgress(ProgressCallback):
    """fastai's progress bars where someone watches them; in a log, the epoch table alone.

    In a notebook or a terminal this is fastai's ``ProgressCallback``. Where stdout is a file, a
    pipe or CI (:func:`geolearn.progress.watched` is False) fastprogress would still write a
    carriage-return update per batch; this writes only the table fastai prints, one line per
    epoch, laid out as on a terminal, each line flushed so that a log can be followed.

    Examples:
        >>> [type(cb).__name__ for cb in model.learn.cbs]  # doctest: +SKIP
        ['TrainEvalCallback', 'Recorder', 'CastToTensor', 'TableProgress']
    """

    def before_fit(self) -> None:
        """fastai's bars where watched; else fastai's ``before_fit`` without the master bar."""
        self._bars = watched()
        self._names: list[str] | None = None
        if self._bars:
            return super().before_fit()
        if self.learn.logger != noop:  # lr_find turns the table off
            self.old_logger, self.learn.logger = self.logger, self._write_stats
            self._write_stats(self.recorder.metric_names)
        else:
            self.old_logger = noop

    def _launch_pbar(self) -> None:
        if self._bars:
            super()._launch_pbar()
        else:
            self.pbar = _NoBar()

    def _write_stats(self, log: list) -> None:
        if getattr(self, "mbar", False):
            return super()._write_stats(log)
        # The layout of fastprogress's ConsoleMasterBar.write(table=True).
        cells = [f"{value:.6f}" if isinstance(value, float) else str(value) for value in log]
        if self._names is None:
            self._names = [cell.ljust(8) for cell in cells]
            print("  ".join(self._names), flush=True)
        else:
            print("".join(cell.ljust(2 + len(name)) for cell, name in zip(cells, self._names)), flush=True)


class _NoBar:
    """What ProgressCallback's hooks call on a bar, doing nothing (``comment`` is set per batch)."""

    comment = ""

    def update(self, value: int) -> None:
        pass

    def on_iter_end(self) -> None:
        pass


class StopOnNonFiniteLoss(Callback):
    """Stops ``fit`` with :class:`~geolearn.errors.TrainingDivergedError` when a training batch's loss is NaN or infinite.

    The check falls after the loss and before the backward pass, so the model keeps the weights
    of the last finite batch. fastai's ``TerminateOnNaNCallback`` stops as quietly as an early
    stop would, which hands a diverged model on to ``save`` and ``detect_objects`` without a word.

    Examples:
        See :func:`geolearn.learn.training.fit_callbacks`, which adds it to every ``fit``.
    """

    order = Autocast.order + 1  # the loss as the precision callbacks left it

    def after_loss(self) -> None:
        """Raises when this training batch's loss is not finite."""
        if not self.training:
            return
        loss = self.learn.loss
        finite = bool(torch.isfinite(loss).all())
        # Under a launcher every rank stops when any rank's loss is not finite.
        if not distributed.agreed_max(0.0 if finite else 1.0):
            return
        rate = self.learn.opt.hypers[-1]["lr"]
        became = "not finite on another process" if finite else f"{float(loss.detach())}"
        raise TrainingDivergedError(
            f"fit: the training loss became {became} at epoch {self.epoch + 1}, batch {self.iter + 1}, "
            f"at a learning rate of {rate:.2e}. Train with a lower one (fit(lr=...), a tenth of it, say), or "
            "check the chips for NaN pixels. The model keeps the weights of the batch before."
        )


class AtomicCheckpoint(SaveModelCallback):
    """fastai's ``SaveModelCallback``, with each checkpoint written whole or not at all.

    fastai's ``Learner.save`` writes ``models/<name>.pth`` in place: a run killed while it writes
    leaves a truncated checkpoint over the previous one. Here the file goes through
    :func:`geolearn.atomic.atomic_write`, so the previous checkpoint stays until the new one is
    complete. Arguments as ``SaveModelCallback``'s. Under a launcher rank 0 alone writes, and
    the best epoch's weights reach the other ranks by broadcast (nodes need not share a disk).

    Examples:
        ``RetinaNet.fit(checkpoint=True)`` adds it (``geolearn.learn.training.fit_callbacks``):

        >>> AtomicCheckpoint(monitor="valid_loss", fname="checkpoint", every_epoch=False).every_epoch
        False
    """

    def _save(self, name: str) -> None:
        if not distributed.is_main():
            return
        file = join_path_file(name, self.learn.path / self.learn.model_dir, ext=".pth")  # as Learner.save names it
        with atomic_write(file) as partial:
            save_model(partial, self.learn.model, getattr(self.learn, "opt", None), with_opt=self.with_opt)
        self.last_saved_path = file

    def after_fit(self, **kwargs) -> None:
        """Reloads the best epoch (rank 0) and hands it to every other rank."""
        if distributed.is_main():
            super().after_fit(**kwargs)
        if not self.every_epoch:
            distributed.broadcast_module(self.learn.model)


# ----------------------------------------------------------------------------- data-parallel training


class ShardedDL(TfmdDL):
    """A fastai loader over this rank's chips, step by step as ``plan(epoch)`` lays them out.

    Made from the loader it shards (``dl.new(cls=ShardedDL, plan=...)``), so the batch
    transforms, collate and device are that loader's. ``plan(epoch)`` returns one list of
    dataset indices per step (:func:`~geolearn.learn.distributed.training_steps`,
    :func:`~geolearn.learn.distributed.validation_steps`); steps may differ in size, which
    fastai's own batching (a fixed ``bs``) cannot express.

    Examples:
        >>> from fastai.data.core import TfmdDL
        >>> loader = TfmdDL(list(range(5)), bs=2).new(cls=ShardedDL, plan=lambda epoch: [[4, 0], [2]])
        >>> len(loader), [batch.tolist() for batch in loader]
        (2, [[4, 0], [2]])
    """

    def __init__(self, dataset=None, plan: Callable[[int], list[list[int]]] | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.plan = plan
        self.epoch = 0
        self._steps = plan(0) if plan is not None else []

    def __len__(self) -> int:
        return len(self._steps)

    def get_idxs(self) -> list[int]:
        """Lays out the next epoch (fastai calls it once per pass, in the main process)."""
        self._steps = self.plan(self.epoch)
        self.epoch += 1
        return [index for step in self._steps for index in step]

    def _my_steps(self) -> list[list[int]]:
        # fastai deals whole batches to its worker processes in turn (num_workers, offs).
        return self._steps[self.offs :: self.num_workers]

    def sample(self) -> Iterator[int]:
        """The indices this (worker) process reads."""
        return (index for step in self._my_steps() for index in step)

    def chunkify(self, items) -> Iterator[list]:
        """Groups the items read into this rank's steps."""
        items = iter(items)
        for step in self._my_steps():
            yield list(itertools.islice(items, len(step)))


class DistributedTraining(Callback):
    """Trains ``learn.model`` data-parallel over the joined process group (:mod:`geolearn.learn.distributed`).

    Before fitting it makes the model's BatchNorm layers take their statistics over every
    rank's chips (:mod:`geolearn.learn.batchnorm`), wraps it in ``DistributedDataParallel`` and
    shards the training and validation loaders (:class:`ShardedDL`); each validation pass runs the bare model over
    this rank's batches, then gathers the loss sums and the detections, so that every rank
    holds the whole validation set's figures before fastai's ``Recorder`` reads them. After
    fitting the bare model is back in ``learn.model``.

    Args:
        device: the device this rank trains on (:func:`~geolearn.learn.distributed.join_process_group`).

    Examples:
        ``RetinaNet.fit`` adds it under a launcher (:func:`geolearn.learn.training.training_processes`).
    """

    # After ChannelsLast (-1) has converted the model; before Recorder (50) reads the metrics.
    order = 5

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.unsync: Callable[[], None] | None = None

    def before_fit(self) -> None:
        """Syncs the BatchNorm layers, wraps the model, agrees on a shuffle seed and shards the loaders."""
        world, me = distributed.world_size(), distributed.rank()
        self.bare = self.learn.model
        self.unsync = sync_batch_norms(self.bare)  # statistics over the whole step's chips, as in one process
        self.ddp = DistributedDataParallel(self.bare, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.learn.model = self.ddp
        train, valid = self.dls.train, self.dls.valid
        seed = distributed.broadcast_from_main(train.rng.randint(0, 2**31 - 1))
        _draw_apart(train.dataset, me)

        def train_plan(epoch: int) -> list[list[int]]:
            order = torch.randperm(len(train.dataset), generator=torch.Generator().manual_seed(seed + epoch))
            return distributed.training_steps(order.tolist(), train.bs, world, me)

        valid_steps = distributed.validation_steps(len(valid.dataset), valid.bs, world, me)
        self.train_shard = train.new(cls=ShardedDL, plan=train_plan, shuffle=False, drop_last=False)
        self.valid_shard = valid.new(cls=ShardedDL, plan=lambda epoch: valid_steps, shuffle=False, drop_last=False)

    def before_train(self) -> None:
        """Trains on this rank's shard."""
        self.learn.dl = self.train_shard

    def after_train(self) -> None:
        """The table's training loss: the ranks' smoothed losses averaged."""
        smooth = getattr(getattr(self.learn, "recorder", None), "smooth_loss", None)
        if smooth is not None and torch.is_tensor(smooth.val):
            (total,) = distributed.summed([float(smooth.val)])
            smooth.val = torch.full_like(smooth.val, total / distributed.world_size())

    def before_validate(self) -> None:
        """Validates this rank's batches with the bare model (no gradients to synchronise) and rank 0's BatchNorm statistics."""
        if self.learn.dl is self.dls.valid:
            self.learn.dl = self.valid_shard
        self.learn.model = self.bare
        distributed.broadcast_module(self.bare, buffers_only=True)

    def after_validate(self) -> None:
        """Gathers the loss sums and the detections, then re-wraps the model."""
        self.learn.model = self.ddp
        recorder = getattr(self.learn, "recorder", None)
        for metric in getattr(recorder, "_valid_mets", []):  # fastai's Recorder keeps no public handle on them
            _gather_metric(metric)

    def after_fit(self) -> None:
        """Puts the bare model, with plain BatchNorm layers and rank 0's statistics, back in ``learn.model``."""
        self.learn.model = self.bare
        self.restore_batch_norms()
        distributed.broadcast_module(self.bare, buffers_only=True)

    def restore_batch_norms(self) -> None:
        """Makes the synced BatchNorm layers plain ``nn.BatchNorm2d`` again, once; no communication,
        so it is safe after an error too, when fastai skips ``after_fit``."""
        if self.unsync is not None:
            self.unsync()
            self.unsync = None


def _draw_apart(dataset, rank: int) -> None:
    """Makes rank ``rank`` > 0 draw its own augmentations; rank 0 draws as one process would.

    Every process starts its generators alike (torch's default seed is a constant, and scripts
    seed alike), so without this every rank would flip, recolour and crop its own chips with the
    same draws: a global batch would hold fewer distinct augmentations than one process gives.
    fastai's batch transforms draw from torch's and Python's generators, the crops from the
    dataset's own.
    """
    if rank == 0:
        return
    torch.manual_seed(torch.initial_seed() + rank)
    random.seed(random.getrandbits(64) + rank)
    if isinstance(dataset, ChipDataset):
        dataset.reseed(dataset.seed + rank)


def _gather_metric(metric) -> None:
    """Makes a validation metric hold every rank's chips: sums for fastai's ``AvgLoss``, lists for AP."""
    if isinstance(metric, AvgLoss):  # sum(loss · chips) and sum(chips)
        metric.total, count = distributed.summed([float(metric.total), metric.count])
        metric.count = int(count)
    elif isinstance(metric, AveragePrecisionMetric):  # per chip, in chip order (rank order)
        everyone = distributed.gathered((_on_cpu(metric.predictions), _on_cpu(metric.targets)))
        metric.predictions = [chip for predictions, _ in everyone for chip in predictions]
        metric.targets = [chip for _, targets in everyone for chip in targets]
    else:
        raise TypeError(f"{type(metric).__name__}: DistributedTraining does not know how to gather this metric.")


def _on_cpu(chips: list) -> list:
    return [tuple(part.cpu() for part in chip) for chip in chips]
