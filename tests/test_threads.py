"""OpenMP's wait policy and the thread count: what libgomp itself reports it read.

libgomp prints the settings it parsed when ``OMP_DISPLAY_ENV=VERBOSE``; ``GOMP_SPINCOUNT`` is 0
under ``OMP_WAIT_POLICY=PASSIVE`` and 300000 (its default) when the variable was not set when
torch loaded it. Whether the machine is busy is set up for each test: a busy process beside the
child, or a stand-in reading of the load.
"""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import firing_retinanet
from geolearn import threads

REPO = Path(__file__).resolve().parents[1]
SPINS = "import torch; torch.ones(2) + 1"  # loads torch and its OpenMP pool


@contextlib.contextmanager
def busy_process():
    """Another process keeping one core busy, as on a shared machine."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)  # running before the child samples the load
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, in an environment without OpenMP waiting settings unless given."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True,
                          timeout=120)


def _spin_count(stderr: str) -> str:
    counts = [line.split("=")[1].strip().strip("'") for line in stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not counts:
        pytest.skip("torch's OpenMP runtime is not GNU libgomp here: it reports no GOMP_SPINCOUNT")
    return counts[0]


def test_beside_a_busy_process_importing_geolearn_first_makes_torchs_threads_sleep_at_once():
    with busy_process():
        done = _run(f"import geolearn; {SPINS}; import os; print(os.environ['OMP_WAIT_POLICY'])")
    assert done.stdout.split() == ["PASSIVE"]
    assert _spin_count(done.stderr) == "0"


def test_after_torch_the_policy_still_reaches_the_processes_started_later():
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SPINS!r}], check=True)"
    with busy_process():
        done = _run(f"{SPINS}; import geolearn; {child}")
    here, started_later = [line for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line][:2]
    assert _spin_count(here) == "300000"  # libgomp had read the environment before geolearn came
    assert _spin_count(started_later) == "0"


@pytest.mark.parametrize("setting", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}])
def test_a_users_own_setting_stands(setting):
    with busy_process():
        done = _run(f"import geolearn; {SPINS}; import os; print(os.environ.get('OMP_WAIT_POLICY'))", **setting)
    assert done.stdout.split() == [setting.get("OMP_WAIT_POLICY", "None")]
    spins = _spin_count(done.stderr)
    if "GOMP_SPINCOUNT" in setting:
        assert spins == setting["GOMP_SPINCOUNT"]
    else:
        assert spins not in {"0", "300000"}  # ACTIVE spins far longer than the default


def stat(*cpus: tuple[int, int, int, int]) -> str:
    """A /proc/stat text: the total line, then one line per CPU from (user, system, idle, iowait) ticks."""
    lines = [f"cpu{i} {user} 0 {system} {idle} {iowait} 0 0 0 0 0" for i, (user, system, idle, iowait) in enumerate(cpus)]
    total = [sum(column) for column in zip(*cpus)]
    return "\n".join([f"cpu  {total[0]} 0 {total[1]} {total[2]} {total[3]} 0 0 0 0 0", *lines, "intr 12345 0 1"])


def test_busy_cores_count_the_cpus_this_process_may_use_only(monkeypatch):
    """CPU 0 busy 15 of 20 ticks (user + system), CPU 1 idle (waiting on disk is idle too), CPU 2
    busy all along but outside this process's affinity: 15 busy ticks of 40 on two CPUs = 0.75 cores."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    samples = iter([stat((100, 50, 800, 0), (0, 0, 900, 10), (500, 0, 0, 0)),
                    stat((110, 55, 805, 0), (0, 0, 915, 15), (520, 0, 0, 0))])
    assert threads.others_busy_cores(lambda: next(samples), sample_s=0.0) == pytest.approx(0.75)


def test_unreadable_load_is_none():
    def unreadable() -> str:
        raise FileNotFoundError("/proc/stat")

    assert threads.others_busy_cores(unreadable, sample_s=0.0) is None


@pytest.mark.parametrize("busy, chosen", [(0.0, None), (0.49, None), (0.5, "PASSIVE"), (1.0, "PASSIVE"),
                                          (None, "PASSIVE")])
def test_passive_from_half_a_busy_core_or_where_the_load_is_unknown(busy, chosen):
    environ: dict[str, str] = {}
    assert threads.choose_wait_policy(environ, busy_cores=lambda: busy) == chosen
    assert environ.get("OMP_WAIT_POLICY") == chosen


def test_a_users_setting_is_not_even_sampled():
    def sample() -> float:
        raise AssertionError("sampled the load although the user chose")

    environ = {"GOMP_SPINCOUNT": "1000"}
    assert threads.choose_wait_policy(environ, busy_cores=sample) is None
    assert environ == {"GOMP_SPINCOUNT": "1000"}


def test_predicting_and_fitting_keep_the_users_thread_count(tiny_data):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = firing_retinanet(tiny_data, seed=0)
        model.predict(np.zeros((64, 64, 3), dtype=np.uint8))
        model.fit(1, lr=1e-4, checkpoint=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
