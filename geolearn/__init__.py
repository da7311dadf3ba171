"""geolearn: find objects in aerial and satellite imagery, the arcgis.learn way, in the open.

>>> from geolearn import prepare_data, RetinaNet, export_training_data, detect_objects
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from geolearn._version import __version__
from geolearn import threads as _threads

# Before anything imports torch: libgomp reads its wait policy once, when torch loads it.
_threads.choose_wait_policy()

__all__ = ["prepare_data", "export_training_data", "RetinaNet", "detect_objects", "__version__"]

# Public names are imported on first use: prepare_data pulls in fastai (about 1 GB of
# memory and seconds of start-up), which exporting chips or generating data never needs.
_PUBLIC = {
    "prepare_data": "geolearn.data.prepare",
    "export_training_data": "geolearn.data.export",
    "RetinaNet": "geolearn.learn.retinanet",
    "detect_objects": "geolearn.inference.detect",
}

if TYPE_CHECKING:
    from geolearn.data.export import export_training_data
    from geolearn.data.prepare import prepare_data
    from geolearn.inference.detect import detect_objects
    from geolearn.learn.retinanet import RetinaNet


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'geolearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
