"""What ``RetinaNet.fit`` and ``lr_find`` add to fastai's loop, as plain functions.

- :func:`make_learner`: the fastai ``Learner`` over prepared data, with geolearn's metric, progress
  and freezing rule;
- :func:`group_rates`: one learning rate turned into the three parameter groups' rates;
- :func:`fit_callbacks`: the callbacks that ``fit``'s arcgis.learn arguments ask for;
- :func:`range_test`: fastai's LR range test, returning the curve :func:`~geolearn.learn.lr_rule.suggest_lr` reads;
- :func:`training_boxes`: the boxes anchors are fitted to;
- :func:`calibrate_threshold`: the score cut ``fit`` hands to ``detect_objects``;
- :func:`training_processes`: one process, or several under ``torchrun`` (data-parallel).

Like :mod:`geolearn.learn.callbacks`, this module imports fastai, so ``RetinaNet`` imports it inside
its training methods only: a model that only predicts never loads fastai.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import valley
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.learner import Learner
from fastai.optimizer import Adam

from geolearn.data.boxes import pixel_to_unit
from geolearn.errors import GeolearnWarning
from geolearn.inference.defaults import NMS_OVERLAP
from geolearn.learn import distributed
from geolearn.learn.callbacks import (
    AtomicCheckpoint,
    AveragePrecisionMetric,
    DistributedTraining,
    StopOnNonFiniteLoss,
    TableProgress,
    TimeBudget,
    precision_callbacks,
)
from geolearn.learn.evaluation import DetectionSettings, evaluate
from geolearn.metrics import precision_recall
from geolearn.models.loss import cut_by_edge
from geolearn.models.retinanet import param_groups

__all__ = [
    "CALIBRATION_FLOOR",
    "CALIBRATION_IOU",
    "CHECKPOINTS",
    "check_fit_options",
    "make_learner",
    "group_rates",
    "fit_callbacks",
    "range_test",
    "training_boxes",
    "calibrate_threshold",
    "recorded_losses",
    "training_processes",
]

logger = logging.getLogger(__name__)

# The calibration at the end of fit: detections above CALIBRATION_FLOOR, matched at IoU 0.5.
CALIBRATION_FLOOR = 0.05
CALIBRATION_IOU = 0.5
# fit's checkpoint argument: True and 'best' keep the best epoch, 'all' every epoch, False none.
CHECKPOINTS = (True, False, "best", "all")


def make_learner(data, model: torch.nn.Module, loss_func, metric: AveragePrecisionMetric, wd: float) -> Learner:
    """A fastai ``Learner`` over ``data`` with Adam, the three parameter groups and ``metric``.

    fastai's bars stay, but only the epoch table reaches a log (:class:`TableProgress` says why).
    With ImageNet weights the backbone starts frozen: only FPN, heads and BatchNorm layers train
    (arcgis.learn). Freezing random weights would only cripple the model, so without them
    everything trains from the start.

    Examples:
        See ``RetinaNet.__init__`` and ``RetinaNet.from_model(..., data=)``, which calls it.
    """
    learn = Learner(data, model, loss_func=loss_func, opt_func=Adam, splitter=param_groups, metrics=[metric],
                    wd=wd, path=data.path, model_dir="models")
    learn.remove_cbs([cb for cb in learn.cbs if type(cb) is ProgressCallback])
    learn.add_cb(TableProgress())
    if model.encoder.pretrained:
        learn.freeze()
    else:
        logger.info("backbone has random weights: training all layers from the start")
    return learn


def group_rates(lr: float | slice, *, learned_features: bool) -> float | slice:
    """The learning rates of the three parameter groups for ``lr``.

    arcgis.learn turns a float into ``slice(lr / 10, lr)``: the backbone's ImageNet features
    change ten times slower than the new FPN and heads. A backbone with random weights
    (``learned_features`` False) has no features to protect, and slowing it down only slows
    learning (on the sample scene a from-scratch resnet18 reached tree AP@0.5 0.73 in 10 epochs
    with one rate, 0.62 in 12 epochs with the slice), so then every group trains at ``lr``. A
    slice is taken as given.

    Examples:
        >>> group_rates(1e-3, learned_features=True)
        slice(0.0001, 0.001, None)
        >>> group_rates(1e-3, learned_features=False)
        0.001
    """
    if not isinstance(lr, (int, float)):
        return lr
    if learned_features:
        return slice(lr / 10, lr)
    return float(lr)


def check_fit_options(*, time_budget: float | None, monitor: str, metrics: list[str], checkpoint: bool | str,
                      early_stopping: bool, has_validation: bool) -> bool | str:
    """Checks ``fit``'s options before any work; returns the checkpoint setting to train with.

    Without validation chips early stopping is refused, and checkpoints (on by default) are
    left out with a warning: there is no best epoch to choose.

    Raises:
        ValueError: a time budget that is not a positive number, an unknown ``monitor`` or
            ``checkpoint``, or ``early_stopping`` without validation chips.

    Examples:
        >>> check_fit_options(time_budget=None, monitor="valid_loss", metrics=["valid_loss"], checkpoint="best",
        ...                   early_stopping=False, has_validation=True)
        'best'
    """
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget={time_budget!r}: give the seconds fit may take, a number > 0 (or None).")
    if monitor not in metrics:
        raise ValueError(f"monitor={monitor!r}: choose one of {metrics}.")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint={checkpoint!r}: use True, False, 'best' or 'all'.")
    if not has_validation and early_stopping:
        raise ValueError("early_stopping=True watches the validation chips, and the data has none; prepare_data "
                         "with val_split_pct=0.1 (say), or fit with early_stopping=False.")
    if not has_validation and checkpoint:  # True is the default: train on, without
        warnings.warn(f"checkpoint={checkpoint!r}: no checkpoint is kept, as the data has no validation chips to "
                      "choose the best epoch by; the model is the last epoch's. prepare_data with "
                      "val_split_pct=0.1 (say) to keep the best, or fit with checkpoint=False.",
                      GeolearnWarning, stacklevel=3)
        return False
    return checkpoint


def fit_callbacks(
    dtype: torch.dtype | None,
    *,
    early_stopping: bool,
    checkpoint: bool | str,
    monitor: str,
    tensorboard_dir: Path | None,
    seconds_left: float | None,
) -> list[Callback]:
    """The callbacks of one ``fit``: precision, channels_last and a stop on a non-finite loss, then what its arguments ask for.

    Args:
        dtype: the autocast dtype (:func:`~geolearn.learn.callbacks.precision_callbacks`).
        early_stopping: stop when ``monitor`` has not improved by 0.001 for 5 epochs.
        checkpoint: one of :data:`CHECKPOINTS`; saved under the Learner's ``models/`` folder.
        monitor: the value early stopping and checkpoints watch.
        tensorboard_dir: where TensorBoard logs go; None: no TensorBoard.
        seconds_left: the time budget, or None.

    Examples:
        See ``RetinaNet.fit``, which calls it.
    """
    callbacks = precision_callbacks(dtype) + [ChannelsLast(), StopOnNonFiniteLoss()]
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(monitor=monitor, min_delta=0.001, patience=5))
    if checkpoint:
        name = f"checkpoint_{datetime.now():%Y-%m-%d_%H-%M-%S}"
        callbacks.append(AtomicCheckpoint(monitor=monitor, fname=name, every_epoch=checkpoint == "all"))
    if tensorboard_dir is not None and distributed.is_main():
        callbacks += _tensorboard_callbacks(tensorboard_dir)
    if seconds_left is not None:
        callbacks.append(TimeBudget(max(seconds_left, 1.0)))  # at least a second, so that one batch trains
    return callbacks


def _tensorboard_callbacks(log_dir: Path) -> list[Callback]:
    try:
        from fastai.callback.tensorboard import TensorBoardCallback

        import tensorboard  # noqa: F401  (fastai imports it lazily; fail here, clearly)
    except ImportError:
        warnings.warn("tensorboard=True needs the tensorboard package (pip install tensorboard); "
                      "training goes on without it.", GeolearnWarning, stacklevel=4)
        return []
    return [TensorBoardCallback(log_dir=str(log_dir), trace_model=False)]


def range_test(learn: Learner, dtype: torch.dtype | None, num_it: int) -> tuple[list[float], list[float], float]:
    """fastai's LR range test (weights restored after): ``(rates, losses, fastai's valley)``.

    Examples:
        See ``RetinaNet.lr_find``, which calls it.
    """
    with learn.added_cbs(precision_callbacks(dtype) + [ChannelsLast()]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fastai warns when the loss diverges early: expected here
        suggestion = learn.lr_find(num_it=num_it, suggest_funcs=(valley,), show_plot=False)
    recorder = learn.recorder
    return recorder.lrs[: len(recorder.losses)], [float(v) for v in recorder.losses], float(suggestion.valley)


def training_boxes(data) -> list[Tensor]:
    """Per training chip, its whole boxes ``[N, 4]`` in the pixels the network sees.

    Boxes cut by the chip's edge show part of an object; the loss ignores them, so anchors are
    fitted to the whole ones (:meth:`~geolearn.learn.retinanet.RetinaNet.suggest_anchors`).

    Examples:
        See ``RetinaNet.suggest_anchors``, which calls it.
    """
    boxes = []
    for labels, (height, width) in zip(data.train_ds.labels, data.train_ds.sizes):
        chip_boxes = labels.chip_boxes[~cut_by_edge(pixel_to_unit(labels.chip_boxes, height, width))]
        if data.resize_to:
            # Chips are squished to resize_to before cropping (geolearn.data.transforms.resize).
            chip_boxes = chip_boxes * torch.tensor([data.resize_to / width, data.resize_to / height] * 2)
        boxes.append(chip_boxes)
    return boxes


def calibrate_threshold(model: torch.nn.Module, valid, anchors, chip_size: int,
                        dtype: torch.dtype | None) -> float | None:
    """The validation chips' best-F1 score cut, or None when nothing is detected there.

    Why: a fixed 0.5 suits a pretrained network's confident scores, not the spread of one
    trained from scratch for minutes. On the NEON Yellowstone benchmark (docs/training.md) the
    best-F1 cut of a 15-minute model lay at 0.30 and 0.5 kept only about a third of the crowns
    it found, so ``fit`` measures the cut it hands to ``detect_objects``. Detections are made as
    ``detect_objects`` makes them (its NMS overlap) down to ``CALIBRATION_FLOOR``, matched at
    ``CALIBRATION_IOU``, every class pooled.

    Examples:
        See ``RetinaNet.fit``, which calls it.
    """
    settings = DetectionSettings(anchors, chip_size, CALIBRATION_FLOOR, NMS_OVERLAP, CALIBRATION_IOU)
    predictions, targets = evaluate(model, valid, settings, dtype, False)
    curve = precision_recall(predictions, targets, iou_thresh=CALIBRATION_IOU, cls=None)
    cut = curve.best_f1_cut(floor=CALIBRATION_FLOOR)
    if cut is None:
        logger.info("no detections on the validation chips: detect_objects keeps its default threshold")
        return None
    f1, precision, recall, _ = curve.best_f1()
    logger.info("detection threshold %.2f: best F1 %.2f (precision %.2f, recall %.2f) on the validation chips",
                cut, f1, precision, recall)
    return cut


def recorded_losses(recorder) -> tuple[list[int], list[float], list[int], list[float]]:
    """The last fit's losses from fastai's ``Recorder``: ``(batch numbers, training loss, batch
    numbers at the epochs' ends, validation loss)``, what :func:`geolearn.viz.plot_losses` draws.

    Examples:
        >>> from types import SimpleNamespace
        >>> recorded_losses(SimpleNamespace(losses=[3.0, 2.0, 1.5], values=[[2.1, 1.8]], iters=[3]))
        ([0, 1, 2], [3.0, 2.0, 1.5], [3], [1.8])
    """
    train = [float(v) for v in getattr(recorder, "losses", [])]
    valid = [float(row[1]) for row in getattr(recorder, "values", []) if len(row) > 1 and row[1] is not None]
    return list(range(len(train))), train, list(getattr(recorder, "iters", []))[: len(valid)], valid


@contextmanager
def training_processes(learn: Learner, data) -> Iterator[list[Callback]]:
    """Where ``lr_find`` and ``fit`` run: yields the callbacks a fit adds for the processes it runs in.

    In one process: nothing to do, ``[]``. Under a launcher (``torchrun``, ``accelerate launch``,
    ``geolearn train --nproc``): the process group is joined, the model and data moved to this
    rank's device, the ranks' versions and chips compared, fastai kept blind to the launch
    (:mod:`geolearn.learn.distributed` says why), the standard output of ranks > 0 silenced,
    and ``[DistributedTraining]`` yielded. On the way out ``learn.model`` is the bare network
    again, its BatchNorm layers plain ``nn.BatchNorm2d``, even after an error.

    Raises:
        DistributedSetupError: the other processes are not reached, or differ.
        InvalidArgumentError: ``batch_size`` is smaller than the number of processes.

    Examples:
        See ``RetinaNet.fit`` and ``RetinaNet.lr_find``, which call it.
    """
    if not (distributed.launched() or distributed.active()):
        yield []
        return
    bare = learn.model
    device = distributed.join_process_group(next(bare.parameters()).device)
    if next(bare.parameters()).device != device:
        bare.to(device)
        learn.dls.to(device)
    distributed.check_same_setup(data)
    distributed.training_steps(range(len(data.train_ds)), data.batch_size, distributed.world_size(), 0)  # refused now, not mid-fit
    callback = DistributedTraining(device)
    try:
        with distributed.fastai_single_process(), distributed.quiet_unless_main():
            yield [callback]
    finally:
        callback.restore_batch_norms()  # fastai runs no after_fit after an error
        learn.model = bare
