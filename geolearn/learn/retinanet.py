"""``RetinaNet``: arcgis.learn's model object on a fastai v2 ``Learner`` (CONTRACT §3–4).

The class is an adapter: the network, anchors, loss and post-processing live in
:mod:`geolearn.models`, the metric in :mod:`geolearn.metrics`, training mechanics
in fastai. What this module adds is arcgis.learn's vocabulary (``fit`` with
``checkpoint``/``early_stopping``/``monitor``, ``lr_find`` returning a float,
``average_precision_score``), its defaults, and the choices that make a model
train well from random initialisation on a CPU.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.schedule import valley
from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback
from fastai.learner import Learner
from fastai.optimizer import Adam
from matplotlib.figure import Figure
from torch import Tensor

from geolearn.data.esri import DATASET_TYPES
from geolearn.data.images import read_image_info
from geolearn.errors import GeolearnWarning
from geolearn.learn.evaluation import AveragePrecisionMetric, DetectionSettings, evaluate
from geolearn.learn.precision import precision_callbacks, resolve_precision
from geolearn.metrics import average_precision, mean_average_precision
from geolearn.models.anchors import DEFAULT_RATIOS, DEFAULT_SCALES, make_anchors, suggest_anchors
from geolearn.models.backbones import BACKBONES
from geolearn.models.loss import RetinaNetLoss
from geolearn.models.retinanet import build_retinanet, param_groups
from geolearn.viz import plot_losses, plot_lr_find

__all__ = ["RetinaNet", "suggest_lr"]

logger = logging.getLogger(__name__)



def suggest_lr(lrs: Sequence[float], losses: Sequence[float], valley_lr: float) -> float:
    """The learning rate to train with, from a whole LR range test.

    From random weights the loss of a detector stays flat for most of the range test
    and then shoots up; fastai's ``valley`` then lands anywhere on the flat stretch
    (1e-5 to 1e-4 on the sample scene, far too slow to learn in a few epochs). A tenth
    of the rate at which the loss first exceeds 1.5x its running minimum is the classic
    rule of thumb for such curves; on a curve with a real valley (pretrained backbones)
    the valley is usually higher and wins.

    Args:
        lrs: every rate tried, in order (fastai trims the take-off from what it gives its
            own suggestion functions, so pass the recorder's full lists).
        losses: the smoothed loss at each rate.
        valley_lr: fastai's valley suggestion.
    """
    losses = torch.as_tensor([float(v) for v in losses], dtype=torch.float64)
    running_min = torch.cummin(losses, dim=0).values
    above = torch.nonzero(losses > 1.5 * running_min).flatten()
    if len(above) == 0:
        return valley_lr
    return max(valley_lr, float(lrs[int(above[0])]) / 10)


def _show(figure: Figure) -> None:
    """Displays a figure in Jupyter; elsewhere the caller keeps it (no global pyplot state)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(figure)


class RetinaNet:
    """RetinaNet object detector with arcgis.learn's API.

    Args:
        data: what :func:`geolearn.prepare_data` returned.
        scales: anchor scales (multiples of 4 grid cells); default
            ``[1, 2**(-1/3), 2**(-2/3)]``; ``'auto'`` fits scales and ratios to the
            training boxes (see :meth:`suggest_anchors`).
        ratios: anchor height/width ratios; default ``[0.5, 1, 2]``.
        backbone: ``'resnet18'``, ``'resnet34'``, ``'resnet50'`` (default), ``'resnet101'``,
            ``'resnet152'`` or the torchvision function.
        pretrained_path: a saved model (``.pth``) whose weights are loaded.
        **kwargs: ``pretrained`` (ImageNet weights for the backbone, default True; when
            they cannot be downloaded training starts from random weights with one
            warning), ``mixed_precision`` (None/'auto', True/'bf16', 'fp16', False),
            ``wd`` (weight decay, default 1e-4).

    Example:
        >>> data = prepare_data("chips", chip_size=256, batch_size=16)  # doctest: +SKIP
        >>> model = RetinaNet(data, backbone="resnet18", scales="auto")  # doctest: +SKIP
        >>> model.fit(10)  # doctest: +SKIP
        >>> model.average_precision_score()  # doctest: +SKIP
        {'pool': 0.93, 'tree': 0.88}
    """

    supported_backbones: list[str] = list(BACKBONES)
    supported_datasets: list[str] = list(DATASET_TYPES)
    available_metrics: list[str] = ["valid_loss", "average_precision"]

    def __init__(
        self,
        data,
        scales: Sequence[float] | str | None = None,
        ratios: Sequence[float] | str | None = None,
        backbone: str | Callable | None = None,
        pretrained_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - {"pretrained", "mixed_precision", "wd"}
        if unknown:
            raise TypeError(f"RetinaNet() got unexpected keyword arguments {sorted(unknown)}")
        self._data = data
        if scales == "auto" or ratios == "auto":
            fit = self.suggest_anchors(data)
            scales = fit.scales if scales in (None, "auto") else scales
            ratios = fit.ratios if ratios in (None, "auto") else ratios
        self.scales = [float(s) for s in (scales if scales is not None else DEFAULT_SCALES)]
        self.ratios = [float(r) for r in (ratios if ratios is not None else DEFAULT_RATIOS)]
        self.backbone = backbone if backbone is not None else "resnet50"
        self.mixed_precision = kwargs.get("mixed_precision")
        self.anchors = make_anchors(data.chip_size, self.scales, self.ratios)
        self.model = build_retinanet(
            self.backbone,
            n_classes=data.c - 1,
            n_bands=data.n_bands,
            band_names=data.bands,
            pretrained=kwargs.get("pretrained", True),
            n_anchors=len(self.scales) * len(self.ratios),
        )
        self.loss_func = RetinaNetLoss(self.anchors, n_classes=data.c - 1)
        self._metric = AveragePrecisionMetric(DetectionSettings(self.anchors, data.chip_size))
        self.learn = Learner(
            data,
            self.model,
            loss_func=self.loss_func,
            opt_func=Adam,
            splitter=param_groups,
            metrics=[self._metric],
            wd=kwargs.get("wd", 1e-4),
            path=data.path,
            model_dir="models",
        )
        # With ImageNet weights the backbone starts frozen: only FPN, heads and BatchNorm
        # layers train (arcgis.learn). Freezing random weights would only cripple the
        # model, so without them everything trains from the start.
        if self.model.encoder.pretrained:
            self.learn.freeze()
        else:
            logger.info("backbone has random weights: training all layers from the start")
        self.lr_find_figure: Figure | None = None
        self._lr: float | None = None
        if pretrained_path is not None:
            self.load(pretrained_path)

    def __repr__(self) -> str:
        return f"<RetinaNet backbone={self._backbone_name} classes={self._data.classes[1:]}>"

    @property
    def _backbone_name(self) -> str:
        return self.backbone if isinstance(self.backbone, str) else getattr(self.backbone, "__name__", "custom")

    # ------------------------------------------------------------------ class facts

    @staticmethod
    def backbones() -> list[str]:
        """Names of the supported backbones."""
        return list(BACKBONES)

    @staticmethod
    def suggest_anchors(data, target: float = 0.95):
        """Anchor scales and ratios fitted to ``data``'s training boxes.

        Aerial objects are often far smaller than the default 32 px anchor at the
        finest level; fitted anchors cover at least ``target`` of the training
        boxes with an anchor of IoU >= 0.5 (as far as the boxes allow).

        Returns:
            An ``AnchorFit`` with ``scales``, ``ratios`` and the ``coverage`` they reach.
        """
        boxes = []
        for image, labels in zip(data.train_ds.images, data.train_ds.labels):
            chip_boxes = labels.chip_boxes
            if data.resize_to:
                # Chips are squished to resize_to before cropping (geolearn.data.transforms.resize).
                info = read_image_info(image)
                scale = torch.tensor([data.resize_to / info.width, data.resize_to / info.height] * 2)
                chip_boxes = chip_boxes * scale
            boxes.append(chip_boxes)
        return suggest_anchors(boxes, data.chip_size, target=target)

    # ------------------------------------------------------------------ training

    def _precision_dtype(self, setting: bool | str | None = None) -> torch.dtype | None:
        device = next(self.model.parameters()).device
        return resolve_precision(setting if setting is not None else self.mixed_precision, device)

    def lr_find(self, allow_plot: bool = True, num_it: int = 100) -> float:
        """Runs an LR range test and returns the suggested learning rate.

        The rate rises exponentially from 1e-7 to 10 over ``num_it`` batches (stopping
        when the loss diverges); the suggestion is fastai's "valley" (the middle of
        the longest descending stretch of the loss curve) or, when higher, a tenth of
        the rate where the loss takes off (see :func:`suggest_lr`). The weights
        are restored afterwards.

        Args:
            allow_plot: draw loss against learning rate with the choice marked
                (shown in Jupyter, kept in ``self.lr_find_figure``).
            num_it: batches to try.

        Returns:
            The suggested learning rate.
        """
        self._require_data("lr_find")
        with self.learn.added_cbs(precision_callbacks(self._precision_dtype()) + [ChannelsLast()]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # fastai warns when the loss diverges early: expected here
            suggestion = self.learn.lr_find(num_it=num_it, suggest_funcs=(valley,), show_plot=False)
        recorder = self.learn.recorder
        lrs, losses = recorder.lrs[: len(recorder.losses)], [float(v) for v in recorder.losses]
        lr = suggest_lr(lrs, losses, float(suggestion.valley))
        self.lr_find_figure = plot_lr_find(lrs, losses, lr)
        if allow_plot:
            _show(self.lr_find_figure)
        self._lr = lr
        return lr

    def fit(
        self,
        epochs: int = 10,
        lr: float | slice | None = None,
        one_cycle: bool = True,
        early_stopping: bool = False,
        checkpoint: bool | str = True,
        tensorboard: bool = False,
        monitor: str = "valid_loss",
        mixed_precision: bool | str | None = None,
        **kwargs: Any,
    ) -> None:
        """Trains the model, printing ``epoch train_loss valid_loss average_precision time``.

        Args:
            epochs: passes over the training chips.
            lr: learning rate; a float means ``slice(lr / 10, lr)`` across the three
                parameter groups (backbone stem, backbone top, FPN + heads); None runs
                :meth:`lr_find` first.
            one_cycle: the one-cycle schedule (warm-up then cosine annealing).
            early_stopping: stop when ``monitor`` has not improved by 0.001 for 5 epochs.
            checkpoint: True or ``'best'``: keep the best epoch by ``monitor`` and
                reload it at the end; ``'all'``: save every epoch; False: none. Saved
                under ``<data.path>/models/``.
            tensorboard: log to TensorBoard (needs the ``tensorboard`` package).
            monitor: ``'valid_loss'`` or ``'average_precision'``.
            mixed_precision: None: bfloat16 where the hardware is fast at it
                (AMX/AVX512-BF16 CPUs, recent GPUs), else float32; True/``'bf16'``,
                ``'fp16'`` (CUDA) or False forces it.
            **kwargs: passed to fastai's ``fit_one_cycle``/``fit`` (e.g. ``wd``, ``pct_start``).
        """
        self._require_data("fit")
        if monitor not in self.available_metrics:
            raise ValueError(f"monitor={monitor!r}: choose one of {self.available_metrics}.")
        if checkpoint not in (True, False, "best", "all"):
            raise ValueError(f"checkpoint={checkpoint!r}: use True, False, 'best' or 'all'.")
        if lr is None:
            lr = self.lr_find(allow_plot=False)
            logger.info("lr_find chose %.2e", lr)
        self._lr = lr if isinstance(lr, float) else getattr(lr, "stop", lr)
        lr_arg = slice(lr / 10, lr) if isinstance(lr, (int, float)) else lr
        callbacks = precision_callbacks(self._precision_dtype(mixed_precision)) + [ChannelsLast()]
        if early_stopping:
            callbacks.append(EarlyStoppingCallback(monitor=monitor, min_delta=0.001, patience=5))
        if checkpoint:
            name = f"checkpoint_{datetime.now():%Y-%m-%d_%H-%M-%S}"
            callbacks.append(SaveModelCallback(monitor=monitor, fname=name, every_epoch=checkpoint == "all"))
        if tensorboard:
            callbacks += self._tensorboard_callbacks()
        if one_cycle:
            self.learn.fit_one_cycle(epochs, lr_arg, cbs=callbacks, **kwargs)
        else:
            self.learn.fit(epochs, lr_arg, cbs=callbacks, **kwargs)

    def _tensorboard_callbacks(self) -> list:
        try:
            from fastai.callback.tensorboard import TensorBoardCallback

            import tensorboard  # noqa: F401  (fastai imports it lazily; fail here, clearly)
        except ImportError:
            warnings.warn("tensorboard=True needs the tensorboard package (pip install tensorboard); "
                          "training goes on without it.", GeolearnWarning, stacklevel=3)
            return []
        return [TensorBoardCallback(log_dir=str(Path(self._data.path) / "training_log"), trace_model=False)]

    def unfreeze(self) -> None:
        """Trains all layers from now on, the backbone included."""
        self.learn.unfreeze()

    def plot_losses(self) -> Figure:
        """Training loss per batch and validation loss per epoch of the fits so far."""
        recorder = self.learn.recorder
        train = [float(v) for v in recorder.losses]
        valid = [float(row[1]) for row in recorder.values if len(row) > 1 and row[1] is not None]
        figure = plot_losses(list(range(len(train))), train, list(recorder.iters)[: len(valid)], valid)
        _show(figure)
        return figure

    # ------------------------------------------------------------------ evaluation

    def average_precision_score(
        self,
        detect_thresh: float = 0.5,
        iou_thresh: float = 0.1,
        mean: bool = False,
        show_progress: bool = True,
        nms_overlap: float = 0.1,
    ) -> dict[str, float] | float:
        """Average precision per class on the validation chips (CONTRACT §5).

        Args:
            detect_thresh: minimum score of a detection.
            iou_thresh: IoU a detection needs with a ground-truth box of its class
                (0.1 as in arcgis.learn; 0.5 for the PASCAL VOC standard).
            mean: return the unweighted mean over classes instead of the dict.
            show_progress: show a progress bar.
            nms_overlap: NMS overlap applied to detections before scoring.

        Returns:
            ``{class name: AP}`` for classes with ground truth, or their mean.
        """
        self._require_data("average_precision_score")
        settings = DetectionSettings(self.anchors, self._data.chip_size, detect_thresh, nms_overlap, iou_thresh)
        predictions, targets = evaluate(self.model, self._data.valid, settings, self._precision_dtype(), show_progress)
        ap = average_precision(predictions, targets, iou_thresh=iou_thresh)
        if mean:
            return mean_average_precision(ap)
        return {self._data.classes[index]: value for index, value in sorted(ap.items())}

    # ------------------------------------------------------------------ weights

    def load(self, name_or_path: str | Path) -> None:
        """Loads weights: a model name under ``<data.path>/models/`` or a ``.pth`` path.

        Accepts a plain state_dict or ``{'model': ..., 'opt': ...}`` (the two forms
        arcgis.learn saves). Loading is safe (``weights_only=True``).
        """
        path = Path(name_or_path)
        if path.suffix != ".pth":
            path = Path(self._data.path) / "models" / path.name / f"{path.name}.pth"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such model weights file; give a .pth path or a saved model's name.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and set(state) == {"model", "opt"}:
            state = state["model"]
        self.model.load_state_dict(state, strict=True)

    def _require_data(self, what: str) -> None:
        if self._data is None:
            raise RuntimeError(f"{what}() needs training data: create the model with RetinaNet(data) or "
                               f"RetinaNet.from_model(emd_path, data=prepare_data(...)).")
