"""The detection defaults, in one place: every signature, the CLI's help and ``model_arguments`` quote them."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "MergeMethod",
    "THRESHOLD",
    "NMS_OVERLAP",
    "MERGE",
    "EDGE_TOLERANCE",
    "WINDOW_BATCH",
    "check_window_settings",
    "default_padding",
    "default_overlap",
    "default_batch_size",
]

MergeMethod = Literal["nms", "greedy"]

# Lowest score reported when a model has no threshold that fit calibrated (arcgis.learn's 0.5).
THRESHOLD = 0.5
# IoU above which two detections of a class are one object (intersection over the smaller box
# for the greedy merge): arcgis.learn's nms_overlap.
NMS_OVERLAP = 0.1
# The cross-window merge: 'nms' keeps the best of overlapping boxes, 'greedy' joins pieces.
MERGE: MergeMethod = "nms"
# Pixels within which a box edge touches a window side (the seam filter's tolerance).
EDGE_TOLERANCE = 2.0
# Windows per forward pass for an image or raster when the caller does not choose.
WINDOW_BATCH = 8


def default_padding(chip_size: int) -> int:
    """arcgis.learn's ``padding``: ``chip_size // 8`` pixels of context on each side of a window.

    Examples:
        >>> default_padding(256)
        32
    """
    return chip_size // 8


def default_overlap(chip_size: int) -> int:
    """Pixels adjacent windows share when none is given: ``chip_size // 4`` (about twice the padding).

    Examples:
        >>> default_overlap(256), default_overlap(100)
        (64, 25)
    """
    return chip_size // 4


def default_batch_size(device_type: str) -> int:
    """Windows per forward pass of ``detect_objects``: 2 on a CPU, 8 on an accelerator.

    On a CPU larger batches are no faster and cost memory: a resnet50 at 512 px ran 6.1, 7.2, 7.2
    and 6.1 windows/s at batch 1, 2, 4 and 8 (2 cores with AMX, bf16), and each window more in a
    batch added about 70 MB to the peak.

    Examples:
        >>> default_batch_size("cpu"), default_batch_size("cuda")
        (2, 8)
    """
    return 2 if device_type == "cpu" else WINDOW_BATCH


def check_window_settings(merge: str, batch_size: int) -> None:
    """Refuses a ``merge`` other than :data:`MergeMethod`'s and a ``batch_size`` under 1, before any work.

    Raises:
        ValueError: naming the value and the choices.

    Examples:
        >>> check_window_settings("greedy", 4)
        >>> check_window_settings("union", 4)
        Traceback (most recent call last):
        ...
        ValueError: merge='union': choose 'nms' (suppress duplicates) or 'greedy' (join pieces by IoS).
    """
    if merge not in get_args(MergeMethod):
        raise ValueError(f"merge={merge!r}: choose 'nms' (suppress duplicates) or 'greedy' (join pieces by IoS).")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: need at least 1 window per batch.")
