"""Run one command and measure it: wall time, CPU of the whole process tree
(every descendant, through RUSAGE_CHILDREN), peak RSS of the tree (sampled)."""

from __future__ import annotations

import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class Measurement:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(
    command: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 3600,
    interval: float = 0.1,
) -> Measurement:
    """Run ``command`` to completion; stdout and stderr go to ``log``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = open(log, "w") if log is not None else subprocess.DEVNULL
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        proc = psutil.Process(process.pid)
        while not done.is_set():
            peak = max(peak, tree_rss(proc))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        returncode = process.wait(timeout)
    finally:
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        if process.poll() is None:
            process.kill()
            process.wait()
        if log is not None:
            out.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measurement(wall, cpu, peak / 2**20, returncode)
