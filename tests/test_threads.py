"""OpenMP's wait policy and the thread count: what libgomp itself reports it read.

libgomp prints the settings it parsed when ``OMP_DISPLAY_ENV=VERBOSE``; ``GOMP_SPINCOUNT`` is 0
under ``OMP_WAIT_POLICY=PASSIVE`` and 300000 (its default) when the variable was not set when
torch loaded it.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import firing_retinanet

REPO = Path(__file__).resolve().parents[1]
SPINS = "import torch; torch.ones(2) + 1"  # loads torch and its OpenMP pool


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, in an environment without OMP_WAIT_POLICY unless given."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True,
                          timeout=120)


def _spin_count(stderr: str) -> str:
    counts = [line.split("=")[1].strip().strip("'") for line in stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not counts:
        pytest.skip("torch's OpenMP runtime is not GNU libgomp here: it reports no GOMP_SPINCOUNT")
    return counts[0]


def test_importing_geolearn_first_makes_torchs_threads_sleep_at_once():
    done = _run(f"import geolearn; {SPINS}; import os; print(os.environ['OMP_WAIT_POLICY'])")
    assert done.stdout.split() == ["PASSIVE"]
    assert _spin_count(done.stderr) == "0"


def test_after_torch_the_policy_still_reaches_the_processes_started_later():
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SPINS!r}], check=True)"
    done = _run(f"{SPINS}; import geolearn; {child}")
    here, started_later = [line for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line][:2]
    assert _spin_count(here) == "300000"  # libgomp had read the environment before geolearn came
    assert _spin_count(started_later) == "0"


def test_a_users_own_policy_stands():
    done = _run(f"import geolearn; {SPINS}; import os; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE")
    assert done.stdout.split() == ["ACTIVE"]
    assert _spin_count(done.stderr) not in {"0", "300000"}  # ACTIVE spins far longer than the default


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
