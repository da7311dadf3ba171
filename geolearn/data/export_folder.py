"""The export's output folder: what shows an earlier export, and replacing one without losing the user's files.

An export writes ``images/``, ``labels/`` and four metadata files. :func:`check_output` refuses a
folder holding an earlier export unless ``overwrite=True``; :func:`prepare_output` then deletes
only what that export recorded (its ``map.txt``'s files and the metadata files), refuses files
named like chips that it did not record (an interrupted export?) and leaves everything else, with
a counted warning.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from geolearn.data.esri import EMD_FILE, MAP_FILE, STATS_FILE, read_map_txt
from geolearn.errors import GeolearnWarning, OutputExistsError

__all__ = ["SUMMARY_FILE", "check_output", "prepare_output"]

# The export's one logger, whichever of its modules logs: the name users configure.
logger = logging.getLogger("geolearn.data.export")

SUMMARY_FILE = "stats.txt"
_METADATA_FILES = (EMD_FILE, STATS_FILE, MAP_FILE, SUMMARY_FILE)
# Names a new export may write into images/ and labels/: a leftover file with
# such a name would be replaced, so overwrite=True refuses instead.
_CHIP_NAME = re.compile(r"^\d{9}\.(tif|png|jpg|xml|txt)$", re.IGNORECASE)


def check_output(root: Path, overwrite: bool) -> None:
    """Refuses an output folder that holds an earlier export, unless overwriting."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output_location {root} is a file; pass a folder.")
    found = _export_traces(root)
    if found and not overwrite:
        raise OutputExistsError(
            f"output_location {root} already holds an export ({', '.join(found)}). Pass "
            "overwrite=True to replace it, or choose another output_location."
        )


def prepare_output(root: Path) -> None:
    """Makes ``root/images`` and ``root/labels``, clearing an earlier export first."""
    if _export_traces(root):
        _remove_previous_export(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)


def _export_traces(root: Path) -> list[str]:
    """What in ``root`` shows an earlier export: non-empty images/ or labels/, metadata files."""
    found = [f"{name}/" for name in ("images", "labels")
             if (root / name).is_dir() and any((root / name).iterdir())]
    found += [name for name in _METADATA_FILES
              if (root / name).is_file() and (root / name).stat().st_size > 0]
    return found


def _remove_previous_export(root: Path) -> None:
    """Deletes what an earlier export wrote (its map.txt's files, the metadata files), nothing else."""
    # The EMD, the record that the export finished, goes first and map.txt, the list of what to
    # remove, last: a removal killed half-way leaves a folder prepare_data refuses as unfinished.
    written: list[Path] = [root / EMD_FILE]
    if (root / MAP_FILE).is_file():
        # read_map_txt keeps bare file names: a listed path can never leave images/ or labels/.
        for image, label in read_map_txt(root):
            written += [root / "images" / image, root / "labels" / label]
    written += [root / name for name in _METADATA_FILES if name not in (EMD_FILE, MAP_FILE)] + [root / MAP_FILE]
    removed = 0
    for path in written:
        if path.is_file():
            path.unlink()
            removed += 1
    logger.info("overwrite=True: removed %d files of the earlier export in %s", removed, root)

    leftovers = [p for folder in ("images", "labels") if (root / folder).is_dir()
                 for p in sorted((root / folder).iterdir())]
    clashing = [p for p in leftovers if _CHIP_NAME.match(p.name)]
    if clashing:
        raise OutputExistsError(
            f"output_location {root}: {len(clashing)} files named like chips or labels (e.g. "
            f"{clashing[0].relative_to(root)}) are not listed in the earlier export's map.txt "
            "(an interrupted export?). geolearn deletes only files an export recorded, and new "
            "chips would replace these: delete them yourself, or choose another output_location."
        )
    if leftovers:
        warnings.warn(
            f"output_location {root}: {len(leftovers)} other files in images/ and labels/ were not "
            "written by the earlier export and are left in place; prepare_data may pick them up.",
            GeolearnWarning,
            stacklevel=4,
        )
