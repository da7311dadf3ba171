"""The network as the files of a model package: TorchScript for the raster function, ONNX, a traced network.

Each takes the network, its :class:`~geolearn.learn.config.ModelConfig` and its anchors (what a
``RetinaNet`` holds; ``RetinaNet.save`` and ``export_onnx`` call them) and returns the file's bytes.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from geolearn._version import __version__
from geolearn.atomic import atomic_write
from geolearn.checks import fraction
from geolearn.errors import OutputExistsError
from geolearn.inference.defaults import NMS_OVERLAP
from geolearn.models.portable import deepness_metadata, onnx_bytes, script_bytes

if TYPE_CHECKING:
    from geolearn.learn.config import ModelConfig

__all__ = ["raster_function_network", "onnx_network", "write_onnx", "traced_network"]


def raster_function_network(network: nn.Module, config: ModelConfig, anchors: Tensor) -> bytes:
    """The package's TorchScript for its raster function: raw windows → boxes and scores.

    Normalisation, zoom and box decoding are inside (:func:`~geolearn.models.portable.script_bytes`).

    Examples:
        See ``RetinaNet.save``, which writes it as ``<name>_detector.pt``.
    """
    return script_bytes(network, anchors, config.chip_size, config.normalization, window_size=config.window_size)


def onnx_network(network: nn.Module, config: ModelConfig, anchors: Tensor, threshold: float,
                 nms_overlap: float = NMS_OVERLAP) -> bytes:
    """The ONNX file of ``RetinaNet.export_onnx``: the network and the metadata QGIS Deepness reads.

    Args:
        network: the RetinaNet network.
        config: what it is (classes, chip size, normalisation, zoom, training pixel size).
        anchors: ``Tensor[A, 4]`` its anchors for ``config.chip_size``.
        threshold: ``det_conf`` for Deepness.
        nms_overlap: ``det_iou_thresh`` for Deepness.

    Examples:
        See ``RetinaNet.export_onnx``.
    """
    cell_size_m = None  # what the network sees: the training pixels, enlarged by the zoom
    if config.cell_size is not None and config.crs_wkt is not None:
        from rasterio.crs import CRS

        if CRS.from_wkt(config.crs_wkt).linear_units in ("metre", "meter"):
            cell_size_m = config.cell_size / config.zoom
    metadata = deepness_metadata(
        config.classes[1:], config.chip_size, config.normalization, threshold=threshold, nms_overlap=nms_overlap,
        overlap_percent=25, cell_size_m=cell_size_m,
    )
    metadata["geolearn"] = json.dumps({
        "version": __version__, "chip_size": config.chip_size, "zoom": config.zoom,
        "normalization": config.normalization.to_json(), "class_names": config.classes[1:],
        "extract_bands": list(config.extract_bands) if config.extract_bands is not None else None,
        "input": "normalised chips (float32 [batch, bands, chip_size, chip_size])",
        "output": "[batch, 4 + classes, anchors]: cx, cy, w, h in input pixels, then sigmoid class scores",
    })
    return onnx_bytes(network, anchors, config.chip_size, config.n_bands, metadata)


def write_onnx(path: str | Path, network: nn.Module, config: ModelConfig, anchors: Tensor, threshold: float,
               nms_overlap: float = NMS_OVERLAP, *, overwrite: bool = False) -> Path:
    """Writes :func:`onnx_network` to ``path`` (``.onnx``), whole or not at all; returns the path.

    Raises:
        ValueError: ``path`` does not end in ``.onnx``, or a threshold outside [0, 1].
        OutputExistsError: ``path`` exists and ``overwrite`` is False.

    Examples:
        See ``RetinaNet.export_onnx``, which calls it.
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: give a file name ending in .onnx.")
    fraction("threshold", threshold, example="0.3")
    fraction("nms_overlap", nms_overlap, example="0.1")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass overwrite=True or choose another name.")
    content = onnx_network(network, config, anchors, threshold, nms_overlap)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:  # never a half-written model at path
        partial.write_bytes(content)
    return path


def traced_network(network: nn.Module, config: ModelConfig) -> bytes:
    """The bare network as TorchScript, traced in eval mode on one chip of the training size.

    ``RetinaNet.save(framework='torchscript')`` writes it as ``<name>.pt``.

    Examples:
        >>> from geolearn.data.esri import ClassInfo
        >>> from geolearn.data.normalization import Normalization
        >>> from geolearn.learn.config import ModelConfig
        >>> from geolearn.models.retinanet import build_retinanet
        >>> config = ModelConfig(class_infos=[ClassInfo(1, "tree", (0, 168, 132))], chip_size=64,
        ...                      normalization=Normalization.for_rgb8(), n_bands=3, backbone="resnet18")
        >>> network = build_retinanet("resnet18", n_classes=1, pretrained=False)
        >>> traced = torch.jit.load(io.BytesIO(traced_network(network, config)))
        >>> chip = torch.rand(1, 3, 64, 64)
        >>> all(torch.allclose(a, b, atol=1e-5) for a, b in zip(traced(chip), network.eval()(chip)))
        True
    """
    size = config.chip_size
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices: tracing still works
            traced = torch.jit.trace(network, torch.zeros(1, config.n_bands, size, size), strict=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
    finally:
        network.train(was_training)
    return buffer.getvalue()
