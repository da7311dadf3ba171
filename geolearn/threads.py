"""How geolearn's CPU threads wait: OpenMP's wait policy, chosen from the machine's load.

PyTorch runs its CPU kernels on an OpenMP thread pool (GNU libgomp in the Linux wheels). Between
two parallel regions an idle thread of that pool spins for a while (``GOMP_SPINCOUNT``, 300 000
turns) before it sleeps. On an idle machine that saves a wake-up at every parallel region; on a
shared one (a Jupyter server, a VM with other jobs) the spinning threads take time slices from the
process that wants the core, and the pool then waits for its own descheduled threads.
``OMP_WAIT_POLICY=PASSIVE`` makes them sleep at once. ``benchmarks/detect.py`` measured the whole
detection pipeline on 2 cores of an AMD EPYC (docs/performance.md): beside one busy process the
passive pool ran 1.5–1.8 times as fast as libgomp's default; on an idle machine 4–7 % slower.

So the choice follows the load. libgomp reads the variable once, when torch loads it, and the
choice is made where geolearn is first imported: :func:`choose_wait_policy` looks at how busy
other processes keep the CPUs this process may run on, over a tenth of a second
(:func:`others_busy_cores`, from ``/proc/stat``). Where they keep half a core or more busy, it puts
``OMP_WAIT_POLICY=PASSIVE`` in the environment; on an idle machine it leaves libgomp's default.
Where the load cannot be read (no ``/proc/stat``: macOS, Windows) it chooses ``PASSIVE``, the
safe side. A user's own ``OMP_WAIT_POLICY`` (``ACTIVE`` included) or ``GOMP_SPINCOUNT`` always
stands, and nothing is sampled.

The choice takes effect in this process when ``import geolearn`` comes before ``import torch`` (the
command line always does), and ``PASSIVE`` reaches every process started from it afterwards:
``torchrun``'s training processes, Dask workers of a local cluster, fastai's loader workers. It is
made once: a notebook that started on an idle machine keeps spinning threads if the machine gets
busy later (docs/performance.md shows the first cell that fixes the policy). A notebook that
imports torch first keeps libgomp's default in its own process.

Thread counts are the user's: geolearn never calls ``torch.set_num_threads``, so an explicit
``OMP_NUM_THREADS`` or ``torch.set_num_threads(n)`` holds for training and detection (``geolearn
train --nproc N`` sets ``OMP_NUM_THREADS`` to the cores over N only where it is unset).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable, MutableMapping

__all__ = ["BUSY_CORES", "WAIT_POLICY", "choose_wait_policy", "others_busy_cores"]

logger = logging.getLogger(__name__)

WAIT_POLICY = "OMP_WAIT_POLICY"
# The user's own settings of libgomp's waiting: either one means geolearn chooses nothing.
_USER_SETTINGS = (WAIT_POLICY, "GOMP_SPINCOUNT")
# Cores kept busy by other processes from which spinning costs more than it saves: one busy
# process is a whole core; background daemons on an idle machine are a few hundredths.
BUSY_CORES = 0.5
_SAMPLE_S = 0.1
_STAT = Path("/proc/stat")


def _cpu_ticks(stat: str, cpus: Iterable[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of ``cpus`` in a ``/proc/stat`` text; idle and iowait are not busy."""
    wanted = {f"cpu{cpu}" for cpu in cpus}
    busy = total = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name in wanted:
            ticks = [int(field) for field in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def others_busy_cores(read: Callable[[], str] | None = None, sample_s: float = _SAMPLE_S) -> float | None:
    """Cores kept busy over ``sample_s`` seconds on the CPUs this process may use, by others.

    This process sleeps meanwhile (geolearn is being imported: no other thread of it works yet),
    so what the kernel counts as busy on those CPUs is other processes' work.

    Args:
        read: returns the text of ``/proc/stat`` (the default reads it).
        sample_s: seconds between the two readings. Default 0.1.

    Returns:
        Busy cores (0 to the number of CPUs), or None where ``/proc/stat`` cannot be read.

    Examples:
        >>> samples = iter(["cpu0 100 0 50 800 0 0 0 0\\ncpu1 0 0 0 950 0 0 0 0",
        ...                 "cpu0 108 0 52 800 0 0 0 0\\ncpu1 0 0 0 960 0 0 0 0"])
        >>> others_busy_cores(lambda: next(samples), sample_s=0.0)  # cpu0 busy 10 ticks of 20 over both
        1.0
    """
    read = read or _STAT.read_text
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    try:
        busy_before, total_before = _cpu_ticks(read(), cpus)
        time.sleep(sample_s)
        busy_after, total_after = _cpu_ticks(read(), cpus)
    except (OSError, ValueError):
        return None
    elapsed = total_after - total_before
    if elapsed <= 0:
        return None
    return (busy_after - busy_before) / elapsed * len(cpus)


def choose_wait_policy(environ: MutableMapping[str, str] = os.environ,
                       busy_cores: Callable[[], float | None] = others_busy_cores) -> str | None:
    """Puts ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` when other processes keep the CPUs busy.

    It changes this process's pool only while torch is not loaded yet; see the module's notes.

    Args:
        environ: the environment to change (default: this process's, which processes started
            later inherit).
        busy_cores: measures the cores others keep busy, None where it cannot
            (:func:`others_busy_cores`).

    Returns:
        The policy in ``environ`` afterwards (the user's, or ``'PASSIVE'``), or None for
        libgomp's default.

    Examples:
        >>> choose_wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, busy_cores=lambda: 1.0)  # the user's stands
        'ACTIVE'
        >>> choose_wait_policy({}, busy_cores=lambda: 1.0)  # one busy process beside this one
        'PASSIVE'
        >>> print(choose_wait_policy({}, busy_cores=lambda: 0.02))  # an idle machine: spin first
        None
    """
    if any(name in environ for name in _USER_SETTINGS):
        return environ.get(WAIT_POLICY)
    busy = busy_cores()
    if busy is None or busy >= BUSY_CORES:
        environ[WAIT_POLICY] = "PASSIVE"
    logger.debug("other processes kept %s cores busy: OpenMP wait policy %s", busy, environ.get(WAIT_POLICY, "default"))
    return environ.get(WAIT_POLICY)
