"""detect_objects(client=...) on a LocalCluster of 2 worker processes: same features as a local run."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

from detect_stubs import OBJECTS, BrightSquares, write_tiles
from distributed import Client, LocalCluster

from geolearn.errors import InputNotFoundError
from geolearn.inference.detect import detect_objects


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes; closed (workers included) after the module's tests."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           host="127.0.0.1", worker_dashboard_address=None)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def same_features(first, second):
    assert first.crs == second.crs
    assert list(first.columns) == list(second.columns)
    assert first.drop(columns="geometry").equals(second.drop(columns="geometry"))
    assert all(a.equals_exact(b, 1e-9) for a, b in zip(first.geometry, second.geometry))


def test_the_dask_path_returns_the_local_features_with_seams_merged_once(client, tmp_path):
    tiles = write_tiles(tmp_path / "tiles")
    local = detect_objects(tiles, BrightSquares(), progress=False)
    distributed = detect_objects(tiles, BrightSquares(), client=client, progress=False)
    assert len(distributed) == len(OBJECTS)  # the seam and the four-tile-corner objects once each
    same_features(local, distributed)


def test_a_model_path_missing_is_reported_before_any_task(client, tmp_path):
    tiles = write_tiles(tmp_path / "tiles", grid=(1, 2))
    with pytest.raises(InputNotFoundError, match="no such file or folder"):
        detect_objects(tiles, tmp_path / "gone.dlpk", client=client, progress=False)


# ----------------------------------------------------------------------------- a real saved model

@pytest.fixture(scope="module")
def saved_model(tiny_data, tmp_path_factory):
    from detect_stubs import save_untrained_model

    return save_untrained_model(tiny_data, tmp_path_factory.mktemp("model") / "untrained")


def test_each_worker_loads_a_model_package_once_and_matches_the_local_run(client, saved_model, tmp_path):
    import torch
    from detect_stubs import UNTRAINED_THRESHOLD

    from geolearn.inference.distributed import loaded_packages

    tiles = write_tiles(tmp_path / "tiles")
    arguments = {"threshold": UNTRAINED_THRESHOLD}
    package = saved_model / "untrained.dlpk"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the single-threaded workers: the same kernels, the same sums
    try:
        local = detect_objects(tiles, package, arguments, max_overlap_ratio=0.5, progress=False)
    finally:
        torch.set_num_threads(threads)
    for _ in range(2):  # a second run reuses the workers' loaded model
        remote = detect_objects(tiles, package, arguments, max_overlap_ratio=0.5, client=client, progress=False)
        same_features(local, remote)
    loads = client.run(loaded_packages)
    counts = [n for per_worker in loads.values() for path, n in per_worker.items() if path == str(package.resolve())]
    assert counts and all(n == 1 for n in counts)


def test_a_model_object_travels_as_one_temporary_package(client, saved_model, tmp_path, monkeypatch):
    import tempfile

    from detect_stubs import UNTRAINED_THRESHOLD

    from geolearn import RetinaNet

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    tiles = write_tiles(tmp_path / "tiles", grid=(1, 2))
    model = RetinaNet.from_model(saved_model)
    found = detect_objects(tiles, model, {"threshold": UNTRAINED_THRESHOLD}, client=client, progress=False)
    assert len(found) > 0
    assert list((tmp_path / "scratch").iterdir()) == []  # the temporary package is gone


def test_the_cli_detects_on_a_scheduler_address(client, saved_model, tmp_path, capsys):
    import geopandas as gpd

    from detect_stubs import UNTRAINED_THRESHOLD
    from geolearn.cli import main

    tiles = write_tiles(tmp_path / "tiles", grid=(1, 2))
    out = tmp_path / "found.gpkg"
    assert main(["detect", str(tmp_path / "tiles" / "*.tif"), "--model", str(saved_model), "--out", str(out),
                 "--threshold", str(UNTRAINED_THRESHOLD), "--scheduler", client.scheduler.address, "-q"]) == 0
    assert "on the Dask cluster at" in capsys.readouterr().out
    local = detect_objects(tiles, saved_model, {"threshold": UNTRAINED_THRESHOLD}, progress=False)
    assert len(gpd.read_file(out)) == len(local)
    assert client.status == "running"  # the command closed its own connection, not the cluster
