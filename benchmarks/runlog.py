"""What every logged benchmark run records about where it ran: the machine and the code.

Benchmarks that append to ``benchmarks/results/*.jsonl`` (real_accuracy.py, demo_recipe.py) take
these from here, so that their records say the same things the same way.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, str | int | list[str]]:
    """The CPU model, its bfloat16 features (AMX runs bf16 about 6x faster than AVX512-BF16) and
    the threads torch uses: what a training time in the log depends on."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    return {"cpu": model, "bf16": sorted(flags & {"amx_bf16", "avx512_bf16"}), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def git_commit(script: str) -> str:
    """HEAD's short hash, ``+dirty`` when the code behind the figures (the package, ``script``
    (a path in the repository), setup.cfg) differs from it; docs and the logs do not count."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    dirty = git("diff", "--quiet", "HEAD", "--", "geolearn", script, "setup.cfg").returncode != 0
    return head + ("+dirty" if dirty else "")


def run_record(commit: str, **fields) -> dict:
    """A run's record as the logs keep it: when, the command, the commit, the machine, then ``fields``."""
    return {"time": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", *sys.argv]), "commit": commit,
            "machine": machine(), **fields}


def append(path: Path, record: dict) -> None:
    """Appends one run's record to a committed log, one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")


def read(path: Path) -> list[dict]:
    """The records of a log, oldest first (none when it does not exist yet)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
