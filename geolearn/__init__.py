"""geolearn: find objects in aerial and satellite imagery, the arcgis.learn way, in the open.

>>> from geolearn import prepare_data, export_training_data
"""

try:  # TEMP until export lands
    from geolearn.data.export import export_training_data
except ModuleNotFoundError:
    pass
from geolearn.data.prepare import prepare_data

__all__ = ["prepare_data", "export_training_data"]
__version__ = "0.1.0"
