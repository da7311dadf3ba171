"""``ModelConfig``: everything that describes a model besides its weights, in one place.

A trained detector is its weights plus what they mean: the classes it finds, the bands it reads
and how their pixels are scaled, the chip size and zoom it saw in training, its backbone and
anchors, where its training imagery lay, and what training chose (learning rate, score
threshold). :class:`~geolearn.learn.retinanet.RetinaNet` holds one :class:`ModelConfig`;
:meth:`ModelConfig.from_data` describes what ``prepare_data`` returned, and
:meth:`~ModelConfig.to_emd` / :meth:`~ModelConfig.from_emd` are its file form, the model
definition (``.emd``), written and read by :mod:`geolearn.learn.emd` (arcgis.learn's spellings,
validation, defaults for arcgis.learn's own files).

A configuration is checked when it is made: a value no network or EMD could use (a chip size of
0, a negative anchor scale, a threshold of 1.2, statistics for the wrong number of bands) is a
``ValueError`` naming the field, here, and not a failure later in training or in ArcGIS Pro.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from geolearn.data.esri import ClassInfo
from geolearn.data.normalization import Normalization
from geolearn.inference.defaults import THRESHOLD
from geolearn.models.anchors import DEFAULT_RATIOS, DEFAULT_SCALES

__all__ = ["ModelConfig", "DEFAULT_BACKBONE"]

DEFAULT_BACKBONE = "resnet50"  # arcgis.learn's RetinaNet default, also for EMDs that name none


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What a model is, besides its weights: enough to rebuild its network and run it.

    Attributes:
        class_infos: value, name and colour of each object class, in the order of the
            network's outputs (background not included).
        chip_size: side of the training chips the network saw, pixels.
        normalization: how raw pixels become network inputs.
        n_bands: bands the network takes.
        band_names: their names, when known.
        extract_bands: 0-based bands taken from an image (None: all).
        resize_to: side chips were squished to before cropping, or None.
        zoom: network pixels per imagery pixel: ``resize_to`` over the side of the exported
            chips, 1.0 without ``resize_to``. ``predict`` and ``detect_objects`` enlarge the
            imagery by it, so that objects appear as large as in training.
        cell_size: ground sample distance of the training imagery (a number or Esri's
            ``{x, y, spatialReference}``), when known.
        crs_wkt: CRS of the training imagery, when known.
        backbone: backbone name (or the torchvision function of a custom one).
        scales: anchor sizes relative to 4 grid cells.
        ratios: anchor height/width ratios.
        learning_rate: the (last) learning rate training used, when known.
        threshold: the detection score threshold ``fit`` calibrated, or None (then 0.5).

    Examples:
        >>> from geolearn.data.esri import ClassInfo
        >>> config = ModelConfig(class_infos=(ClassInfo(1, "tree", (0, 168, 132)),), chip_size=256,
        ...                      normalization=Normalization.for_rgb8(), n_bands=3, backbone="resnet18")
        >>> config.classes, config.scales == DEFAULT_SCALES
        (['background', 'tree'], True)
        >>> emd = config.to_emd("trees.pth")
        >>> emd["ModelParameters"]["backbone"], emd["ImageHeight"], emd["ExtractBands"]
        ('resnet18', 256, [0, 1, 2])
    """

    class_infos: tuple[ClassInfo, ...]
    chip_size: int
    normalization: Normalization
    n_bands: int
    band_names: tuple[str, ...] | None = None
    extract_bands: tuple[int, ...] | None = None
    resize_to: int | None = None
    zoom: float = 1.0
    cell_size: Any = None
    crs_wkt: str | None = None
    backbone: str | Callable = DEFAULT_BACKBONE
    scales: tuple[float, ...] = DEFAULT_SCALES
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    learning_rate: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        # Sequences become tuples (the config is frozen and compares by value), numbers floats.
        set_field = object.__setattr__  # the documented way to normalise fields of a frozen dataclass
        set_field(self, "class_infos", tuple(self.class_infos))
        set_field(self, "scales", _positive_numbers(self.scales, "scales"))
        set_field(self, "ratios", _positive_numbers(self.ratios, "ratios"))
        for name in ("band_names", "extract_bands"):
            if getattr(self, name) is not None:
                set_field(self, name, tuple(getattr(self, name)))
        self._check()
        set_field(self, "zoom", float(self.zoom))

    def _check(self) -> None:
        """Raises ValueError for a value no network or EMD could use, naming the field and the fix."""
        if isinstance(self.chip_size, bool) or not isinstance(self.chip_size, int) or self.chip_size <= 0:
            raise ValueError(f"chip_size={self.chip_size!r}: give the training chips' side in pixels (a positive int).")
        if not self.class_infos or not all(isinstance(c, ClassInfo) for c in self.class_infos):
            raise ValueError(f"classes={list(self.class_infos)!r}: give a non-empty list of ClassInfo (value, name, color).")
        if self.extract_bands is not None and (
                not self.extract_bands or not all(isinstance(b, int) and b >= 0 for b in self.extract_bands)):
            raise ValueError(f"extract_bands={list(self.extract_bands)!r}: give 0-based band indices, e.g. [0, 1, 2].")
        if not isinstance(self.normalization, Normalization):
            raise ValueError(f"normalization={self.normalization!r}: give the data's Normalization "
                             "(prepare_data computes it; Normalization.for_rgb8() for 8-bit RGB).")
        if self.normalization.n_bands != self.n_bands:
            raise ValueError(f"normalization has {self.normalization.n_bands} bands, the model reads "
                             f"{self.n_bands}: pass the data's own.")
        if isinstance(self.zoom, bool) or not isinstance(self.zoom, (int, float)) or not 0 < self.zoom < math.inf:
            raise ValueError(f"zoom={self.zoom!r}: network pixels per imagery pixel, a number > 0 (1.0 without resize_to).")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold!r}: a detection score between 0 and 1, or None.")

    @property
    def classes(self) -> list[str]:
        """``['background', *names]``: arcgis.learn's ``data.classes``, the network's output order."""
        return ["background", *(c.name for c in self.class_infos)]

    @property
    def network_summary(self) -> str:
        """The network in words, for error messages: ``'a resnet18 with 2 classes and 9 anchors per cell'``."""
        return (f"a {self.backbone_name} with {len(self.class_infos)} classes and "
                f"{len(self.scales) * len(self.ratios)} anchors per cell")

    @property
    def backbone_name(self) -> str:
        """The backbone's name, also for a custom torchvision function."""
        return self.backbone if isinstance(self.backbone, str) else getattr(self.backbone, "__name__", "custom")

    @property
    def score_threshold(self) -> float:
        """The score cut detection applies when given none: :attr:`threshold`, else 0.5 (arcgis.learn's)."""
        return self.threshold if self.threshold is not None else THRESHOLD

    @property
    def window_size(self) -> int:
        """Side of the imagery window one network chip covers, in raster pixels (``chip_size / zoom``)."""
        return round(self.chip_size / self.zoom)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes`` (the learning rate and threshold training sets, for instance)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ from the data

    @classmethod
    def from_data(cls, data, *, backbone: str | Callable | None = None, scales: Sequence[float] | None = None,
                  ratios: Sequence[float] | None = None) -> "ModelConfig":
        """The configuration of a new model for what ``prepare_data`` returned.

        Args:
            data: ``prepare_data``'s result.
            backbone: backbone name or function; None: ``'resnet50'``. Keyword only.
            scales: anchor scales; None: :data:`~geolearn.models.anchors.DEFAULT_SCALES`.
            ratios: anchor ratios; None: :data:`~geolearn.models.anchors.DEFAULT_RATIOS`.
        """
        value_of = {name: value for value, name in data.class_mapping.items()}
        return cls(
            class_infos=tuple(ClassInfo(value_of[name], name, tuple(data.color_mapping[value_of[name]]))
                              for name in data.classes[1:]),
            chip_size=data.chip_size,
            normalization=data.normalization,
            n_bands=data.n_bands,
            band_names=data.bands,
            extract_bands=data.extract_bands,
            resize_to=data.resize_to,
            zoom=data.zoom,
            cell_size=getattr(data, "cell_size", None),
            crs_wkt=getattr(data, "crs_wkt", None),
            backbone=backbone if backbone is not None else DEFAULT_BACKBONE,
            scales=scales if scales is not None else DEFAULT_SCALES,
            ratios=ratios if ratios is not None else DEFAULT_RATIOS,
        )

    # ------------------------------------------------------------------ the EMD
    # geolearn.learn.emd, the file form, builds on this module: imported where used, not above.

    def to_emd(self, model_file: str, *, average_precision: Mapping[str, float] | None = None,
               network_script: str | None = None) -> dict[str, Any]:
        """The model definition (EMD) of this configuration (:func:`geolearn.learn.emd.build_emd`).

        Args:
            model_file: the weights' file name, relative to the EMD (``'<name>.pth'``).
            average_precision: ``{class name: AP}`` to record, or None. Keyword only.
            network_script: the package's TorchScript file for the raster function, or None.
        """
        from geolearn.learn.emd import build_emd

        return build_emd(self, model_file=model_file, average_precision=average_precision,
                         network_script=network_script)

    @classmethod
    def from_emd(cls, path: str | Path) -> "ModelConfig":
        """The configuration of a saved model: an ``.emd``, a folder holding one, or a ``.dlpk``.

        Raises:
            FileNotFoundError: no model definition there, or the weights it names are missing.
            ModelDefinitionError: the EMD cannot be read as a RetinaNet definition.
        """
        from geolearn.learn.emd import read_emd
        from geolearn.learn.package import resolve_model

        return read_emd(resolve_model(Path(path))[0]).config


def _positive_numbers(values: Sequence[float], what: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        numbers = ()
    if not numbers or not all(math.isfinite(v) and v > 0 for v in numbers):
        raise ValueError(f"{what}={values!r}: give a non-empty list of positive numbers.")
    return numbers
