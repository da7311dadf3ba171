"""Tests of geolearn.errors: every error subclasses the builtin a caller already catches."""

from __future__ import annotations

import inspect
import warnings

import pytest

import geolearn.errors as errors
from geolearn.errors import (
    DistributedSetupError,
    BandMismatchError,
    CRSMismatchError,
    DataFolderError,
    GeolearnError,
    GeolearnWarning,
    ImageReadError,
    InputNotFoundError,
    InvalidArgumentError,
    LabelFormatError,
    ModelDefinitionError,
    NoChipsError,
    NoOverlapError,
    OutputExistsError,
    OutputNotWritableError,
    TrainingDivergedError,
)

BUILTIN_OF = {
    DataFolderError: FileNotFoundError,
    LabelFormatError: ValueError,
    NoChipsError: ValueError,
    ImageReadError: OSError,
    BandMismatchError: ValueError,
    CRSMismatchError: ValueError,
    NoOverlapError: ValueError,
    OutputExistsError: FileExistsError,
    ModelDefinitionError: ValueError,
    InputNotFoundError: FileNotFoundError,
    InvalidArgumentError: ValueError,
    TrainingDivergedError: FloatingPointError,
    OutputNotWritableError: PermissionError,
    DistributedSetupError: RuntimeError,
}


@pytest.mark.parametrize("error_class", list(BUILTIN_OF), ids=lambda c: c.__name__)
def test_error_subclasses_its_builtin_and_geolearn_error(error_class: type) -> None:
    builtin = BUILTIN_OF[error_class]
    assert issubclass(error_class, builtin)
    assert issubclass(error_class, GeolearnError)
    # raised, it is caught by a plain `except <builtin>` and keeps its message
    with pytest.raises(builtin, match="names the file"):
        raise error_class("names the file")


def test_file_errors_are_os_errors() -> None:
    # FileNotFoundError and FileExistsError are OSErrors: callers catching OSError see them too
    for error_class in (DataFolderError, OutputExistsError, ImageReadError, OutputNotWritableError):
        assert issubclass(error_class, OSError)


def test_every_public_error_class_is_covered() -> None:
    public = {getattr(errors, name) for name in errors.__all__}
    error_classes = {c for c in public if inspect.isclass(c) and issubclass(c, Exception)}
    error_classes -= {GeolearnError, GeolearnWarning}
    assert error_classes == set(BUILTIN_OF)


def test_base_and_warning_classes() -> None:
    assert issubclass(GeolearnError, Exception)
    assert issubclass(GeolearnWarning, UserWarning)
    assert not issubclass(GeolearnWarning, GeolearnError)
    with pytest.warns(GeolearnWarning, match="3 chips"):
        warnings.warn("3 chips dropped", GeolearnWarning)
