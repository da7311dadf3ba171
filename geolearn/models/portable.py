"""The network as a self-contained graph, for runtimes without geolearn: TorchScript and ONNX.

:class:`DecodingNetwork` wraps a RetinaNet network with what turns its raw outputs into boxes
— the package's normalisation, the zoom of a model trained on enlarged chips, the anchors and
:func:`~geolearn.models.boxes.decode` — so that a runtime outside geolearn only selects and
merges boxes. Traced from geolearn's own functions, the graph cannot drift from the library:

* :func:`script_bytes` — TorchScript taking *raw* pixels, which every package carries for its
  ArcGIS raster function (:mod:`geolearn.models.raster_function`);
* :func:`onnx_bytes` — ONNX taking *normalised* chips, with one output ``(B, 4 + C, A)``:
  per anchor the box centre and size in input pixels (``cx, cy, w, h``) and the C class
  scores, the layout Ultralytics' YOLO exports and the QGIS Deepness plugin decodes
  (``det_type`` ``YOLO_Ultralytics``), plus the model's facts as ONNX metadata.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from typing import Mapping

import torch
from torch import Tensor, nn

from geolearn.data.normalization import Normalization
from geolearn.models.boxes import cthw_to_chip, decode

__all__ = ["DecodingNetwork", "script_bytes", "onnx_bytes", "deepness_metadata"]

# The opset of the ONNX file: ONNX Runtime 1.16 (2023) and later run it.
ONNX_OPSET = 17


class DecodingNetwork(nn.Module):
    """A RetinaNet network whose outputs are boxes in input pixels and sigmoid scores.

    Args:
        network: ``images [B, C, S, S]`` → ``[cls_logits [B, A, n_classes], box_deltas [B, A, 4]]``.
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1] for chips of ``chip_size``.
        chip_size: the network's chip side ``S``, pixels.
        normalization: when given, the input is raw pixels and is normalised first (as
            ``RetinaNet.predict`` does); None: the input is normalised already.
        window_size: side of the input in raster pixels when it differs from ``chip_size`` (a
            model trained with ``resize_to`` enlarges windows of ``chip_size / zoom`` pixels to
            the chip, bilinear, as ``detect_objects`` does); None: ``chip_size``.

    ``forward(x)``: ``Tensor[B, C, W, W]`` float32 → ``(boxes [B, A, 4] float32 xyxy in input
    pixels, clipped to the input as ``predict`` clips them before its NMS, scores [B, A,
    n_classes] float32)``.

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> network = build_retinanet("resnet18", n_classes=2, pretrained=False).eval()
        >>> boxes, scores = DecodingNetwork(network, make_anchors(64), 64)(torch.zeros(1, 3, 64, 64))
        >>> boxes.shape, scores.shape
        (torch.Size([1, 774, 4]), torch.Size([1, 774, 2]))
    """

    def __init__(
        self,
        network: nn.Module,
        anchors: Tensor,
        chip_size: int,
        *,
        normalization: Normalization | None = None,
        window_size: int | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("anchors", anchors.float().clone())
        self.chip_size = int(chip_size)
        self.window_size = int(window_size or chip_size)
        self.normalization = normalization

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, C, W, W]`` → ``(boxes [B, A, 4] xyxy input pixels, scores [B, A, n_classes])``."""
        if self.normalization is not None:
            x = self.normalization.normalize(x)
        if self.window_size != self.chip_size:
            x = nn.functional.interpolate(x, size=(self.chip_size, self.chip_size), mode="bilinear", align_corners=False)
        cls_logits, box_deltas = self.network(x)
        boxes = cthw_to_chip(decode(box_deltas.float(), self.anchors), self.chip_size).clamp(0, self.chip_size)
        return boxes * (self.window_size / self.chip_size), torch.sigmoid(cls_logits.float())


def _cpu_eval_copy(network: nn.Module) -> nn.Module:
    """A float32 copy of the network on the CPU in eval mode, to trace: the package must run on any
    machine, and the caller's model keeps its device and mode."""
    return copy.deepcopy(network).cpu().float().eval()


