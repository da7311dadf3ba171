"""The docstrings of the data, models, metrics, errors, learn and inference layers, the figures and the CLI.

Two checks per module:

* its ``>>>`` examples run and print what they show (``doctest.testmod`` with ELLIPSIS and
  NORMALIZE_WHITESPACE); examples that need files outside the test write them under
  ``tempfile`` (pointed at ``tmp_path`` here), and lines that cannot run here are marked
  ``# doctest: +SKIP``;
* every name in its ``__all__`` is documented: functions and classes have a docstring with an
  ``Examples:`` section, public methods and properties of its classes have a docstring, and every
  ``Args:`` entry names one real parameter (mkdocstrings/griffe in strict mode fails the docs
  build on a parameter that does not exist or on an entry such as ``a, b: ...``).

The section is spelled ``Examples:``: griffe's Google parser knows only that spelling and renders
its ``>>>`` lines as code; ``Example:`` becomes an admonition whose ``>>>`` lines render as nested
quotes, so a singular heading is refused too.

Exempt from the ``Examples:`` section: exception and warning classes (the module docstring of
:mod:`geolearn.errors` shows how they are caught) and constants (they cannot carry a docstring).
Record types (NamedTuples, dataclasses without behaviour) carry an ``Examples:`` section that may
point to the function returning them instead of repeating its example.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import tempfile
import warnings

import pytest
from rasterio.errors import NotGeoreferencedWarning

MODULES = [
    "geolearn.data.bandstats",
    "geolearn.data.boxes",
    "geolearn.data.dataset",
    "geolearn.data.esri",
    "geolearn.data.export",
    "geolearn.data.folders",
    "geolearn.data.georef",
    "geolearn.data.images",
    "geolearn.data.labels",
    "geolearn.data.normalization",
    "geolearn.data.prepare",
    "geolearn.data.raster_windows",
    "geolearn.data.tiling",
    "geolearn.data.transforms",
    "geolearn.models",
    "geolearn.models.anchors",
    "geolearn.models.backbones",
    "geolearn.models.boxes",
    "geolearn.models.loss",
    "geolearn.models.postprocess",
    "geolearn.models.portable",
    "geolearn.models.raster_function",
    "geolearn.models.retinanet",
    "geolearn.metrics",
    "geolearn.errors",
    "geolearn.learn.package",
    "geolearn.learn.emd",
    "geolearn.learn.evaluation",
    "geolearn.models.precision",
    "geolearn.learn.callbacks",
    "geolearn.learn.retinanet",
    "geolearn.learn.config",
    "geolearn.learn.lr_rule",
    "geolearn.learn.network_files",
    "geolearn.learn.training",
    "geolearn.atomic",
    "geolearn.models.tta",
    "geolearn.progress",
    "geolearn.inference.detect",
    "geolearn.inference.distributed",
    "geolearn.inference.merge",
    "geolearn.inference.defaults",
    "geolearn.inference.predict",
    "geolearn.inference.raster",
    "geolearn.inference.runner",
    "geolearn.inference.window_merge",
    "geolearn.inference.windows",
    "geolearn.viz",
    "geolearn.cli",
    "geolearn.sample",
    "geolearn.sample.scene",
    "geolearn.sample.demo",
]

# Modules whose docstrings hold no example of their own (a package re-exporting its modules' names).
NO_EXAMPLES = {"geolearn.models"}

_SINGULAR_EXAMPLE = re.compile(r"^\s*Example:\s*$", re.MULTILINE)
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_][\w, *]*?)\s*(\([^)]*\))?:(\s|$)")


def _public_names(module) -> list[tuple[str, object]]:
    return [(name, getattr(module, name)) for name in module.__all__]


def _documented_args(doc: str) -> list[str]:
    """The parameter names of a Google-style ``Args:`` section, as griffe reads them."""
    names: list[str] = []
    lines = inspect.cleandoc(doc).splitlines()
    for index, line in enumerate(lines):
        match = _SECTION.match(line)
        if not match:
            continue
        entry_indent = None
        for body in lines[index + 1:]:
            if not body.strip():
                continue
            indent = len(body) - len(body.lstrip())
            if indent <= len(match.group(1)):
                break  # the next section
            if entry_indent is None:
                entry_indent = indent
            if indent == entry_indent:
                entry = _ENTRY.match(body.strip())
                names.append(entry.group(1) if entry else body.strip())
    return names


def _parameters(obj) -> set[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return set()
    names = set()
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            names.add(f"*{parameter.name}")
        elif parameter.kind is parameter.VAR_KEYWORD:
            names.add(f"**{parameter.name}")
        else:
            names.add(parameter.name)
    return names


def _public_members(cls) -> list[tuple[str, object]]:
    """Methods and properties a class defines itself (not inherited), without a leading underscore."""
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            members.append((name, value.fget))
        elif isinstance(value, (classmethod, staticmethod)):
            members.append((name, value.__func__))
        elif inspect.isfunction(value):
            members.append((name, value))
    return members


def _needs_example(obj) -> bool:
    if inspect.isclass(obj):
        return not issubclass(obj, (BaseException, Warning))
    return inspect.isfunction(obj)


@pytest.mark.parametrize("module_name", MODULES)
def test_examples_run(module_name, tmp_path, monkeypatch):
    """Every ``>>>`` example of the module runs and prints what it shows."""
    module = importlib.import_module(module_name)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples' temporary files go here
    monkeypatch.setenv("GEOLEARN_CACHE_DIR", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        # Examples write plain PNG chips on purpose.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True, verbose=False
        )
    assert result.failed == 0, f"{module_name}: {result.failed} of {result.attempted} examples failed (see above)"
    if module_name not in NO_EXAMPLES:
        assert result.attempted > 0, f"{module_name}: no example ran"


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_are_documented(module_name):
    """Docstrings with an Example section on public functions and classes, docstrings on their
    public methods, and Args entries that name real parameters, one each."""
    module = importlib.import_module(module_name)
    problems = []
    for name, obj in _public_names(module):
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue  # constants: documented in the module docstring or by a comment
        if getattr(obj, "__module__", None) not in MODULES:
            continue  # re-exported from a module outside this list, checked (or not) there
        doc = obj.__doc__ or ""
        if not doc.strip():
            problems.append(f"{name}: no docstring")
            continue
        if _needs_example(obj) and "Examples:" not in doc:
            problems.append(f"{name}: no 'Examples:' section")
        documented = [(name, obj, doc)]
        if inspect.isclass(obj) and obj.__module__.startswith("geolearn."):
            for member_name, member in _public_members(obj):
                member_doc = member.__doc__ or ""
                if not member_doc.strip():
                    problems.append(f"{name}.{member_name}: no docstring")
                documented.append((f"{name}.{member_name}", member, member_doc))
        for label, target, target_doc in documented:
            if _SINGULAR_EXAMPLE.search(target_doc):
                problems.append(f"{label}: 'Example:' heading; griffe renders only 'Examples:' as code")
            parameters = _parameters(target)
            for arg in _documented_args(target_doc):
                if "," in arg:
                    problems.append(f"{label}: Args entry {arg!r} lists several parameters; give each its own")
                elif arg not in parameters:
                    problems.append(f"{label}: Args entry {arg!r} is not a parameter ({sorted(parameters)})")
    if _SINGULAR_EXAMPLE.search(module.__doc__ or ""):
        problems.append("module docstring: 'Example:' heading; griffe renders only 'Examples:' as code")
    assert not problems, f"{module_name}:\n" + "\n".join(problems)


def test_args_parser_reads_google_sections():
    """The checker itself: entries at the first indent level, continuation lines skipped."""
    doc = """Summary.

    Args:
        first: a value
            spanning two lines.
        second (int): typed.
        **kwargs: the rest.

    Returns:
        nothing: not an argument.
    """
    assert _documented_args(doc) == ["first", "second", "**kwargs"]
    assert _documented_args("Summary.\n\n    Args:\n        a, b: two at once.\n") == ["a, b"]
