"""Detection on a Dask cluster: one task per input raster, the model loaded once per worker.

:func:`geolearn.inference.detect.detect_objects` imports this module only when it is given
``client=``; nothing else in geolearn imports Dask (install it with ``pip install geolearn[dask]``).

How the model reaches the workers:

* a **saved model path** (``.dlpk``, ``.emd`` or folder) is loaded by each worker process
  the first time one of its tasks needs it, and kept in a small per-process cache keyed by
  the absolute path and the file's modification time;
* a **RetinaNet object** is saved once, to a temporary package folder, and then travels as
  that path (deleted when the run ends);
* any **other object with a ``detect_objects`` method** is scattered to every worker once.

Paths travel, not bytes: the rasters and the model package must be readable by the workers
under the same paths. That holds for a ``LocalCluster`` and for clusters sharing a file
system; elsewhere, put the package and the rasters on storage every worker mounts.

The unit of work is a whole raster. A single huge raster is not split into window blocks
across workers: tile it (or list the tiles of a VRT mosaic) to spread it over the cluster.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd

from geolearn.errors import InputNotFoundError
from geolearn.inference.predict import detect_with_model, is_retinanet
from geolearn.progress import progress_bar

__all__ = ["MAX_CACHED_MODELS", "detect_on_cluster", "load_cached_model", "loaded_packages"]

logger = logging.getLogger(__name__)

# Models a worker process keeps loaded. A long-lived cluster serves run after run; a resnet50
# RetinaNet holds ~150 MB, so only the most recently used few stay.
MAX_CACHED_MODELS = 2

_CACHE: OrderedDict[tuple[str, int], Any] = OrderedDict()
_LOADS: Counter = Counter()
_LOCK = threading.Lock()  # a worker with several threads loads a package once, not once per thread


def _package_stamp(package: Path) -> int:
    """Modification time of the package (its .emd for a folder): a re-saved package is reloaded."""
    if package.is_dir():
        emds = sorted(package.glob("*.emd"))
        return max((p.stat().st_mtime_ns for p in emds), default=package.stat().st_mtime_ns)
    return package.stat().st_mtime_ns


def load_cached_model(package: str | os.PathLike) -> Any:
    """The model of a saved package, loaded once per process (an LRU of :data:`MAX_CACHED_MODELS`).

    Args:
        package: a ``.dlpk``, ``.emd`` or model folder, readable by this process.

    Returns:
        The ``RetinaNet``.

    Raises:
        InputNotFoundError: the package is not there (on this worker).

    Examples:
        >>> import tempfile
        >>> from geolearn.data.esri import ClassInfo
        >>> from geolearn.data.normalization import Normalization
        >>> from geolearn.learn.config import ModelConfig
        >>> from geolearn.learn.package import save_package
        >>> from geolearn.models.retinanet import build_retinanet
        >>> network = build_retinanet("resnet18", n_classes=1, pretrained=False, n_anchors=1)  # untrained
        >>> config = ModelConfig(class_infos=[ClassInfo(1, "pool", (0, 168, 132))], chip_size=64,
        ...                      normalization=Normalization.for_rgb8(), n_bands=3, backbone="resnet18",
        ...                      scales=[1.0], ratios=[1.0])
        >>> emd = config.to_emd("pools.pth")
        >>> folder = save_package(Path(tempfile.mkdtemp()) / "pools", "pools", state_dict=network.state_dict(), emd=emd)
        >>> model = load_cached_model(folder / "pools.emd")
        >>> type(model).__name__, model.backbone
        ('RetinaNet', 'resnet18')
        >>> load_cached_model(folder / "pools.emd") is model  # the second task on this worker reuses it
        True
        >>> loaded_packages()[str((folder / "pools.emd").resolve())]
        1
    """
    from geolearn.learn.retinanet import RetinaNet

    path = Path(package).resolve()
    if not path.exists():
        raise InputNotFoundError(f"model {path} is not readable on this Dask worker; put the model package on "
                                 "storage every worker mounts, under the same path.")
    key = (str(path), _package_stamp(path))
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        model = RetinaNet.from_model(path)
        _LOADS[str(path)] += 1
        _CACHE[key] = model
        while len(_CACHE) > MAX_CACHED_MODELS:
            _CACHE.popitem(last=False)
        logger.info("worker %d loaded model %s", os.getpid(), path)
        return model


def loaded_packages() -> dict[str, int]:
    """How many times this process loaded each package (for ``client.run``: one per worker expected).

    Returns:
        ``{absolute package path: loads}`` of :func:`load_cached_model` in this process.

    Examples:
        Asked of every worker of a cluster, after a run on a saved model:

        >>> client.run(loaded_packages)  # doctest: +SKIP
        {'tcp://127.0.0.1:40527': {'/shared/models/trees/trees.dlpk': 1},
         'tcp://127.0.0.1:43911': {'/shared/models/trees/trees.dlpk': 1}}

        In this process (see :func:`load_cached_model` for a load):

        >>> all(Path(path).is_absolute() and loads >= 1 for path, loads in loaded_packages().items())
        True
    """
    return dict(_LOADS)


def _detect_task(raster: str, package: str | None, detector: Any, arguments: Mapping[str, Any]) -> gpd.GeoDataFrame:
    """Runs on a worker: one raster's detections."""
    model = load_cached_model(package) if package is not None else detector
    return detect_with_model(model, Path(raster), **arguments, progress=False)


