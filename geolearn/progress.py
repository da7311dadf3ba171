"""Progress bars where someone watches them, and nothing in a log.

geolearn's long jobs (export, training, evaluation, detection) show fastprogress bars, the way
fastai does in a notebook. In a log file or a CI run a bar is a carriage-return update per step,
hundreds per epoch. fastprogress means to print only to a terminal, but it tests
``getattr(stdout, 'isatty', False)``, the method itself, which is always true; so geolearn
decides here, once for every bar it shows (:func:`watched`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["watched", "progress_bar"]

T = TypeVar("T")


def watched() -> bool:
    """True where a moving bar is seen: in a Jupyter notebook, or with stdout a terminal.

    Examples:
        >>> import io, contextlib
        >>> with contextlib.redirect_stdout(io.StringIO()):  # a log file, a pipe, CI
        ...     seen = watched()
        >>> seen
        False
    """
    from fastprogress.fastprogress import IN_NOTEBOOK

    isatty = getattr(sys.stdout, "isatty", None)
    return bool(IN_NOTEBOOK) or bool(callable(isatty) and isatty())


def progress_bar(items: Iterable[T], total: int | None = None, leave: bool = True) -> Iterable[T]:
    """fastprogress's bar over ``items`` where :func:`watched`, else ``items`` themselves.

    Examples:
        >>> import io, contextlib
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     total = sum(progress_bar(range(4)))
        >>> total, out.getvalue()  # nothing written off a terminal
        (6, '')
    """
    if not watched():
        return items
    from fastprogress.fastprogress import progress_bar as fastprogress_bar

    return fastprogress_bar(items, total=total, leave=leave)
