"""Data-parallel training: the sharding rules against hand-computed layouts, then two gloo
processes under ``torchrun`` training, validating and saving for real (tests/distributed_fit.py)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_CHIPS, make_folder
from geolearn.errors import InvalidArgumentError
from geolearn.learn import distributed
from geolearn.learn.distributed import training_steps, validation_steps

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the sharding rules


def test_training_steps_deal_each_step_out_by_hand():
    # 10 chips in batches of 4: ceil(10 / 4) = 3 steps, [9 8 7] [6 5 4] [3 2 1 0]; each is cut into
    # parts 0 and 1 ([9] [8 7], [6] [5 4], [3 2] [1 0]); rank 0 takes parts 0, 1, 0, rank 1 parts 1, 0, 1.
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert training_steps(order, batch_size=4, world_size=2, rank=0) == [[9], [5, 4], [3, 2]]
    assert training_steps(order, batch_size=4, world_size=2, rank=1) == [[8, 7], [6], [1, 0]]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 200), batch_size=st.integers(1, 32), world_size=st.integers(1, 8))
def test_training_steps_cover_every_chip_once_in_equal_step_counts(n, batch_size, world_size):
    order = list(range(n))[::-1]
    try:
        shards = [training_steps(order, batch_size, world_size, r) for r in range(world_size)]
    except InvalidArgumentError as err:
        assert n // -(-n // batch_size) < world_size  # refused only when a rank would get an empty step
        assert f"batch_size >= {world_size}" in str(err)
        return
    assert len({len(steps) for steps in shards}) == 1  # DDP needs the same number of backward passes
    chips = [chip for steps in shards for step in steps for chip in step]
    assert sorted(chips) == list(range(n))  # disjoint and covering
    for j in range(len(shards[0])):
        sizes = [len(steps[j]) for steps in shards]
        assert min(sizes) >= 1 and sum(sizes) <= batch_size and max(sizes) - min(sizes) <= 1


def test_training_steps_refuse_a_batch_smaller_than_the_processes():
    with pytest.raises(InvalidArgumentError, match=r"batch_size=2 .* 4 processes; prepare_data with batch_size >= 4"):
        training_steps(range(10), batch_size=2, world_size=4, rank=0)


@pytest.mark.parametrize("n, batch_size, world_size", [(10, 4, 2), (5, 4, 2), (3, 4, 4), (17, 3, 3)])
def test_validation_steps_are_one_process_batches_in_rank_order(n, batch_size, world_size):
    one_process = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    dealt = [validation_steps(n, batch_size, world_size, r) for r in range(world_size)]
    assert [batch for steps in dealt for batch in steps] == one_process


def test_one_process_needs_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched() and not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.summed([1.0, 2.5]) == [1.0, 2.5] and distributed.gathered("x") == ["x"]


def test_fastai_is_kept_blind_to_the_launch_and_the_variables_come_back(monkeypatch):
    from fastai.torch_core import num_distrib, rank_distrib

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with distributed.fastai_single_process():
        assert (num_distrib(), rank_distrib()) == (0, 0)
    assert (num_distrib(), rank_distrib()) == (2, 1)



def test_a_bad_timeout_is_refused_before_joining(monkeypatch):
    import torch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="GEOLEARN_DIST_TIMEOUT='soon'"):
        distributed.join_process_group(torch.device("cpu"))


# ----------------------------------------------------------------------------- two processes


def _torchrun(chips: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "distributed_fit.py"), str(chips), str(out), *extra]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return done, time.perf_counter() - started


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-epoch fit on TINY_CHIPS by two gloo processes: (chips, output folder, stdout, per-rank records)."""
    root = tmp_path_factory.mktemp("ddp")
    chips = make_folder(root / "chips", TINY_CHIPS)
    done, _ = _torchrun(chips, root / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads((root / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    return chips, root / "out", done.stdout, records


def test_ranks_end_with_the_same_weights(two_ranks):
    _, _, _, records = two_ranks
    assert records[0]["weights"] == records[1]["weights"]  # though each rank started from its own seed
    assert records[0]["weights_without_checkpoint"] == records[1]["weights_without_checkpoint"]


def test_a_time_budget_stops_every_rank_at_the_same_step(two_ranks):
    _, _, _, records = two_ranks
    assert 1 <= records[0]["timed_epochs"] == records[1]["timed_epochs"] < 50
    assert records[0]["weights_after_time_budget"] == records[1]["weights_after_time_budget"]


def test_lr_find_gives_every_rank_rank_0s_choice(two_ranks):
    _, _, _, records = two_ranks
    assert records[0]["lr_find"] == records[1]["lr_find"] > 0


def test_each_epoch_deals_every_training_chip_to_one_rank(two_ranks):
    _, _, _, records = two_ranks
    n = records[0]["train_chips"]
    for epoch in range(3):  # two epochs, then one more in a second fit
        rank0, rank1 = records[0]["shards"][epoch], records[1]["shards"][epoch]
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == list(range(n))
    assert records[0]["shards"][0] != records[0]["shards"][1]  # reshuffled each epoch


def test_each_rank_draws_its_own_augmentations(two_ranks):
    _, _, _, records = two_ranks
    torch_rng, python_rng, crops = zip(*(record["draws"] for record in records))
    assert torch_rng[0] != torch_rng[1] and python_rng[0] != python_rng[1] and crops[0] != crops[1]


def test_every_rank_reports_the_single_process_validation_of_the_saved_weights(two_ranks):
    from geolearn import RetinaNet, prepare_data

    chips, out, _, records = two_ranks
    assert records[0]["rows"] == records[1]["rows"]
    best = min(records[0]["rows"], key=lambda row: row[1])  # checkpoint=True keeps the best valid_loss
    data = prepare_data(chips, chip_size=64, batch_size=4, val_split_pct=0.34)
    model = RetinaNet.from_model(out / "model" / "model.emd", data)
    valid_loss, average_precision = model.learn.validate()  # one process, float32, the whole validation set
    assert valid_loss == pytest.approx(best[1], rel=1e-4)
    assert average_precision == pytest.approx(best[2], abs=1e-6)


def test_a_fit_stopped_by_an_error_leaves_plain_batch_norm_layers(two_ranks):
    """fastai runs no after_fit after an error; the synced layers are made plain all the same."""
    *_, records = two_ranks
    assert [record["batch_norms_after_error"] for record in records] == [["BatchNorm2d"], ["BatchNorm2d"]]


def test_one_table_and_one_package(two_ranks):
    _, out, stdout, records = two_ranks
    assert stdout.count("train_loss") == 4  # one table per fit (the last stopped by an error), rank 0's
    assert stdout.count("Better model found at epoch 0") == 1
    assert records[0]["folder"] == records[1]["folder"] == str(out / "model")
    assert sorted(p.name for p in out.iterdir()) == ["model", "rank0.json", "rank1.json"]  # no staging left
    assert len(list((out / "model").glob("*.dlpk"))) == 1


def test_ranks_with_different_data_fail_with_the_named_error_quickly(tmp_path):
    chips = make_folder(tmp_path / "chips", TINY_CHIPS)
    done, seconds = _torchrun(chips, tmp_path / "out", "--mismatch")
    assert done.returncode != 0
    assert seconds < 60
    for rank in range(2):
        message = (tmp_path / "out" / f"rank{rank}.error").read_text()
        assert "the 2 processes differ in training chips, validation chips" in message
        assert "same prepare_data arguments" in message
    assert not (tmp_path / "out" / "model").exists()


def test_a_rank_that_cannot_reach_the_rendezvous_fails_in_bounded_time(monkeypatch):
    import socket

    import torch

    from geolearn.errors import DistributedSetupError

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "3")
    started = time.perf_counter()
    with pytest.raises(DistributedSetupError, match=rf"rank 1 of 2: could not join .* at 127.0.0.1:{port} within 3 s"):
        distributed.join_process_group(torch.device("cpu"))
    assert time.perf_counter() - started < 30
    assert not distributed.active()


def test_a_data_folder_missing_on_one_rank_stops_every_rank_quickly(tmp_path):
    chips = make_folder(tmp_path / "chips", TINY_CHIPS)
    done, seconds = _torchrun(chips, tmp_path / "out", "--missing")
    assert done.returncode != 0
    assert seconds < 60  # rank 0 waits in the setup check until torchrun stops it
    assert "chips-not-on-this-node" in done.stderr and "DataFolderError" in done.stderr


def test_geolearn_train_nproc_starts_the_processes_itself(tmp_path):
    chips = make_folder(tmp_path / "chips", TINY_CHIPS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("OMP_NUM_THREADS", None)
    command = [sys.executable, "-m", "geolearn.cli", "train", str(chips), "--out", str(tmp_path / "trees"),
               "--nproc", "2", "--epochs", "1", "--backbone", "resnet18", "--chip-size", "64", "--batch-size", "4",
               "--lr", "1e-3", "--val-split", "0.34", "--no-pretrained", "-q"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cores = max(1, (os.cpu_count() or 1) // 2)
    assert f"starting 2 training processes of {cores} threads each" in done.stdout
    assert done.stdout.count("1/5 prepare_data") == 1 and done.stdout.count("5/5 saved the model") == 1
    assert sorted(p.name for p in (tmp_path / "trees").glob("*.dlpk")) == ["trees.dlpk"]


def test_geolearn_train_nproc_passes_on_a_process_failure(tmp_path):
    chips = make_folder(tmp_path / "chips", TINY_CHIPS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "geolearn.cli", "train", str(chips), "--out", str(tmp_path / "trees"),
               "--nproc", "3", "--epochs", "1", "--backbone", "resnet18", "--chip-size", "64", "--batch-size", "2",
               "--lr", "1e-3", "--val-split", "0.34", "--no-pretrained", "-q"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2  # bad input, as in one process
    assert done.stderr.count("geolearn train: error: 10 training chips in steps of batch_size=2") == 3  # each rank
    assert "prepare_data with batch_size >= 3" in done.stderr and "Traceback" not in done.stderr
    assert "geolearn train: error: process" in done.stderr and "failed first (exit code 2)" in done.stderr