def script_bytes(
    network: nn.Module,
    anchors: Tensor,
    chip_size: int,
    normalization: Normalization,
    window_size: int | None = None,
) -> bytes:
    """TorchScript of :class:`DecodingNetwork` on raw pixels, traced on the CPU in float32.

    Traced once for windows of ``window_size`` (default ``chip_size``) pixels; the raster
    function cuts every tile into such windows, so any tile size works.

    Args:
        network: the RetinaNet network (traced from a CPU copy in eval mode; it is not changed).
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1] for ``chip_size``.
        chip_size: the network's chip side, pixels.
        normalization: how raw pixels become network inputs.
        window_size: side of the raster windows; None: ``chip_size``.

    Returns:
        The bytes of a file ``torch.jit.load`` reads (no geolearn needed).

    Examples:
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> network = build_retinanet("resnet18", n_classes=1, pretrained=False)
        >>> scripted = torch.jit.load(io.BytesIO(script_bytes(network, make_anchors(64), 64, Normalization.for_rgb8())))
        >>> [t.shape for t in scripted(torch.full((2, 3, 64, 64), 128.0))]
        [torch.Size([2, 774, 4]), torch.Size([2, 774, 1])]
    """
    window = int(window_size or chip_size)
    wrapper = DecodingNetwork(_cpu_eval_copy(network), anchors.cpu(), chip_size, normalization=normalization,
                              window_size=window)
    example = torch.zeros(1, normalization.n_bands, window, window)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices and tracer warnings on constants
        traced = torch.jit.trace(wrapper, example, strict=False, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


class _UltralyticsLayout(nn.Module):
    """``(boxes xyxy [B, A, 4], scores [B, A, C])`` → one ``[B, 4 + C, A]``: cx, cy, w, h, scores."""

    def __init__(self, decoding: DecodingNetwork) -> None:
        super().__init__()
        self.decoding = decoding

    def forward(self, x: Tensor) -> Tensor:
        boxes, scores = self.decoding(x)
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        size = boxes[..., 2:] - boxes[..., :2]
        return torch.cat([centre, size, scores], dim=-1).transpose(1, 2)


def deepness_metadata(
    class_names: list[str],
    chip_size: int,
    normalization: Normalization,
    *,
    threshold: float,
    nms_overlap: float,
    overlap_percent: int,
    cell_size_m: float | None,
) -> dict[str, str]:
    """The ONNX metadata the QGIS Deepness plugin reads (each value JSON, as the plugin parses it).

    Deepness feeds a model ``pixels / 255`` and standardises with ``standardization_mean`` and
    ``standardization_std``. geolearn's normalisation is ``((raw - min) / (max - min) - mean) /
    std`` per band, so the plugin's values are ``(min + mean · span) / 255`` and ``std · span /
    255`` with ``span = max - min``: the same affine map (only the clip of raw values outside
    ``[min, max]`` is lost, which 8-bit RGB models never meet).

    Args:
        class_names: object class names, in output order.
        chip_size: the network's input side, pixels (``tiles_size``).
        normalization: the model's normalisation.
        threshold: ``det_conf``, the lowest score kept. Keyword only, like the rest.
        nms_overlap: ``det_iou_thresh``.
        overlap_percent: ``tiles_overlap``, percent of the tile shared by neighbours.
        cell_size_m: the training imagery's pixel size in metres (``resolution`` is in cm), or None.

    Returns:
        ``{key: JSON text}``.

    Examples:
        >>> meta = deepness_metadata(["tree"], 256, Normalization.for_rgb8(), threshold=0.3, nms_overlap=0.1,
        ...                          overlap_percent=25, cell_size_m=0.1)
        >>> meta["model_type"], meta["det_type"], meta["class_names"], meta["resolution"]
        ('"Detector"', '"YOLO_Ultralytics"', '{"0": "tree"}', '10.0')
    """
    span = [high - low for low, high in zip(normalization.band_min, normalization.band_max)]
    meta = {
        "model_type": "Detector",
        "det_type": "YOLO_Ultralytics",
        "class_names": {str(i): name for i, name in enumerate(class_names)},
        "tiles_size": int(chip_size),
        "tiles_overlap": int(overlap_percent),
        "det_conf": float(threshold),
        "det_iou_thresh": float(nms_overlap),
        "standardization_mean": [(low + m * s) / 255 for low, m, s in zip(normalization.band_min, normalization.mean, span)],
        "standardization_std": [sd * s / 255 for sd, s in zip(normalization.std, span)],
    }
    if cell_size_m is not None:
        meta["resolution"] = round(cell_size_m * 100, 6)
    return {key: json.dumps(value) for key, value in meta.items()}


def onnx_bytes(
    network: nn.Module,
    anchors: Tensor,
    chip_size: int,
    n_bands: int,
    metadata: Mapping[str, str],
) -> bytes:
    """ONNX of :class:`DecodingNetwork` on normalised chips, in the Ultralytics layout.

    Input ``images``: ``float32 [batch, n_bands, chip_size, chip_size]`` (batch dynamic);
    output ``detections``: ``float32 [batch, 4 + C, A]`` — rows cx, cy, w, h in input pixels,
    then the C sigmoid class scores, one column per anchor (undecided: no threshold, no NMS).

    Args:
        network: the RetinaNet network (traced from a CPU copy in eval mode; it is not changed).
        anchors: ``Tensor[A, 4]`` (cy, cx, h, w) in [-1, 1] for ``chip_size``.
        chip_size: input side, pixels.
        n_bands: input bands.
        metadata: ``{key: value}`` strings stored as the model's ``metadata_props``
            (:func:`deepness_metadata` plus geolearn's facts).

    Returns:
        The bytes of the ``.onnx`` file.

    Raises:
        ImportError: the ``onnx`` package is missing (``pip install geolearn[onnx]``).

    Examples:
        >>> import onnx
        >>> from geolearn.models.anchors import make_anchors
        >>> from geolearn.models.retinanet import build_retinanet
        >>> network = build_retinanet("resnet18", n_classes=2, pretrained=False)
        >>> model = onnx.load_from_string(onnx_bytes(network, make_anchors(64), 64, 3, {"model_type": '"Detector"'}))
        >>> [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        ['batch', 6, 774]
    """
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX export needs the onnx package: pip install 'geolearn[onnx]'") from error
    layout = _UltralyticsLayout(DecodingNetwork(_cpu_eval_copy(network), anchors.cpu(), chip_size))
    example = torch.zeros(1, n_bands, chip_size, chip_size)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter (dynamo=False): a fixed graph of standard operators that
        # needs no onnxscript, and what ONNX Runtime and the Deepness plugin have always read.
        torch.onnx.export(layout, (example,), buffer, input_names=["images"], output_names=["detections"],
                          dynamic_axes={"images": {0: "batch"}, "detections": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    # The exporter leaves the anchor axis symbolic after the transpose; readers that size their
    # decoding from the declared shape (Deepness) get the number.
    anchor_axis = model.graph.output[0].type.tensor_type.shape.dim[2]
    anchor_axis.ClearField("dim_param")
    anchor_axis.dim_value = len(anchors)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()
