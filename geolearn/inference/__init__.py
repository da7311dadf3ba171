"""Detection over whole rasters and sets of rasters: arcgis.learn's ``detect_objects``.

:func:`detect_objects` runs a model over one raster, a list or glob of tiles, or a VRT mosaic,
locally or on a Dask cluster (``client=``), and merges everything into one layer.
"""

from geolearn.inference.detect import detect_objects

__all__ = ["detect_objects"]
