"""One crawl as several processes on one machine (``OPENIMAGES_PROCESSES``).

One crawl process tops out at one event loop and one GIL, so ``scrapy crawl``
starts N processes, each with its share of the selection (a finer hash: shard
K of N of a user's ``-a shard=K/N`` becomes shares K, K+N, ... of N×P), and
watches them: the user sees one run, with one progress display, one report,
one exit status and one store lock (the children inherit its file
descriptors, so the lock lasts while any of them runs). The machine's
connection limits are shared out, so they keep meaning the whole machine;
each child writes its own results parts and its record in the store, and the
supervisor sums the records and merges the parts when the children have
ended. A child dies with its supervisor (``PR_SET_PDEATHSIG``): no orphans
after a kill -9.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from scrapy.exceptions import UsageError
from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings

from openimages_crawler.dataset.selection import Shard
from openimages_crawler.store.layout import part_label

logger = logging.getLogger(__name__)

# In a child's environment: the pid of the crawl command that supervises it, and the
# child's share of the run's rows (K/M: a hash finer than the run's own -a shard).
SUPERVISOR_ENV = "OPENIMAGES_SUPERVISOR"
PROCESS_SHARE_ENV = "OPENIMAGES_PROCESS_SHARE"
# Limits shared out among the processes (each then holds its share).
LIMIT_SETTINGS = ("CONCURRENT_REQUESTS", "CONCURRENT_REQUESTS_PER_DOMAIN", "CONCURRENT_REQUESTS_PER_IP")
# What a child does not do itself: the supervisor shows progress, serves the web view, reports.
_CHILD_SETTINGS = {"OPENIMAGES_PROCESSES": "1", "OPENIMAGES_PROGRESS": "off", "OPENIMAGES_DASHBOARD_PORT": ""}
_PR_SET_PDEATHSIG = 1


def supervisor_pid() -> int | None:
    value = os.environ.get(SUPERVISOR_ENV, "")
    return int(value) if value.isdigit() else None


def process_share() -> Shard | None:
    """A supervised child's share of the run's rows."""
    value = os.environ.get(PROCESS_SHARE_ENV)
    return Shard.parse(value) if value else None


def die_with_supervisor(pid: int) -> None:
    """In a child (of our supervisor, or a Scrapyd job of its daemon): SIGTERM
    (a graceful stop) when the parent dies, and now if it is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the check below still catches a dead parent at start
        pass
    if os.getppid() != pid:
        os.kill(os.getpid(), signal.SIGTERM)


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity, as ``taskset`` sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def process_count(value: object) -> int:
    """``OPENIMAGES_PROCESSES``: ``auto`` or a number of processes."""
    text = str(value).strip().lower()
    if text == "auto":
        return cpus_available()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UsageError(f"OPENIMAGES_PROCESSES must be auto or a number of processes (1 or more), not {value!r}")


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` whole shares that add up to it."""
    return [total // parts + (index < total % parts) for index in range(parts)]


@dataclass(frozen=True)
class ProcessPlan:
    """How many processes, and the settings each one gets on top of the run's."""

    count: int
    settings: list[dict[str, str]]
    note: str = ""  # why there are fewer processes than asked


def plan_processes(settings: BaseSettings, wanted: int) -> ProcessPlan:
    """Share the connection limits and the worker threads among ``wanted``
    processes; a limit below ``wanted`` lowers the count (a process needs at
    least one connection of each limit)."""
    limits = {name: settings.getint(name) for name in LIMIT_SETTINGS if settings.getint(name) > 0}
    count = min(wanted, *limits.values()) if limits else wanted
    note = ""
    if count < wanted:
        lowest = min(limits, key=lambda name: limits[name])
        note = f"{count} processes, not {wanted}: {lowest}={limits[lowest]} leaves no connection for more"
    workers = settings.getint("OPENIMAGES_WORKERS") or cpus_available()
    per_process: list[dict[str, str]] = [dict(_CHILD_SETTINGS) for _ in range(count)]
    for name, limit in {**limits, "OPENIMAGES_WORKERS": max(workers, count)}.items():
        for child, share in zip(per_process, shares(limit, count), strict=True):
            child[name] = str(share)
    return ProcessPlan(count, per_process, note)


def command_line_settings(settings: BaseSettings) -> dict[str, str]:
    """The settings given on the command line (``-s``, ``-o``, ``-L``...), as
    ``-s`` values, for the children."""
    given = {}
    for name, value in settings.copy_to_dict().items():
        if settings.getpriority(name) != SETTINGS_PRIORITIES["cmdline"]:
            continue
        given[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return given


def child_command(spider: str, arguments: dict[str, str], settings: dict[str, str]) -> list[str]:
    """The same entry point as this process: ``scrapy``, or under Scrapyd its
    runner (which puts the deployed egg on the path again)."""
    main = getattr(sys.modules["__main__"], "__spec__", None)
    runner = "scrapyd.runner" if main is not None and main.name == "scrapyd.runner" else "scrapy"
    command = [sys.executable, "-m", runner, "crawl", spider]
    for name, value in arguments.items():
        command += ["-a", f"{name}={value}"]
    for name, value in settings.items():
        command += ["-s", f"{name}={value}"]
    return command


@dataclass
class Child:
    """One crawl process of the run."""

    number: int  # 1-based, for messages
    part: str  # its results part label
    process: subprocess.Popen[bytes]
    error: str = ""  # its one-line ERROR message, if it printed one
    relay: threading.Thread | None = field(default=None, repr=False)

    def relay_stderr(self, prefix: str, write: Callable[[str], None]) -> None:
        """Pass the child's log lines on, prefixed; keep its closing ``ERROR:`` line."""
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace")
            if line.startswith("ERROR: "):
                self.error = line.removeprefix("ERROR: ").strip()
                continue
            write(f"{prefix}{line}")


def start_children(commands: list[tuple[Shard, list[str]]], pass_fds: list[int],
                   write: Callable[[str], None]) -> list[Child]:
    """Start the crawl processes, each in a session of its own (a terminal's
    Ctrl-C reaches the supervisor, which passes it on once); ``write`` shows
    their log lines."""
    children = []
    for number, (share, command) in enumerate(commands, start=1):
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid()), PROCESS_SHARE_ENV: f"{share.index}/{share.count}"}
        part = part_label(share.index, share.count)
        process = subprocess.Popen(command, stderr=subprocess.PIPE, pass_fds=pass_fds, env=env,
                                   start_new_session=True)
        child = Child(number, part, process)
        child.relay = threading.Thread(target=child.relay_stderr, args=(f"[{number}/{len(commands)}] ", write),
                                       name=f"openimages-relay-{number}", daemon=True)
        child.relay.start()
        children.append(child)
    return children


def signal_children(children: list[Child], signum: int) -> None:
    for child in children:
        if child.process.poll() is None:
            try:
                child.process.send_signal(signum)
            except ProcessLookupError:
                pass


def join_relays(children: list[Child]) -> None:
    """Wait for the children's last log lines (after they have ended)."""
    for child in children:
        if child.relay is not None:
            child.relay.join(timeout=5)
