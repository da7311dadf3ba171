"""Error and warning classes of geolearn.

Every error subclasses the builtin a caller would already catch (``ValueError``,
``FileNotFoundError``, ...), and its message names the file or value at fault and
says how to fix it. Catch :class:`GeolearnError` for any of them, the builtin for code
that should not depend on geolearn. :class:`GeolearnWarning` marks data geolearn used
anyway; ``warnings.simplefilter("error", GeolearnWarning)`` turns those into errors.

Examples:
    >>> from geolearn.data.esri import parse_classes
    >>> try:
    ...     parse_classes({"Classes": [{"Value": "pool"}]}, "model.emd")
    ... except ValueError as err:  # a LabelFormatError is a ValueError too
    ...     print(type(err).__name__, isinstance(err, GeolearnError))
    ...     print(err)
    LabelFormatError True
    model.emd: Classes[0] has Value 'pool'; it must be an integer (key 'Value' or 'ClassValue').
"""

from __future__ import annotations

__all__ = [
    "GeolearnError",
    "GeolearnWarning",
    "DataFolderError",
    "LabelFormatError",
    "NoChipsError",
    "ImageReadError",
    "BandMismatchError",
    "CRSMismatchError",
    "NoOverlapError",
    "OutputExistsError",
    "ModelDefinitionError",
    "InputNotFoundError",
    "InvalidArgumentError",
    "TrainingDivergedError",
    "OutputNotWritableError",
    "DistributedSetupError",
]


class GeolearnError(Exception):
    """Base class of every error geolearn raises on purpose."""


class GeolearnWarning(UserWarning):
    """Warnings about data geolearn used anyway (dropped chips, clipped boxes, ...)."""


class DataFolderError(GeolearnError, FileNotFoundError):
    """A training-data folder lacks something it needs (``images/``, ``labels/``, a label file)."""


class LabelFormatError(GeolearnError, ValueError):
    """A label file cannot be parsed or holds an impossible box."""


class NoChipsError(GeolearnError, ValueError):
    """No usable chips are left after reading a data folder or exporting a raster."""


class ImageReadError(GeolearnError, OSError):
    """An image chip or raster cannot be opened or read."""


class BandMismatchError(GeolearnError, ValueError):
    """Images with different band counts, or bands that do not match what was asked for."""


class CRSMismatchError(GeolearnError, ValueError):
    """Vector labels and a raster whose coordinate reference systems cannot be reconciled."""


class NoOverlapError(GeolearnError, ValueError):
    """Vector labels that do not overlap the raster they label."""


class OutputExistsError(GeolearnError, FileExistsError):
    """An output folder already holds results and overwriting was not asked for."""


class ModelDefinitionError(GeolearnError, ValueError):
    """A saved model (``.emd``, ``.pth`` or ``.dlpk``) that cannot be loaded as it is: a missing or
    mistyped EMD key, weights in an unexpected form, or an archive entry outside its folder."""


class InputNotFoundError(GeolearnError, FileNotFoundError):
    """An input raster or model package that does not exist, or a glob pattern that matches no file."""


class TrainingDivergedError(GeolearnError, FloatingPointError):
    """The training loss became NaN or infinite: ``fit`` stops, and says what to try."""


class InvalidArgumentError(GeolearnError, ValueError):
    """An argument geolearn cannot use: an unknown ``model_arguments`` key, a value of the wrong
    type, output field names that clash."""


class OutputNotWritableError(GeolearnError, PermissionError):
    """A folder geolearn was asked to write into refuses writes (permissions, a read-only disk)."""


class DistributedSetupError(GeolearnError, RuntimeError):
    """Processes launched to train together cannot: the rendezvous is not reached in time, or the
    ranks differ in versions or data (``torchrun``, ``geolearn train --nproc``)."""
