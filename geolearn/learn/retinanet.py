"""``RetinaNet``: arcgis.learn's model object on a fastai v2 ``Learner`` (CONTRACT §3–4).

The class is an adapter: the network, anchors, loss and post-processing live in
:mod:`geolearn.models`, the metric in :mod:`geolearn.metrics`, training mechanics
in fastai and :mod:`geolearn.learn.training`, running over imagery in :mod:`geolearn.inference`.
What this module adds is arcgis.learn's vocabulary (``fit`` with
``checkpoint``/``early_stopping``/``monitor``, ``lr_find`` returning a float,
``average_precision_score``), its defaults, and the choices that make a model
train well from random initialisation on a CPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import geopandas as gpd
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from geolearn.checks import learning_rate, whole_number
from geolearn.data.esri import DATASET_TYPES
from geolearn.errors import InvalidArgumentError, ModelDefinitionError
from geolearn.inference.defaults import MERGE, NMS_OVERLAP, THRESHOLD, MergeMethod
from geolearn.inference.predict import detect_with_model, image_pixels, predict_image
from geolearn.learn import distributed
from geolearn.learn.evaluation import DetectionSettings, evaluate, first_chips
from geolearn.learn.lr_rule import suggest_lr
from geolearn.learn.network_files import onnx_network, raster_function_network, traced_network, write_onnx
from geolearn.learn.config import ModelConfig
from geolearn.learn.emd import read_emd
from geolearn.learn.package import load_fitting_state_dict, load_state_dict, resolve_model, save_package, weights_file
from geolearn.models.precision import resolve_precision
from geolearn.metrics import average_precision, mean_average_precision
from geolearn.models.anchors import make_anchors, suggest_anchors
from geolearn.models.backbones import BACKBONES
from geolearn.models.loss import RetinaNetLoss
from geolearn.models.retinanet import build_retinanet
from geolearn.viz import (plot_detections, plot_ground_truth_and_predictions, plot_losses, plot_lr_find,
                          resolve_rgb_bands, show_figure)

# fastai (and geolearn.learn.callbacks, built on it) is imported inside the training methods only:
# a model that only predicts (from_model + predict/detect_objects, e.g. on Dask workers) then
# never loads it, which saves about 100 MiB of memory and a second of start-up.

__all__ = ["RetinaNet"]

logger = logging.getLogger(__name__)


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

    Examples:
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
        if not hasattr(data, "class_mapping"):
            raise InvalidArgumentError(
                f"data={data!r}: RetinaNet takes what prepare_data returns. Call data = prepare_data(folder) "
                "first, or RetinaNet.from_model(path) to load a saved model."
            )
        if scales == "auto" or ratios == "auto":
            fit = self.suggest_anchors(data)
            scales = fit.scales if scales in (None, "auto") else scales
            ratios = fit.ratios if ratios in (None, "auto") else ratios
        self._build(ModelConfig.from_data(data, backbone=backbone, scales=scales, ratios=ratios),
                    pretrained=kwargs.get("pretrained", True))
        self.mixed_precision = kwargs.get("mixed_precision")
        self._attach_data(data, wd=kwargs.get("wd", 1e-4))
        if pretrained_path is not None:
            self.load(pretrained_path)

    @classmethod
    def from_config(cls, config: ModelConfig, *, weights: dict[str, Tensor] | None = None) -> "RetinaNet":
        """A model built from its configuration alone, without training data.

        Args:
            config: what the model is (:class:`~geolearn.learn.config.ModelConfig`).
            weights: a state_dict for the network; None: random weights (no ImageNet
                download). Keyword only.

        Returns:
            A model that predicts, detects and saves; ``fit``/``lr_find`` need data
            (:meth:`from_model` with ``data=``).

        Examples:
            >>> config = ModelConfig.from_emd("models/trees")  # doctest: +SKIP
            >>> model = RetinaNet.from_config(config.replace(chip_size=512))  # doctest: +SKIP
        """
        model = cls.__new__(cls)
        model._build(config, pretrained=False, weights=weights)
        model.mixed_precision = None
        model._learned_weights = weights is not None
        return model

    def _build(self, config: ModelConfig, *, pretrained: bool, weights: dict[str, Tensor] | None = None) -> None:
        """Builds network, anchors and loss from the model's configuration.

        ``weights`` (a state_dict) become the network's parameters, in place of random ones.
        """
        self._config = config
        self._data = None
        self.learn = None
        self.anchors = make_anchors(config.chip_size, config.scales, config.ratios)
        self.model = build_retinanet(
            config.backbone,
            n_classes=len(config.class_infos),
            n_bands=config.n_bands,
            band_names=list(config.band_names) if config.band_names is not None else None,
            pretrained=pretrained,
            n_anchors=len(config.scales) * len(config.ratios),
            weights=weights,
        )
        self.loss_func = RetinaNetLoss(self.anchors, n_classes=len(config.class_infos))
        self.lr_find_figure: Figure | None = None
        # Whether the weights were loaded from a saved model (then the backbone's features are worth keeping).
        self._learned_weights = False

    def _attach_data(self, data, wd: float = 1e-4) -> None:
        """Wraps the network in a fastai Learner over ``data`` (what fit, lr_find and the metric need)."""
        from geolearn.learn.callbacks import AveragePrecisionMetric
        from geolearn.learn.training import make_learner

        if data.classes != self._config.classes:
            raise ValueError(
                f"the data's classes {data.classes} differ from the model's {self._config.classes}; "
                "prepare the data with the classes the model was trained on (class_mapping=...)."
            )
        self._data = data
        self._metric = AveragePrecisionMetric(DetectionSettings(self.anchors, self._config.chip_size))
        self.learn = make_learner(data, self.model, self.loss_func, self._metric, wd)

    def __repr__(self) -> str:
        return f"<RetinaNet backbone={self._config.backbone_name} classes={self._config.classes[1:]}>"

    @property
    def config(self) -> ModelConfig:
        """What the model is besides its weights (:class:`~geolearn.learn.config.ModelConfig`);
        ``fit`` records its learning rate and score threshold there."""
        return self._config

    @property
    def backbone(self) -> str | Callable:
        """The backbone's name (or torchvision function)."""
        return self._config.backbone

    @property
    def scales(self) -> list[float]:
        """Anchor scales (multiples of 4 grid cells)."""
        return list(self._config.scales)

    @property
    def ratios(self) -> list[float]:
        """Anchor height/width ratios."""
        return list(self._config.ratios)

    # ------------------------------------------------------------------ class facts

    @staticmethod
    def backbones() -> list[str]:
        """Names of the supported backbones.

        Examples:
            >>> RetinaNet.backbones()
            ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152']
        """
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
        from geolearn.learn.training import training_boxes

        return suggest_anchors(training_boxes(data), data.chip_size, target=target)

    # ------------------------------------------------------------------ training

    def _precision_dtype(self, setting: bool | str | None = None) -> torch.dtype | None:
        device = next(self.model.parameters()).device
        return resolve_precision(setting if setting is not None else self.mixed_precision, device)

    def lr_find(self, allow_plot: bool = True, num_it: int = 100) -> float:
        """Runs an LR range test and returns the suggested learning rate.

        The rate rises exponentially from 1e-7 to 10 over ``num_it`` batches (stopping
        when the loss diverges); the suggestion is fastai's "valley" (the middle of
        the longest descending stretch of the loss curve) or, when higher, a fraction of
        the rate where the loss takes off (see :func:`suggest_lr`). The weights
        are restored afterwards.

        Args:
            allow_plot: draw loss against learning rate with the choice marked
                (shown in Jupyter, kept in ``self.lr_find_figure``).
            num_it: batches to try.

        Returns:
            The suggested learning rate.
        """
        from geolearn.learn.training import range_test, training_processes

        self._require_data("lr_find")
        with training_processes(self.learn, self._data):  # under a launcher each rank tests; rank 0's choice holds
            lrs, losses, valley = range_test(self.learn, self._precision_dtype(), num_it)
        lr = distributed.broadcast_from_main(suggest_lr(lrs, losses, valley))
        self.lr_find_figure = plot_lr_find(lrs, losses, lr)
        if allow_plot:
            show_figure(self.lr_find_figure)
        self._config = self._config.replace(learning_rate=float(lr))
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
        time_budget: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Trains the model, printing ``epoch train_loss valid_loss average_precision time``.

        Args:
            epochs: passes over the training chips.
            lr: learning rate; a float means ``slice(lr / 10, lr)`` across the three
                parameter groups (backbone stem, backbone top, FPN + heads) when the backbone
                has learned weights (ImageNet or a loaded model), and ``lr`` for every group
                when it starts from random weights; a slice is used as given; None runs
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
            time_budget: seconds of wall-clock time ``fit`` may take (an ``lr_find`` it runs
                included, the closing validation pass that sets :attr:`threshold` not), or None. The schedule then runs by time: it completes when the
                budget or ``epochs`` runs out, whichever comes first, so ``fit(100,
                time_budget=900)`` trains for 15 minutes with a full one-cycle schedule
                (:class:`~geolearn.learn.callbacks.TimeBudget`).
            **kwargs: passed to fastai's ``fit_one_cycle``/``fit`` (e.g. ``wd``, ``pct_start``).

        After training (and the reload of the best checkpoint), one more pass over the
        validation chips sets :attr:`threshold`, the score cut ``detect_objects`` uses.
        """
        from geolearn.learn.training import calibrate_threshold, check_fit_options, fit_callbacks, training_processes

        self._require_data("fit")
        epochs = whole_number("epochs", epochs, example="10")
        learning_rate(lr)
        checkpoint = check_fit_options(time_budget=time_budget, monitor=monitor, metrics=self.available_metrics,
                                       checkpoint=checkpoint, early_stopping=early_stopping,
                                       has_validation=len(self._data.valid_ds) > 0)
        started = time.perf_counter()
        with training_processes(self.learn, self._data) as processes:  # [] in one process; see training.py
            if lr is None:
                lr = self.lr_find(allow_plot=False)
                logger.info("lr_find chose %.2e", lr)
            top = lr if isinstance(lr, (int, float)) else getattr(lr, "stop", None)
            self._config = self._config.replace(learning_rate=float(top) if top is not None else None)
            callbacks = processes + fit_callbacks(
                self._precision_dtype(mixed_precision), early_stopping=early_stopping, checkpoint=checkpoint,
                monitor=monitor, tensorboard_dir=Path(self._data.path) / "training_log" if tensorboard else None,
                seconds_left=None if time_budget is None else time_budget - (time.perf_counter() - started),
            )
            train = self.learn.fit_one_cycle if one_cycle else self.learn.fit
            train(epochs, self._group_rates(lr), cbs=callbacks, **kwargs)
        # One more pass over the validation chips: the score cut detect_objects uses (training.calibrate_threshold).
        cut = calibrate_threshold(self.model, self._data.valid, self.anchors, self._config.chip_size,
                                  self._precision_dtype())
        self._config = self._config.replace(threshold=cut)

    @property
    def threshold(self) -> float:
        """The score threshold ``detect_objects`` applies when given none, 0–1.

        ``fit`` sets it to the score of best F1 on the validation chips (matched at IoU 0.5,
        every class pooled, see :func:`~geolearn.learn.training.calibrate_threshold`), and ``save`` writes it into the
        EMD, so a loaded model keeps it. A model that was never fitted by geolearn (or whose
        fit found nothing on the validation chips) has arcgis.learn's 0.5. Set it to choose
        another.
        """
        return self._config.score_threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"threshold={value!r}: give a score between 0 and 1, e.g. 0.3.")
        self._config = self._config.replace(threshold=float(value))

    def _group_rates(self, lr: float | slice) -> float | slice:
        """The three parameter groups' rates: a slice once the backbone has learned features."""
        from geolearn.learn.training import group_rates

        return group_rates(lr, learned_features=self.model.encoder.pretrained or self._learned_weights)

    def unfreeze(self) -> None:
        """Trains all layers from now on, the backbone included."""
        self.learn.unfreeze()

    def plot_losses(self) -> Figure:
        """Training loss per batch and validation loss per epoch of the last fit."""
        figure = self._losses_figure()
        show_figure(figure)
        return figure

    def _losses_figure(self) -> Figure:
        from geolearn.learn.training import recorded_losses

        return plot_losses(*recorded_losses(self.learn.recorder))

    # ------------------------------------------------------------------ evaluation

    def average_precision_score(
        self,
        detect_thresh: float = 0.5,
        iou_thresh: float = 0.1,
        mean: bool = False,
        show_progress: bool = True,
        nms_overlap: float = NMS_OVERLAP,
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
        self._require_data("average_precision_score", validation=True)
        settings = DetectionSettings(self.anchors, self._config.chip_size, detect_thresh, nms_overlap, iou_thresh)
        predictions, targets = evaluate(self.model, self._data.valid, settings, self._precision_dtype(), show_progress)
        ap = average_precision(predictions, targets, iou_thresh=iou_thresh)
        if mean:
            return mean_average_precision(ap)
        return {self._config.classes[index]: value for index, value in sorted(ap.items())}

    # ------------------------------------------------------------------ weights and packages

    def _models_folder(self) -> Path:
        if self._data is None:
            raise RuntimeError("a model without data has no models folder: give save()/load() a path.")
        return Path(self._data.path) / "models"

    def load(self, name_or_path: str | Path) -> None:
        """Loads weights into this model.

        Args:
            name_or_path: a model name saved under ``<data.path>/models/<name>/``, a ``.pth``
                file, an ``.emd``, a folder holding one ``.emd``, or a ``.dlpk``. A ``.pth``
                may be a plain state_dict or ``{'model': ..., 'opt': ...}`` (the two forms
                arcgis.learn saves); loading is safe (``weights_only=True``).
        """
        path = Path(name_or_path)
        named = not (path.suffix in (".pth", ".emd", ".dlpk") or path.is_dir())  # a name under models/
        weights = weights_file(path, self._models_folder() if named else None)
        state = load_fitting_state_dict(weights, self.model.state_dict(), f"this model is {self._config.network_summary}")
        self.model.load_state_dict(state, strict=True)
        self._learned_weights = True

    @classmethod
    def from_model(cls, emd_path: str | Path, data=None) -> "RetinaNet":
        """A model from a saved package (geolearn's or arcgis.learn's).

        Args:
            emd_path: an ``.emd``, a folder holding one ``.emd``, or a ``.dlpk``.
            data: ``prepare_data`` output to go on training or evaluating; None gives a
                model that predicts and saves, while ``fit``/``lr_find``/
                ``average_precision_score`` raise a clear error.
        """
        definition = read_emd(resolve_model(Path(emd_path))[0])
        try:
            model = cls.from_config(definition.config, weights=load_state_dict(definition.model_file))
        except ValueError as error:  # check_weights_fit's one line, with both files named
            raise ModelDefinitionError(f"{definition.model_file}: {error}; {definition.path} describes "
                                       f"{definition.config.network_summary}. Give the .pth saved with this EMD.") from None
        if data is not None:
            model._attach_data(data)
        return model

    def save(
        self,
        name_or_path: str | Path,
        framework: str = "PyTorch",
        publish: bool = False,
        gis: Any = None,
        compute_metrics: bool = True,
        save_optimizer: bool = False,
        save_inference_file: bool = True,
    ) -> Path:
        """Saves the model package: ``<name>.pth``, ``<name>.emd``, metrics page, figures, ``<name>.dlpk``.

        Every package also holds the raster function ArcGIS Pro and Image Server run,
        ``GeolearnObjectDetector.py``, and its network ``<name>_detector.pt`` (TorchScript with
        the normalisation, zoom and box decoding inside): see docs/model-packages.md.

        Args:
            name_or_path: a name (saved in ``<data.path>/models/<name>/``) or a folder path.
            framework: ``'PyTorch'``; ``'torchscript'`` to add ``<name>.pt``, the bare network
                traced for the training chip size (loads with ``torch.jit.load`` without
                geolearn); ``'onnx'`` to add ``<name>.onnx`` (needs ``geolearn[onnx]``), which
                ONNX Runtime and the QGIS Deepness plugin run (:meth:`export_onnx`).
            publish: publishing to ArcGIS Online/Enterprise is outside geolearn (must be False).
            gis: accepted for arcgis.learn compatibility (must be None).
            compute_metrics: compute the validation AP per class into the EMD (needs data).
            save_optimizer: also save the optimizer state (``{'model', 'opt'}`` in the .pth).
            save_inference_file: accepted for arcgis.learn compatibility; every geolearn
                package carries its raster function.

        Returns:
            The package folder.
        """
        if publish or gis is not None:
            raise NotImplementedError("publish=True / gis= upload to ArcGIS Online or Enterprise, which is outside "
                                      "geolearn: share the saved .dlpk instead.")
        if framework.lower() not in ("pytorch", "torchscript", "onnx"):
            raise NotImplementedError(f"framework={framework!r}: geolearn saves 'PyTorch', 'torchscript' and 'onnx' "
                                      "packages.")
        path = Path(name_or_path)
        folder = path if (path.is_absolute() or len(path.parts) > 1) else self._models_folder() / path.name
        name = folder.name
        average_precision = None
        figures = {}
        if self._data is not None:
            validation = len(self._data.valid_ds) > 0  # without validation chips: no AP, no results figure
            if compute_metrics and validation:
                average_precision = self.average_precision_score(show_progress=False)
            if getattr(self.learn.recorder, "losses", None):  # set once fit has run
                figures["loss_graph"] = self._losses_figure()
            if validation:
                figures["show_results"] = self._results_figure(rows=3, thresh=0.3, nms_overlap=NMS_OVERLAP)
        emd = self._config.to_emd(f"{name}.pth", average_precision=average_precision,
                                  network_script=f"{name}_detector.pt")
        optimizer = None
        if save_optimizer and self.learn is not None and self.learn.opt is not None:
            optimizer = self.learn.opt.state_dict()
        extra_files = {f"{name}_detector.pt": raster_function_network(self.model, self._config, self.anchors)}
        if framework.lower() == "torchscript":
            extra_files[f"{name}.pt"] = traced_network(self.model, self._config)
        if framework.lower() == "onnx":
            extra_files[f"{name}.onnx"] = onnx_network(self.model, self._config, self.anchors, self.threshold)
        return save_package(folder, name, state_dict=self.model.state_dict(), emd=emd, optimizer_state=optimizer,
                            figures=figures, extra_files=extra_files)

    def export_onnx(self, path: str | Path, *, threshold: float | None = None, nms_overlap: float = NMS_OVERLAP,
                    overwrite: bool = False) -> Path:
        """Writes the network as an ONNX file for ONNX Runtime and the QGIS Deepness plugin.

        Input ``images``: normalised chips, float32 ``[batch, bands, chip_size, chip_size]``
        (raw pixels scaled and standardised as the model's ``normalization`` says). Output
        ``detections``: float32 ``[batch, 4 + C, A]``, one column per anchor: the box centre
        and size in input pixels (``cx, cy, w, h``), then the C class scores (sigmoid), not
        thresholded or suppressed: the layout Ultralytics' YOLO exports. The ONNX metadata
        holds what Deepness reads (``model_type``, ``det_type``, ``class_names``,
        ``tiles_size``, ``tiles_overlap``, ``det_conf``, ``det_iou_thresh``, the
        standardisation and ``resolution``) and a ``geolearn`` entry with the model's facts.

        Args:
            path: the ``.onnx`` file to write.
            threshold: ``det_conf`` for Deepness; None: the model's :attr:`threshold`. Keyword only.
            nms_overlap: ``det_iou_thresh`` for Deepness. Default 0.1.
            overwrite: replace an existing file.

        Returns:
            The path written.

        Raises:
            ImportError: the ``onnx`` package is missing (``pip install 'geolearn[onnx]'``).
            OutputExistsError: ``path`` exists and ``overwrite`` is False.
        """
        return write_onnx(path, self.model, self._config, self.anchors, self.threshold if threshold is None else threshold,
                          nms_overlap, overwrite=overwrite)

    # ------------------------------------------------------------------ prediction

    def predict(
        self,
        image_path: str | Path | np.ndarray,
        threshold: float = THRESHOLD,
        nms_overlap: float = NMS_OVERLAP,
        return_scores: bool = True,
        visualize: bool = False,
        resize: bool = False,
        batch_size: int = 1,
        test_time_augmentation: bool = False,
        compiled: bool = False,
    ):
        """Detects objects in one image of any size.

        Images larger than the chip are covered by overlapping chips run in batches;
        an object on a seam between chips is reported once, with its whole box. A model
        trained on enlarged chips (``prepare_data(..., resize_to=...)``) sees the image enlarged
        by the same factor (its ``zoom``); the boxes are in the image's pixels all the same.

        Args:
            image_path: a file rasterio reads (GeoTIFF, PNG, JPEG, ...) or an ``[H, W, C]`` array.
            threshold: minimum score.
            nms_overlap: IoU above which the weaker of two detections of a class is dropped.
            return_scores: also return the scores.
            visualize: draw the detections (shown in Jupyter, kept in ``self.predict_figure``).
            resize: squish the whole image to the chip size first (boxes are scaled back).
            batch_size: chips per forward pass.
            test_time_augmentation: look at each chip in its 8 orientations (turned and
                mirrored) and fuse what they find: steadier boxes and scores, 8 times the time.
            compiled: run the network compiled by ``torch.compile`` (see :meth:`detect_objects`).

        Returns:
            ``(boxes, labels, scores)`` — boxes as ``[xmin, ymin, width, height]`` in image
            pixels, labels as class names — or ``(boxes, labels)``.
        """
        pixels = image_pixels(image_path, self._config)
        found = predict_image(self.model, self._config, self.anchors, pixels, threshold=threshold,
                              nms_overlap=nms_overlap, resize=resize, batch_size=batch_size,
                              autocast_dtype=self._precision_dtype(), test_time_augmentation=test_time_augmentation,
                              compiled=compiled)
        image_boxes = found.image_boxes
        if visualize:
            self.predict_figure = plot_detections(self._config.normalization.scale(pixels)[self._rgb_bands()],
                                                  image_boxes, found.labels, found.scores, self._config.classes,
                                                  self._class_colors())
            show_figure(self.predict_figure)
        boxes = torch.cat([image_boxes[:, :2], image_boxes[:, 2:] - image_boxes[:, :2]], dim=1).tolist()
        labels = [self._config.classes[i] for i in found.labels.tolist()]
        if return_scores:
            return boxes, labels, found.scores.tolist()
        return boxes, labels

    def detect_objects(
        self,
        raster: str | Path,
        out_path: str | Path | None = None,
        *,
        threshold: float | None = None,
        nms_overlap: float = NMS_OVERLAP,
        padding: int | None = None,
        batch_size: int | None = None,
        exclude_pad_detections: bool = True,
        merge: MergeMethod = MERGE,
        class_agnostic: bool = False,
        bands: Sequence[int] | None = None,
        progress: bool = True,
        overwrite: bool = False,
        test_time_augmentation: bool = False,
        compiled: bool = False,
    ) -> gpd.GeoDataFrame:
        """Detects objects over a whole raster of any size; georeferenced polygons, like ArcGIS's tool.

        The raster is read window by window (chip-sized windows overlapping by ``2 · padding``
        pixels; for a model trained on enlarged chips, windows of the chip size divided by its
        ``zoom``, enlarged to the chip size) in a background thread, never whole; windows with no
        valid pixel are skipped without inference; the model's normalisation is applied, and the network runs in batches,
        channels_last, under ``torch.inference_mode()`` and, where the CPU or GPU has fast
        bfloat16, autocast. An object cut by a window edge is reported by the window that sees it
        whole (``exclude_pad_detections``), and all windows' detections are merged once. Boxes
        reach map coordinates through the raster's affine at their pixel edges, unrounded
        (:func:`~geolearn.inference.predict.detect_raster_objects`,
        :func:`~geolearn.data.georef.detections_frame`).

        Args:
            raster: the raster (GeoTIFF, COG, VRT, ... anything rasterio opens), with the bands
                the model was trained on.
            out_path: where to write the features: ``.gpkg`` (GeoPackage), ``.geojson``,
                ``.shp`` or ``.parquet`` (GeoParquet, needs pyarrow); None writes nothing.
            threshold: lowest confidence reported, 0–1; None: the model's :attr:`threshold`
                (calibrated by ``fit``, else 0.5).
            nms_overlap: IoU above which two detections are one object (intersection over the
                smaller box for ``merge='greedy'``).
            padding: pixels of context on each side of a window, arcgis.learn's meaning:
                adjacent windows overlap by ``2 · padding``; ``chip_size // 8`` when None.
            batch_size: windows per forward pass; None: 2 when the model is on the CPU, 8 on a GPU
                (:func:`~geolearn.inference.defaults.default_batch_size` says why).
            exclude_pad_detections: drop a detection cut by a window edge when the neighbouring
                window sees the object whole; False leaves such pieces to the merge.
            merge: ``'nms'`` (keep the best of overlapping boxes) or ``'greedy'`` (join pieces of
                an object larger than the overlap into one box).
            class_agnostic: merge across classes (one box per object even when two classes fire).
            bands: 0-based raster bands to feed the model; None: the model's ``ExtractBands``,
                else all bands.
            progress: show a progress bar over the windows.
            overwrite: replace an existing ``out_path``.
            test_time_augmentation: look at each window in its 8 orientations (turned and
                mirrored) and fuse what they find (:mod:`geolearn.models.tta`): 8 times the time.
            compiled: run the network compiled by ``torch.compile`` (:mod:`geolearn.models.compiled`):
                compiling takes 10–60 s (less from its disk cache), so it pays on large rasters
                only; where it fails, a warning, and the network runs as it is.

        Returns:
            ``GeoDataFrame`` in the raster's CRS: ``Class`` (class name), ``Confidence``
            (score × 100) and polygon ``geometry``, best first.

        Raises:
            BandMismatchError: the raster's bands (or ``bands``) do not fit the model.
            OutputExistsError: ``out_path`` exists and ``overwrite`` is False (checked first).
            ValueError: ``padding`` outside ``[0, chip_size / 2)``, an unknown suffix or ``merge``.
            ImageReadError: the raster cannot be opened or read.
        """
        return detect_with_model(
            self, raster, out_path, threshold=threshold, nms_overlap=nms_overlap, padding=padding,
            batch_size=batch_size, exclude_pad_detections=exclude_pad_detections, merge=merge,
            class_agnostic=class_agnostic, bands=bands, progress=progress, overwrite=overwrite,
            test_time_augmentation=test_time_augmentation, compiled=compiled)

    def _rgb_bands(self) -> list[int]:
        if self._data is not None:
            return list(self._data.rgb_bands)
        return resolve_rgb_bands(None, self._config.band_names, self._config.n_bands)

    def _class_colors(self) -> list[tuple[float, float, float]]:
        return [(0.5, 0.5, 0.5)] + [tuple(c / 255 for c in info.color) for info in self._config.class_infos]

    def show_results(self, rows: int = 5, thresh: float = 0.3, nms_overlap: float = NMS_OVERLAP, **kwargs: Any) -> Figure:
        """Validation chips: ground truth on the left, predictions (with scores) on the right.

        Args:
            rows: chips to show.
            thresh: minimum score of a shown prediction.
            nms_overlap: NMS overlap for the predictions.
            **kwargs: ``rgb_bands`` (bands to draw).

        Returns:
            The Figure (shown in Jupyter).
        """
        self._require_data("show_results", validation=True)
        figure = self._results_figure(rows, thresh, nms_overlap, kwargs.get("rgb_bands"))
        show_figure(figure)
        return figure

    def _results_figure(self, rows: int, thresh: float, nms_overlap: float, rgb_bands=None) -> Figure:
        settings = DetectionSettings(self.anchors, self._config.chip_size, thresh, nms_overlap)
        images, predictions, targets = first_chips(self.model, self._data.valid, settings, self._precision_dtype(), rows)
        rgb = list(rgb_bands) if rgb_bands is not None else self._rgb_bands()
        return plot_ground_truth_and_predictions([image[rgb] for image in images], targets, predictions,
                                                 self._config.classes, self._class_colors())

    def _require_data(self, what: str, validation: bool = False) -> None:
        if self._data is None:
            raise RuntimeError(f"{what}() needs training data: create the model with RetinaNet(data) or "
                               f"RetinaNet.from_model(emd_path, data=prepare_data(...)).")
        if validation and len(self._data.valid_ds) == 0:
            raise RuntimeError(f"{what}() works on the validation chips, and the data has none: prepare_data with "
                               "val_split_pct=0.1 (say), or valid_path=<a folder of chips>.")
