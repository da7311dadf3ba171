"""GeolearnObjectDetector: the Python raster function that runs a geolearn package in ArcGIS.

Every saved package carries a copy of this file as ``GeolearnObjectDetector.py`` beside its
``.emd`` (whose ``InferenceFunction`` names it), so that ArcGIS Pro's *Detect Objects Using Deep
Learning* tool and ArcGIS Image Server run the model without geolearn. Python raster functions
are a protocol, not a base class (Esri's ``raster-deep-learning`` repository and arcgis.learn's
``ArcGISObjectDetector.py`` follow it); the tool calls, in this order:

1. ``initialize(model=<.emd path or JSON>, device=<GPU id, -1 for the CPU>)``;
2. ``getParameterInfo()`` — the tool's dialog: padding, threshold, nms_overlap, batch_size,
   exclude_pad_detections, with this model's defaults;
3. ``getConfiguration(**scalars)`` — the analyst's values; the tile size Pro should send
   (``tx``, ``ty``), ``padding`` and the bands to extract;
4. ``getFields()``, ``getGeometryType()`` — the output table;
5. ``vectorize(raster_pixels=..., raster_mask=...)`` for every tile: ``raster_pixels`` is
   ``[bands, ty + 2·padding, tx + 2·padding]``; the features come back with rings in pixels of
   the tile *without* its padding, ``[x, y]``, as arcgis.learn's ArcGISObjectDetector returns
   them, and ``Class`` (name) and ``Confidence`` (score × 100) attributes.

**It imports only the standard library, numpy and torch** (ArcGIS Pro's deep-learning
environment has both); ``arcpy`` only if present, to record the device, and torchvision only
if present, for its compiled NMS (:func:`nms` has a plain torch twin otherwise). The network
is the package's TorchScript file (``geolearn.network_script`` in the EMD), traced by geolearn
with its own normalisation, zoom and box decoding inside
(:class:`geolearn.models.portable.DecodingNetwork`), so those three cannot drift from the
library: what this file does is the rest of ``RetinaNet.predict``'s path, and the library's
path calls the same functions — :func:`select_detections` (threshold, top-k, clip, per-window
NMS: :mod:`geolearn.models.postprocess`) and :func:`seam_verdict` (which boxes cut by a window
side to drop: :mod:`geolearn.inference.window_merge`). The window grid and the cross-window merge
are small twins of :func:`geolearn.inference.windows.plan_windows` and ``merge_boxes``;
``tests/test_raster_function.py`` runs this file with geolearn, fastai and rasterio refused and
checks that its boxes equal ``model.predict``'s on the same tiles.

One tile from Pro holds ``rows × columns = batch_size`` windows of the network's chip (in
raster pixels: ``chip_size / zoom``) overlapping by ``2 · padding``, as arcgis.learn lays them
out; they run as one batch and merge as ``predict`` merges an image's windows. Tiles overlap by
their padding too: each tile reports the objects whose box centre lies in its unpadded part,
so every object is reported by exactly one tile and Pro's own NMS is not needed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GeolearnObjectDetector",
    "nms",
    "select_detections",
    "seam_verdict",
    "window_grid",
    "clip_boxes",
    "detect_tile",
    "MIN_SIDE_PX",
    "MAX_DETECTIONS",
    "PRE_NMS_TOP_K",
]

# Boxes narrower or lower than this (pixels) after clipping are dropped: slivers at a chip or
# image edge, and zero-area boxes that would make NMS divide by zero.
MIN_SIDE_PX = 1e-2
# Most detections kept per window, and candidates per window entering NMS (quadratic).
MAX_DETECTIONS = 300
PRE_NMS_TOP_K = 1000
# detect_objects' defaults, which the tool's dialog shows.
DEFAULT_THRESHOLD = 0.5
DEFAULT_NMS_OVERLAP = 0.1
DEFAULT_BATCH_SIZE = 4
EDGE_TOLERANCE = 2.0

try:  # torchvision's compiled NMS where installed (ArcGIS Pro's environment has it)
    from torchvision.ops import batched_nms as _tv_batched_nms
except ImportError:  # pragma: no cover - exercised by the tests in a subprocess without torchvision
    _tv_batched_nms = None


# ----------------------------------------------------------------------------- box selection


def _plain_batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, overlap: float) -> Tensor:
    """torchvision's ``batched_nms`` in plain torch: the same boxes kept, in the same order."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    # Groups shifted apart so that boxes of different groups never overlap (torchvision's trick).
    shifted = boxes + (groups.to(boxes) * (boxes.max() + 1))[:, None]
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = shifted[order]
    area = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    top_left = torch.maximum(sorted_boxes[:, None, :2], sorted_boxes[None, :, :2])
    bottom_right = torch.minimum(sorted_boxes[:, None, 2:], sorted_boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    iou = inter / (area[:, None] + area[None, :] - inter)
    later = torch.ones(len(order), len(order), dtype=torch.bool).triu(diagonal=1)
    suppresses = (iou > overlap).cpu() & later  # [i, j]: box i, kept, would drop box j (ranked after it)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if not suppressed[i]:
            suppressed |= suppresses[i]
    return order[~suppressed.to(order.device)]


def nms(boxes: Tensor, scores: Tensor, groups: Tensor, overlap: float) -> Tensor:
    """Non-maximum suppression within each group.

    Args:
        boxes: ``Tensor[K, 4]`` float xyxy, positive areas.
        scores: ``Tensor[K]``.
        groups: ``Tensor[K]`` int64; boxes of different groups never suppress each other.
        overlap: IoU above which the lower-scored of two boxes is dropped.

    Returns:
        ``Tensor[M]`` int64 indices of the kept boxes, by descending score
        (``torchvision.ops.batched_nms``'s, or its plain-torch twin where torchvision is absent).

    Examples:
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
        >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 2]), 0.5)
        tensor([0, 2])
    """
    if _tv_batched_nms is not None:
        return _tv_batched_nms(boxes, scores, groups, overlap)
    return _plain_batched_nms(boxes, scores, groups, overlap)


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    size: float,
    *,
    threshold: float,
    nms_overlap: float,
    class_agnostic: bool = False,
    max_detections: int = MAX_DETECTIONS,
    pre_nms_top_k: int = PRE_NMS_TOP_K,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One chip's detections from its decoded anchors: threshold, top-k, clip, NMS.

    Each (anchor, class) pair scoring above ``threshold`` is a candidate; the ``pre_nms_top_k``
    best keep their anchor's box, clipped to the chip; boxes under :data:`MIN_SIDE_PX` on a side
    are dropped; NMS per class (across classes when ``class_agnostic``) and the
    ``max_detections`` best remain. ``RetinaNet.predict``, ``detect_objects`` and the raster
    function all select through here (:func:`geolearn.models.postprocess.detect`).

    Args:
        boxes: ``Tensor[A, 4]`` float32 xyxy of every anchor's decoded box, in chip pixels.
        scores: ``Tensor[A, C]`` sigmoid scores per anchor and object class.
        size: side of the chip in pixels: boxes are clipped to ``[0, size]``.
        threshold: scores must exceed this, 0–1. Keyword only, like the rest.
        nms_overlap: IoU above which the lower-scored of two boxes is suppressed, 0–1.
        class_agnostic: suppress across classes. Default False.
        max_detections: most detections kept. Default 300.
        pre_nms_top_k: most candidates entering NMS. Default 1000.

    Returns:
        ``(boxes [K, 4] float32 xyxy chip pixels, labels [K] int64 1..C, scores [K])``, best first.

    Examples:
        >>> boxes = torch.tensor([[-4.0, 2.0, 20.0, 30.0], [0.0, 0.0, 8.0, 8.0]])
        >>> select_detections(boxes, torch.tensor([[0.9, 0.2], [0.1, 0.6]]), 16, threshold=0.5, nms_overlap=0.1)
        (tensor([[ 0.,  2., 16., 16.],
                [ 0.,  0.,  8.,  8.]]), tensor([1, 2]), tensor([0.9000, 0.6000]))
    """
    n_classes = scores.shape[1]
    flat = scores.flatten()  # [A·C], anchor-major
    candidates = torch.nonzero(flat > threshold).squeeze(1)
    flat = flat[candidates]
    if len(flat) > pre_nms_top_k:
        flat, order = flat.topk(pre_nms_top_k)
        candidates = candidates[order]
    anchor = candidates // n_classes
    labels = candidates % n_classes + 1
    chosen, has_area = clip_boxes(boxes[anchor].float(), size, size)
    chosen, labels, flat = chosen[has_area], labels[has_area], flat[has_area]
    keep = nms(chosen, flat, torch.zeros_like(labels) if class_agnostic else labels, nms_overlap)[:max_detections]
    return chosen[keep], labels[keep], flat[keep]


# ----------------------------------------------------------------------------- windows and seams


def _axis_offsets(size: int, window: int, stride: int) -> List[int]:
    """``0, s, 2s, ...`` while a window fits, plus one flush with the far edge when pixels remain;
    ``[0]`` when the axis is shorter than a window.

    The rule of :func:`geolearn.data.tiling.axis_offsets`, restated because this file runs
    without geolearn (and the data layer cannot import this one); tests/test_raster_function.py
    checks that :func:`window_grid` equals ``plan_windows``.
    """
    if size <= window:
        return [0]
    offsets = list(range(0, size - window + 1, stride))
    if offsets[-1] + window < size:
        offsets.append(size - window)
    return offsets


def window_grid(height: int, width: int, window: int, overlap: int) -> Tuple[Tensor, Tensor]:
    """The windows covering an image, row-major, and for each side the far edge of the neighbour across it.

    The twin of :func:`geolearn.inference.windows.plan_windows` (same windows, same order).

    Args:
        height: image height in pixels.
        width: image width in pixels.
        window: window side in pixels.
        overlap: pixels shared by adjacent windows, ``0 <= overlap < window``.

    Returns:
        ``(windows [N, 4] float32 xyxy, neighbour_edges [N, 4] float32)``: per window the left
        neighbour's x2, the upper one's y2, the right one's x1 and the lower one's y1, ±inf on
        the image border.

    Examples:
        >>> window_grid(100, 160, 100, 40)[0]
        tensor([[  0.,   0., 100., 100.],
                [ 60.,   0., 160., 100.]])
    """
    def axis(size: int) -> Tuple[Tensor, Tensor, Tensor]:
        starts = torch.tensor(_axis_offsets(size, window, window - overlap), dtype=torch.float32)
        inf = torch.tensor([math.inf])
        return starts, torch.cat([-inf, starts[:-1] + window]), torch.cat([starts[1:], inf])

    xs, left, right = axis(width)
    ys, top, bottom = axis(height)
    row = torch.arange(len(ys)).repeat_interleave(len(xs))
    col = torch.arange(len(xs)).repeat(len(ys))
    windows = torch.stack([xs[col], ys[row], xs[col] + window, ys[row] + window], dim=1)
    return windows, torch.stack([left[col], top[row], right[col], bottom[row]], dim=1)


def seam_verdict(
    image_boxes: Tensor, window: Tensor, neighbour: Tensor, tolerance: float = EDGE_TOLERANCE
) -> Tuple[Tensor, Tensor]:
    """Which boxes to keep: not a box cut by a window side whose whole object the neighbour sees.

    See :func:`geolearn.inference.window_merge.seam_filter` for the rule and why it reports every
    object once.

    Args:
        image_boxes: ``Tensor[K, 4]`` xyxy in image pixels.
        window: ``Tensor[K, 4]`` xyxy, the window each box was found in.
        neighbour: ``Tensor[K, 4]`` that window's neighbour edges (:func:`window_grid`).
        tolerance: pixels within which a box edge counts as touching a window side. Default 2.

    Returns:
        ``(keep [K] bool, at_seam [K] bool)``: at_seam marks boxes touching an interior side.

    Examples:
        >>> windows, edges = window_grid(100, 160, 100, 40)
        >>> boxes = torch.tensor([[90.0, 10.0, 100.0, 30.0], [90.0, 10.0, 110.0, 30.0]])
        >>> seam_verdict(boxes, windows, edges)  # window 0 cuts the object that window 1 sees whole
        (tensor([False,  True]), tensor([ True, False]))
    """
    interior = neighbour.isfinite()  # [K, 4] (left, top, right, bottom): a neighbour across the side
    x1, y1, x2, y2 = image_boxes.unbind(dim=1)
    touch = torch.stack(
        [x1 <= window[:, 0] + tolerance, y1 <= window[:, 1] + tolerance,
         x2 >= window[:, 2] - tolerance, y2 >= window[:, 3] - tolerance],
        dim=1,
    ) & interior
    # The far end of the box lies in the strip shared with the neighbour, clear of its far edge.
    neighbour_sees_end = torch.stack(
        [x2 <= neighbour[:, 0] - tolerance, y2 <= neighbour[:, 1] - tolerance,
         x1 >= neighbour[:, 2] + tolerance, y1 >= neighbour[:, 3] + tolerance],
        dim=1,
    )
    return ~(touch & neighbour_sees_end).any(dim=1), touch.any(dim=1)


def clip_boxes(boxes: Tensor, height: float, width: float) -> Tuple[Tensor, Tensor]:
    """Boxes clipped to ``[0, width] × [0, height]``, and which still have :data:`MIN_SIDE_PX` on each side.

    Args:
        boxes: ``Tensor[K, 4]`` xyxy.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        ``(Tensor[K, 4] clipped, Tensor[K] bool)``.

    Examples:
        >>> clip_boxes(torch.tensor([[-5.0, 0.0, 10.0, 10.0], [120.0, 0.0, 130.0, 10.0]]), 100, 100)
        (tensor([[  0.,   0.,  10.,  10.],
                [100.,   0., 100.,  10.]]), tensor([ True, False]))
    """
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    clipped = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    return clipped, ((x[:, 1] - x[:, 0]) >= MIN_SIDE_PX) & ((y[:, 1] - y[:, 0]) >= MIN_SIDE_PX)


def detect_tile(
    network: Any,
    pixels: Tensor,
    valid: Tensor,
    window: int,
    padding: int,
    *,
    threshold: float,
    nms_overlap: float,
    batch_size: int,
    exclude_pad_detections: bool = True,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Detections in one tile of raw pixels, as ``RetinaNet.predict`` finds them in an image.

    Windows of ``window`` pixels overlapping by ``2 · padding`` (:func:`window_grid`; a tile
    smaller than a window is zero-padded) run through ``network`` ``batch_size`` at a time;
    each window's boxes are selected (:func:`select_detections`), shifted to tile pixels,
    filtered at seams (:func:`seam_verdict`, when ``exclude_pad_detections``), clipped to the
    tile, dropped when their centre pixel is invalid, and merged across windows by NMS per class.
    Windows without a valid pixel are not run.

    Args:
        network: raw ``Tensor[B, C, window, window]`` float32 → ``(boxes [B, A, 4] xyxy window
            pixels, scores [B, A, n_classes])`` (the package's TorchScript).
        pixels: ``Tensor[C, H, W]`` raw pixel values (invalid ones zero).
        valid: ``Tensor[H, W]`` bool.
        window: the network's input side, raster pixels.
        padding: raster pixels of context on each side of a window.
        threshold: lowest score reported. Keyword only, like the rest.
        nms_overlap: IoU above which two boxes of a class are one object.
        batch_size: windows per forward pass.
        exclude_pad_detections: drop a box cut by a window side whose object a neighbour sees whole.

    Returns:
        ``(boxes [K, 4] float32 xyxy tile pixels, labels [K] int64 1..C, scores [K])``, best first.

    Examples:
        >>> def network(crops):  # a stub: every window sees one object at window pixels 20..30
        ...     boxes = torch.tensor([20.0, 20.0, 30.0, 30.0]).expand(len(crops), 1, 4)
        ...     return boxes, torch.full((len(crops), 1, 1), 0.9)
        >>> pixels, valid = torch.zeros(3, 112, 112), torch.ones(112, 112, dtype=torch.bool)
        >>> detect_tile(network, pixels, valid, 64, 8, threshold=0.5, nms_overlap=0.1, batch_size=4)[0]
        tensor([[20., 20., 30., 30.],
                [68., 20., 78., 30.],
                [20., 68., 30., 78.],
                [68., 68., 78., 78.]])
    """
    device = next(iter(network.parameters())).device if hasattr(network, "parameters") else torch.device("cpu")
    _, height, width = pixels.shape
    windows, neighbours = window_grid(height, width, window, 2 * padding)
    if height < window or width < window:
        pixels = torch.nn.functional.pad(pixels, (0, max(window - width, 0), 0, max(window - height, 0)))
        valid = torch.nn.functional.pad(valid, (0, max(window - width, 0), 0, max(window - height, 0)))
    corners = windows[:, :2].long().tolist()
    runnable = [i for i, (x, y) in enumerate(corners) if valid[y:y + window, x:x + window].any()]
    found_boxes, found_labels, found_scores = [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0)]
    for start in range(0, len(runnable), batch_size):
        batch = runnable[start:start + batch_size]
        crops = torch.stack([pixels[:, y:y + window, x:x + window] for x, y in (corners[i] for i in batch)])
        with torch.no_grad():
            decoded, scores = network(crops.float().to(device))
        for row, index in enumerate(batch):
            boxes, labels, kept_scores = select_detections(decoded[row].float().cpu(), scores[row].float().cpu(), window,
                                                           threshold=threshold, nms_overlap=nms_overlap)
            boxes = boxes + windows[index, :2].repeat(2)
            keep = torch.ones(len(boxes), dtype=torch.bool)
            if exclude_pad_detections:
                keep, _ = seam_verdict(boxes, windows[index].expand(len(boxes), 4),
                                       neighbours[index].expand(len(boxes), 4))
            boxes, has_area = clip_boxes(boxes, height, width)
            keep &= has_area
            column, line = ((boxes[:, :2] + boxes[:, 2:]) / 2).floor().long().unbind(dim=1)
            keep &= valid[line.clamp(0, valid.shape[0] - 1), column.clamp(0, valid.shape[1] - 1)]
            found_boxes.append(boxes[keep])
            found_labels.append(labels[keep])
            found_scores.append(kept_scores[keep])
    boxes, labels, scores = torch.cat(found_boxes), torch.cat(found_labels), torch.cat(found_scores)
    keep = nms(boxes, scores, labels, nms_overlap)
    return boxes[keep], labels[keep], scores[keep]


