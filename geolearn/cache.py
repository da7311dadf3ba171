"""Where geolearn keeps what it can make again: ``$GEOLEARN_CACHE_DIR``, else ``<user cache>/geolearn``.

Extracted ``.dlpk`` packages (:mod:`geolearn.learn.package`) and compiled networks
(:mod:`geolearn.models.compiled`) each have a folder under it. Deleting it costs time only.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_VARIABLE", "cache_root"]

CACHE_VARIABLE = "GEOLEARN_CACHE_DIR"


def cache_root() -> Path:
    """``$GEOLEARN_CACHE_DIR``, else ``$XDG_CACHE_HOME/geolearn``, else ``~/.cache/geolearn``.

    Examples:
        >>> cache_root()  # doctest: +SKIP
        PosixPath('/home/analyst/.cache/geolearn')
    """
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geolearn"
