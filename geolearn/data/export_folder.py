"""The export's output folder: what shows an earlier export, and replacing one without losing anything.

An export writes ``images/``, ``labels/`` and four metadata files. :func:`check_output` refuses a
folder holding an earlier export unless ``overwrite=True``, and refuses files named like chips that
the earlier export did not record (new chips would replace them).

The new export is written whole into a hidden staging folder inside the output folder
(:func:`start_export`), the EMD last; until then the earlier export stays untouched, readable and
complete. :func:`swap_in_export` then deletes only what the earlier export recorded (its
``map.txt``'s files and the metadata files) and moves the new files in by renames, the EMD last.
A run killed while staging leaves a staging folder without an EMD, which the next export removes;
one killed during the swap leaves a complete staging folder, whose swap the next export or
``prepare_data`` finishes (:func:`finish_interrupted_exports`), so a reader never sees a mix.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

from geolearn.data.esri import EMD_FILE, MAP_FILE, STATS_FILE, read_map_txt
from geolearn.errors import GeolearnWarning, OutputExistsError

__all__ = ["SUMMARY_FILE", "STAGING_PREFIX", "check_output", "start_export", "swap_in_export",
           "finish_interrupted_exports"]

# The export's one logger, whichever of its modules logs: the name users configure.
logger = logging.getLogger("geolearn.data.export")

SUMMARY_FILE = "stats.txt"
STAGING_PREFIX = ".exporting-"
_METADATA_FILES = (EMD_FILE, STATS_FILE, MAP_FILE, SUMMARY_FILE)
# Names a new export may write into images/ and labels/: a leftover file with
# such a name would be replaced, so overwrite=True refuses instead.
_CHIP_NAME = re.compile(r"^\d{9}\.(tif|png|jpg|xml|txt)$", re.IGNORECASE)


def check_output(root: Path, overwrite: bool) -> None:
    """Refuses an output folder that holds an earlier export, unless overwriting, and one the
    new chips would clash in."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output_location {root} is a file; pass a folder.")
    finish_interrupted_exports(root, discard_unfinished=True)
    found = _export_traces(root)
    if found and not overwrite:
        raise OutputExistsError(
            f"output_location {root} already holds an export ({', '.join(found)}). Pass "
            "overwrite=True to replace it, or choose another output_location."
        )
    recorded = set(_recorded_files(root))
    leftovers = [p for folder in ("images", "labels") if (root / folder).is_dir()
                 for p in sorted((root / folder).iterdir()) if p not in recorded]
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
            stacklevel=3,
        )


def start_export(root: Path) -> Path:
    """Makes the hidden staging folder, with ``images/`` and ``labels/``, that a new export is written into."""
    staging = root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    (staging / "images").mkdir(parents=True)
    (staging / "labels").mkdir()
    return staging


def swap_in_export(staging: Path, root: Path) -> None:
    """Replaces ``root``'s export with the finished one in ``staging``; run again after a kill, it
    goes on where the killed run stopped.

    First the earlier export goes, EMD first and ``map.txt`` last; then the new files come in by
    renames: chips and labels, ``map.txt``, the statistics, the EMD last. While the new ``map.txt``
    is still staged, ``root``'s is the earlier export's, so the first step is safe to repeat.
    """
    if (staging / MAP_FILE).is_file():
        _remove_recorded_files(root)
        for folder in ("images", "labels"):
            (root / folder).mkdir(exist_ok=True)
            for entry in sorted((staging / folder).iterdir()):
                os.replace(entry, root / folder / entry.name)
        os.replace(staging / MAP_FILE, root / MAP_FILE)
    for name in (STATS_FILE, SUMMARY_FILE, EMD_FILE):
        if (staging / name).is_file():
            os.replace(staging / name, root / name)
    shutil.rmtree(staging, ignore_errors=True)


def finish_interrupted_exports(root: Path, *, discard_unfinished: bool = False) -> list[Path]:
    """Finishes the swap of each export killed during it; removes the staging folders of exports
    killed before they finished, when ``discard_unfinished`` (the next export does; ``prepare_data``
    does not, as another process may still be writing one).

    Returns:
        The staging folders of unfinished exports that are left.
    """
    unfinished = []
    for staging in sorted(root.glob(STAGING_PREFIX + "*")) if root.is_dir() else []:
        if (staging / EMD_FILE).is_file():
            logger.warning("an export into %s was killed while moving its files in: finishing that", root)
            swap_in_export(staging, root)
        elif discard_unfinished:
            shutil.rmtree(staging, ignore_errors=True)
            logger.warning("removed %s, left by an export into %s that did not finish", staging, root)
        else:
            unfinished.append(staging)
    return unfinished


def _export_traces(root: Path) -> list[str]:
    """What in ``root`` shows an earlier export: non-empty images/ or labels/, metadata files."""
    found = [f"{name}/" for name in ("images", "labels")
             if (root / name).is_dir() and any((root / name).iterdir())]
    found += [name for name in _METADATA_FILES
              if (root / name).is_file() and (root / name).stat().st_size > 0]
    return found


def _recorded_files(root: Path) -> list[Path]:
    """The files an earlier export in ``root`` wrote, in the order they are removed: the EMD (the
    record that it finished) first and ``map.txt`` (the list of what to remove) last, so that a
    removal killed half-way leaves a folder prepare_data refuses as unfinished."""
    written: list[Path] = [root / EMD_FILE]
    if (root / MAP_FILE).is_file():
        # read_map_txt keeps bare file names: a listed path can never leave images/ or labels/.
        for image, label in read_map_txt(root):
            written += [root / "images" / image, root / "labels" / label]
    return written + [root / name for name in _METADATA_FILES if name not in (EMD_FILE, MAP_FILE)] + [root / MAP_FILE]


def _remove_recorded_files(root: Path) -> None:
    """Deletes what an earlier export wrote (see :func:`_recorded_files`), nothing else."""
    removed = 0
    for path in _recorded_files(root):
        if path.is_file():
            path.unlink()
            removed += 1
    if removed:
        logger.info("overwrite=True: removed %d files of the earlier export in %s", removed, root)
