"""How geolearn's CPU threads wait: OpenMP's wait policy, chosen for shared machines.

PyTorch runs its CPU kernels on an OpenMP thread pool (GNU libgomp in the Linux wheels). Between
two parallel regions an idle thread of that pool spins for a while (``GOMP_SPINCOUNT``, 300 000
turns) before it sleeps. On an idle machine that saves a wake-up; on a shared one (a Jupyter
server, a VM with other jobs) the spinning threads take time slices from the process that wants
the core, and the pool then waits for its own descheduled threads. ``OMP_WAIT_POLICY=PASSIVE``
makes them sleep at once. ``benchmarks/threads.py`` measured it on 2 cores of an AMD EPYC
(RetinaNet ResNet-50, 512 px, batch 4, bf16 forward): 1.33 times as fast beside one busy process
(3.00 against 2.26 s a batch) and within a few per cent idle (1.18 against 1.24 s); the whole
detection pipeline ran 1.76 times as fast beside a busy process and 7 % slower idle
(docs/performance.md).

libgomp reads the variable once, when torch loads it. So the choice is made where geolearn is
first imported: :func:`prefer_passive_waiting` puts ``OMP_WAIT_POLICY=PASSIVE`` in the
environment unless the user has set the variable (their choice stands, ``ACTIVE`` included).
It takes effect in this process when ``import geolearn`` comes before ``import torch`` (the
command line always does), and in every process started from it afterwards: ``torchrun``'s
training processes, Dask workers of a local cluster, fastai's loader workers. A notebook that
imports torch first keeps libgomp's default in its own process; docs/performance.md shows the
first cell that avoids that.

Thread counts are the user's: geolearn never calls ``torch.set_num_threads``, so an explicit
``OMP_NUM_THREADS`` or ``torch.set_num_threads(n)`` holds for training and detection (``geolearn
train --nproc N`` sets ``OMP_NUM_THREADS`` to the cores over N only where it is unset).
"""

from __future__ import annotations

import os
from typing import MutableMapping

__all__ = ["WAIT_POLICY", "prefer_passive_waiting"]

WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_waiting(environ: MutableMapping[str, str] = os.environ) -> None:
    """Puts ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` unless the variable is set there already.

    It changes this process's pool only while torch is not loaded yet; see the module's notes.

    Args:
        environ: the environment to change (default: this process's, which processes started
            later inherit).

    Examples:
        >>> environ = {"OMP_WAIT_POLICY": "ACTIVE"}
        >>> prefer_passive_waiting(environ)
        >>> environ
        {'OMP_WAIT_POLICY': 'ACTIVE'}
        >>> environ = {}
        >>> prefer_passive_waiting(environ)
        >>> environ
        {'OMP_WAIT_POLICY': 'PASSIVE'}
    """
    environ.setdefault(WAIT_POLICY, "PASSIVE")
