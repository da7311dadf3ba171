"""Files that appear whole or not at all.

A file geolearn writes is first written under a hidden temporary name in the same folder and then
moved onto its name with :func:`os.replace`, which is atomic on one file system: a reader, or a
run killed half-way, never meets half a file, and an existing file is only replaced by a complete
one.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the file to; it becomes ``path`` when the block ends.

    The temporary name keeps the suffix (``.<stem>.<token>.partial<suffix>``), so writers that
    choose a format by suffix (GDAL's drivers) still choose the right one. When the block raises,
    the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to write; its folder must exist.

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with atomic_write(target) as partial:
        ...     _ = partial.write_text("complete")
        ...     target.exists()
        False
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('complete', ['notes.txt'])
    """
    path = Path(path)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # gone already after the replace