# ----------------------------------------------------------------------------- the raster function


class GeometryType:
    """Esri's geometry type codes (``getGeometryType``).

    Examples:
        >>> GeometryType.Polygon
        4
    """

    Point = 1
    Multipoint = 2
    Polyline = 3
    Polygon = 4


_FIELDS = {
    "fields": [
        {"name": "OID", "type": "esriFieldTypeOID", "alias": "OID"},
        {"name": "Class", "type": "esriFieldTypeString", "alias": "Class"},
        {"name": "Confidence", "type": "esriFieldTypeDouble", "alias": "Confidence"},
        {"name": "Shape", "type": "esriFieldTypeGeometry", "alias": "Shape"},
    ]
}
_TRUE = ("true", "1", "t", "y", "yes")


def _grid_shape(batch_size: int) -> Tuple[int, int]:
    """``(rows, columns)`` of windows in a tile: the squarest factorisation of ``batch_size``, wider than high."""
    rows = int(math.isqrt(batch_size))
    while batch_size % rows:
        rows -= 1
    return rows, batch_size // rows


class GeolearnObjectDetector:
    """A geolearn RetinaNet package as an ArcGIS Python raster function (see the module doc).

    Examples:
        Driven as ArcGIS Pro drives it (``folder`` a saved package)::

            detector = GeolearnObjectDetector()
            detector.initialize(model=str(folder / "trees.emd"), device=-1)
            parameters = detector.getParameterInfo()
            configuration = detector.getConfiguration(padding=32, threshold=0.3, batch_size=4)
            tile = np.zeros((3, configuration["ty"] + 64, configuration["tx"] + 64), np.uint8)
            features = json.loads(detector.vectorize(raster_pixels=tile, raster_mask=np.ones_like(tile))["output_vectors"])
    """

    def __init__(self) -> None:
        self.name = "Geolearn Object Detector"
        self.description = "Detects objects with a geolearn RetinaNet (boxes as polygons, Class, Confidence)."
        self.emd: Dict[str, Any] = {}
        self.network: Any = None
        self.device = torch.device("cpu")

    # -- 1. initialize

    def initialize(self, **kwargs: Any) -> None:
        """Reads the EMD and loads the network. ``model``: the ``.emd`` path or its JSON text; ``device``: GPU id, -1 for the CPU."""
        if "model" not in kwargs:
            return
        model = kwargs["model"]
        folder = None
        if isinstance(model, str) and os.path.isfile(model):
            with open(model, "r", encoding="utf-8") as f:
                self.emd = json.load(f)
            folder = os.path.dirname(os.path.abspath(model))
        else:
            try:
                self.emd = json.loads(model)
            except (TypeError, ValueError):
                raise ValueError(f"model={model!r}: give the path of the package's .emd file (or its JSON text).")
        geolearn = self.emd.get("geolearn") or {}
        script = geolearn.get("network_script")
        if not script:
            raise ValueError(
                "this model definition names no geolearn network script ('geolearn.network_script'): the package was "
                "saved by geolearn 0.1 or by arcgis.learn. Load it with geolearn and save it again "
                "(RetinaNet.from_model(emd).save(folder)) to get a package that runs here."
            )
        path = script if os.path.isabs(script) else os.path.join(folder or os.getcwd(), script)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: the model's network script is missing; keep every file of the package "
                                    "together (or use the .dlpk).")
        self.device = self._choose_device(kwargs.get("device"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice: loading still works
            self.network = torch.jit.load(path, map_location=self.device).eval()
        self.chip_size = int(geolearn.get("chip_size") or self.emd["ImageHeight"])
        self.window = int(round(self.chip_size / float(geolearn.get("zoom") or 1.0)))
        self.class_names = [c.get("Name", c.get("ClassName")) for c in self.emd["Classes"]]
        self.default_threshold = float(geolearn.get("threshold") if geolearn.get("threshold") is not None
                                       else DEFAULT_THRESHOLD)
        self.getConfiguration()  # the defaults, until Pro passes the analyst's values

    @staticmethod
    def _choose_device(device: Any) -> torch.device:
        """``device`` >= 0 and CUDA available: that GPU; else the CPU. Tells arcpy when present."""
        try:
            import arcpy  # only inside ArcGIS
        except ImportError:
            arcpy = None
        gpu = device is not None and int(device) >= 0 and torch.cuda.is_available()
        if arcpy is not None:
            arcpy.env.processorType = "GPU" if gpu else "CPU"
            if gpu:
                arcpy.env.gpuId = str(int(device))
        return torch.device(f"cuda:{int(device)}") if gpu else torch.device("cpu")

    # -- 2. the tool's dialog

    def getParameterInfo(self) -> List[Dict[str, Any]]:
        """The parameters Pro shows: the three required ones, then the model arguments with their defaults."""
        return [
            {"name": "raster", "dataType": "raster", "required": True, "displayName": "Raster",
             "description": "Input raster"},
            {"name": "model", "dataType": "string", "required": True, "displayName": "Input Model Definition (EMD) File",
             "description": "Input model definition (EMD) JSON file"},
            {"name": "device", "dataType": "numeric", "required": False, "displayName": "Device ID",
             "description": "GPU id, or -1 for the CPU"},
            {"name": "padding", "dataType": "numeric", "required": False, "value": self.window // 8,
             "displayName": "Padding",
             "description": "Pixels of context on each side of a window; adjacent windows overlap by twice it"},
            {"name": "threshold", "dataType": "numeric", "required": False, "value": self.default_threshold,
             "displayName": "Confidence Score Threshold [0.0, 1.0]",
             "description": "Lowest score of a reported object; the default is the threshold the model's training "
                            "calibrated (else 0.5)"},
            {"name": "nms_overlap", "dataType": "numeric", "required": False, "value": DEFAULT_NMS_OVERLAP,
             "displayName": "NMS Overlap",
             "description": "IoU above which two detections of a class are one object"},
            {"name": "batch_size", "dataType": "numeric", "required": False, "value": DEFAULT_BATCH_SIZE,
             "displayName": "Batch Size", "description": "Windows per forward pass (one tile holds them all)"},
            {"name": "exclude_pad_detections", "dataType": "string", "required": False, "domain": ("True", "False"),
             "value": "True", "displayName": "Filter Outer Padding Detections",
             "description": "Drop a detection cut by a window edge when the neighbouring window sees the object whole"},
        ]

    # -- 3. the analyst's values and the tiles Pro sends

    def getConfiguration(self, **scalars: Any) -> Dict[str, Any]:
        """Parses the dialog's values and says which tiles to send: ``tx``, ``ty``, ``padding``, bands."""
        self.padding = self._number(scalars, "padding", self.window // 8, int)
        self.threshold = self._number(scalars, "threshold", self.default_threshold, float)
        self.nms_overlap = self._number(scalars, "nms_overlap", DEFAULT_NMS_OVERLAP, float)
        self.batch_size = self._number(scalars, "batch_size", DEFAULT_BATCH_SIZE, int)
        self.exclude_pad_detections = str(scalars.get("exclude_pad_detections", "True")).lower() in _TRUE
        if not 0 <= 2 * self.padding < self.window:
            raise ValueError(f"padding={self.padding}: pixels of context on each side of a {self.window} px window, "
                             f"from 0 to {(self.window - 1) // 2}; the default is {self.window // 8}.")
        for name in ("threshold", "nms_overlap"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: give a number between 0 and 1.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: give at least 1 window per batch.")
        rows, columns = _grid_shape(self.batch_size)
        inner = self.window - 2 * self.padding
        return {
            "extractBands": tuple(self.emd.get("ExtractBands", (0, 1, 2))),
            "padding": self.padding,
            "tx": columns * inner,
            "ty": rows * inner,
            "fixedTileSize": 1,
            "inheritProperties": 2 | 4 | 8,  # no data, size and resampling of the input raster
            "inputMask": True,
        }

    @staticmethod
    def _number(scalars: Dict[str, Any], name: str, default: Any, kind: type) -> Any:
        value = scalars.get(name)
        if value is None or value == "":
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r}: give a number (default {default}).")
        if kind is int and number != int(number):
            raise ValueError(f"{name}={value!r}: give a whole number of pixels or windows (default {default}).")
        return kind(number)

    # -- 4. the output table

    def getFields(self) -> str:
        """The output feature class's fields, as JSON."""
        return json.dumps(_FIELDS)

    def getGeometryType(self) -> int:
        """Polygons."""
        return GeometryType.Polygon

    # -- 5. one tile

    def vectorize(self, **pixelBlocks: Any) -> Dict[str, str]:
        """The objects in one tile whose box centre lies in its unpadded part, as Esri JSON features."""
        pixels = np.asarray(pixelBlocks["raster_pixels"])
        mask = pixelBlocks.get("raster_mask")
        valid = np.ones(pixels.shape[1:], dtype=bool) if mask is None else (np.asarray(mask) != 0).reshape(
            -1, *pixels.shape[1:]).any(axis=0)
        raw = torch.from_numpy(np.where(valid, pixels, 0).astype(np.float32))
        boxes, labels, scores = detect_tile(
            self.network, raw, torch.from_numpy(valid), self.window, self.padding, threshold=self.threshold,
            nms_overlap=self.nms_overlap, batch_size=self.batch_size,
            exclude_pad_detections=self.exclude_pad_detections,
        )
        return {"output_vectors": json.dumps(self.features(boxes, labels, scores, pixels.shape[1:]))}

    def features(self, boxes: Tensor, labels: Tensor, scores: Tensor, shape: Sequence[int]) -> Dict[str, Any]:
        """Esri JSON features of the boxes whose centre lies in the tile without its padding, rings in its pixels."""
        pad = self.padding
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centre[:, 0] >= pad) & (centre[:, 0] < shape[1] - pad)
                  & (centre[:, 1] >= pad) & (centre[:, 1] < shape[0] - pad))
        features = []
        for (x1, y1, x2, y2), label, score in zip((boxes[inside] - pad).tolist(), labels[inside].tolist(),
                                                  scores[inside].tolist()):
            features.append({
                "attributes": {"OID": len(features) + 1, "Class": self.class_names[label - 1],
                               "Confidence": score * 100},
                "geometry": {"rings": [[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]]},
            })
        return {
            "displayFieldName": "",
            "fieldAliases": {"FID": "FID", "Class": "Class", "Confidence": "Confidence"},
            "geometryType": "esriGeometryPolygon",
            "fields": [field for field in _FIELDS["fields"] if field["name"] != "Shape"],
            "features": features,
        }
