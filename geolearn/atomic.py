"""Files that appear whole or not at all.

A file geolearn writes is first written under a hidden temporary name in the same folder and then
moved onto its name with :func:`os.replace`, which is atomic on one file system: a reader, or a
run killed half-way, never meets half a file, and an existing file is only replaced by a complete
one. A run killed while writing leaves its temporary file behind, named
``.<stem>.<token>.partial<suffix>``; the next write of the same file removes it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["atomic_write", "partial_files"]

logger = logging.getLogger(__name__)


def partial_files(path: str | Path, suffixes: Sequence[str] = ()) -> list[Path]:
    """The temporary files that writes of ``path`` (and its companions' ``suffixes``) left, sorted.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".trees.0123abcd.partial.gpkg").write_bytes(b"half")
        >>> [p.name for p in partial_files(folder / "trees.gpkg")]
        ['.trees.0123abcd.partial.gpkg']
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    endings = "|".join(re.escape(s) for s in {path.suffix, *suffixes})
    # SQLite (a GeoPackage) keeps a -journal (or -wal, -shm) beside a file while it writes it.
    pattern = re.compile(rf"^\.{re.escape(path.stem)}\.[0-9a-f]{{8}}\.partial(?:{endings})(?:-journal|-wal|-shm)?$")
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


@contextmanager
def atomic_write(path: str | Path, companions: Sequence[str] = ()) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the file to; it becomes ``path`` when the block ends.

    The temporary name keeps the suffix (``.<stem>.<token>.partial<suffix>``), so writers that
    choose a format by suffix (GDAL's drivers) still choose the right one. When the block raises,
    the temporary file is removed and ``path`` is left as it was. Temporary files an earlier,
    killed write of ``path`` left are removed first.

    Args:
        path: the file to write; its folder must exist.
        companions: suffixes of files written beside it under the same stem (a shapefile's
            ``.shx``, ``.dbf``, ``.prj``, ...): each one written is moved onto ``path``'s stem
            after ``path`` itself, and an existing one that the write did not make is removed.

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
    for stale in partial_files(path, companions):
        stale.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted write of %s", stale, path)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    pieces = [(partial.with_suffix(s), path.with_suffix(s)) for s in companions if s != path.suffix]
    try:
        yield partial
        os.replace(partial, path)
        for piece, final in pieces:
            if piece.exists():
                os.replace(piece, final)
            else:
                final.unlink(missing_ok=True)  # the previous file's, which the new one does not have
    finally:
        for temporary in path.parent.glob(f"{glob.escape(partial.stem)}.*"):  # gone already after the replace
            temporary.unlink(missing_ok=True)
