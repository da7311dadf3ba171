"""Detection over whole rasters and sets of rasters: arcgis.learn's ``detect_objects``.

:func:`detect_objects` runs a model over one raster, a list or glob of tiles, or a VRT mosaic,
locally or on a Dask cluster (``client=``), and merges everything into one layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["detect_objects"]

# Imported on first use, as geolearn/__init__.py does: the detection defaults and the window
# engine (inference.defaults, inference.predict, which RetinaNet and ModelConfig import) then
# load without detect.py's geopandas and Dask glue.
if TYPE_CHECKING:
    from geolearn.inference.detect import detect_objects


def __getattr__(name: str) -> Any:
    if name != "detect_objects":
        raise AttributeError(f"module 'geolearn.inference' has no attribute {name!r}")
    from geolearn.inference.detect import detect_objects

    globals()[name] = detect_objects
    return detect_objects
