"""The network layer: RetinaNet with arcgis.learn's module names, its anchors, loss and decoding.

Parts, each pure or a small ``nn.Module``, that :mod:`geolearn.learn` puts together:

* :mod:`~geolearn.models.backbones` — the ResNet table and :func:`build_encoder` (ImageNet
  weights when they can be had, multispectral first convolution);
* :mod:`~geolearn.models.retinanet` — :class:`RetinaNetModel` (state_dict-compatible with
  arcgis.learn), :func:`build_retinanet`, :func:`param_groups`;
* :mod:`~geolearn.models.anchors` — :func:`make_anchors` in arcgis.learn's (cy, cx, h, w) format,
  :func:`anchor_coverage` and :func:`suggest_anchors` for small aerial objects;
* :mod:`~geolearn.models.boxes` — the one place where box formats convert, :func:`encode`/:func:`decode`;
* :mod:`~geolearn.models.loss` — :class:`RetinaNetLoss` (focal + smooth-L1) and :func:`match_anchors`;
* :mod:`~geolearn.models.postprocess` — :func:`detect`: scores, boxes in chip pixels, NMS.
"""

from __future__ import annotations

from geolearn.models.anchors import (
    DEFAULT_RATIOS,
    DEFAULT_SCALES,
    AnchorFit,
    anchor_coverage,
    level_sizes,
    make_anchors,
    suggest_anchors,
)
from geolearn.models.backbones import BACKBONES, build_encoder, supported_backbones
from geolearn.models.boxes import (
    cthw_to_chip,
    cthw_to_xyxy,
    decode,
    encode,
    xyxy_to_cthw,
)
from geolearn.models.loss import RetinaNetLoss, match_anchors
from geolearn.models.postprocess import Detections, detect
from geolearn.models.retinanet import RetinaNetModel, build_retinanet, param_groups

__all__ = [
    "BACKBONES",
    "supported_backbones",
    "build_encoder",
    "RetinaNetModel",
    "build_retinanet",
    "param_groups",
    "DEFAULT_SCALES",
    "DEFAULT_RATIOS",
    "level_sizes",
    "make_anchors",
    "anchor_coverage",
    "suggest_anchors",
    "AnchorFit",
    "cthw_to_xyxy",
    "xyxy_to_cthw",
    "cthw_to_chip",
    "encode",
    "decode",
    "RetinaNetLoss",
    "match_anchors",
    "Detections",
    "detect",
]