def detect_on_cluster(
    client: Any,
    rasters: Sequence[Path],
    model: Any,
    arguments: Mapping[str, Any],
    *,
    progress: bool = True,
) -> list[gpd.GeoDataFrame]:
    """Detects each raster on a Dask cluster; the frames come back in the rasters' order.

    Args:
        client: a ``dask.distributed.Client``.
        rasters: raster paths the workers can read.
        model: a saved model's path, a ``RetinaNet`` (saved once to a temporary package), or
            another object with ``detect_objects`` (scattered once to every worker).
        arguments: keyword arguments of ``detect_objects`` (checked model arguments).
        progress: a progress bar over finished rasters.

    Returns:
        One GeoDataFrame per raster, as ``model.detect_objects(raster, **arguments)`` returns it.

    Examples:
        ``detect_objects(..., client=client)`` calls it and merges the frames; called directly:

        >>> from distributed import Client, LocalCluster  # doctest: +SKIP
        >>> from geolearn.inference.detect import resolve_rasters
        >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
        >>> rasters = resolve_rasters("tiles/*.tif")  # doctest: +SKIP
        >>> frames = detect_on_cluster(client, rasters, "models/trees/trees.dlpk", {"threshold": 0.4})  # doctest: +SKIP
        >>> len(frames) == len(rasters), list(frames[0].columns)  # doctest: +SKIP
        (True, ['Class', 'Confidence', 'geometry'])
    """
    from distributed import as_completed

    temporary = None
    package: str | None = None
    detector: Any = None
    try:
        if isinstance(model, (str, os.PathLike)):
            if not Path(model).exists():
                raise InputNotFoundError(f"model {model}: no such file or folder; give the model's .dlpk, .emd or "
                                         "its folder (what RetinaNet.save wrote).")
            package = str(Path(model).resolve())
        elif is_retinanet(model):
            temporary = Path(tempfile.mkdtemp(prefix="geolearn-model-"))
            package = str(model.save(temporary / "model", compute_metrics=False))
            logger.info("saved the model once to %s for the workers", package)
        else:
            [detector] = client.scatter([model], broadcast=True)
        futures = client.map(_detect_task, [str(r) for r in rasters], package=package, detector=detector,
                             arguments=dict(arguments), pure=False)
        if progress:
            for _ in progress_bar(as_completed(futures), total=len(futures)):
                pass
        return client.gather(futures)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
