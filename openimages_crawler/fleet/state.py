"""``{store}/.fleet/fleet.json``: what the fleet knows (rewritten atomically,
so another shell can follow it with ``--watch``, show it with ``--status`` or
stop it with ``--cancel``), and the lock that keeps one watch per fleet."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from scrapy.exceptions import UsageError

from openimages_crawler.store.base import Store, writing_text
from openimages_crawler.store.layout import FLEET_DIR, part_label
from openimages_crawler.store.lock import StoreLocked

FLEET_KEY = f"{FLEET_DIR}/fleet.json"
WATCH_LOCK = "fleet-watch"  # the store's lock of the fleet's one watch: .locks/fleet-watch

# A shard job's state in fleet.json.
SCHEDULED, DONE, FAILED, CANCELLED = "scheduled", "done", "failed", "cancelled"
# The fleet's state: running or incomplete (shards failed too often: a watch tries them again) is
# unfinished; finished, failed (a usage error stopped it) or cancelled is over.
RUNNING, INCOMPLETE, FINISHED = "running", "incomplete", "finished"
UNFINISHED = (RUNNING, INCOMPLETE)


def timestamp() -> str:
    """Now, as fleet.json records a time (UTC, to the second)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ShardJob:
    """The job that is (or was last) crawling one shard."""

    index: int  # K of shard K/N
    target: str
    jobid: str
    attempts: int = 1  # jobs scheduled for this shard so far
    state: str = SCHEDULED


@dataclass
class Fleet:
    """``{store}/.fleet/fleet.json``: what was asked and where each shard runs."""

    run: str  # the jobs' ids start with it
    spider: str
    shards: int
    arguments: dict[str, str]  # the jobs' -a (each also gets shard=K/N)
    settings: dict[str, str]  # the user's -s, IMAGES_STORE absolute (the jobs' and the watch's)
    targets: dict[str, dict[str, str]]  # name -> url, project
    jobs: list[ShardJob]
    started: str = field(default_factory=timestamp)
    state: str = RUNNING
    ended: str = ""

    @classmethod
    def from_json(cls, text: str) -> Fleet:
        found = json.loads(text)
        found["jobs"] = [ShardJob(**job) for job in found["jobs"]]
        return cls(**found)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def label(self, job: ShardJob) -> str:
        return part_label(job.index, self.shards)

    def shard(self, job: ShardJob) -> str:
        return f"{job.index}/{self.shards}"

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED and any(job.state != DONE for job in self.jobs)


def new_run_id() -> str:
    """Short, sortable, and unlikely to meet another fleet's on a shared Scrapyd."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def job_id(run: str, index: int, count: int, attempt: int) -> str:
    """``{run}-{K}of{N}``, then ``-r2``, ``-r3``... (the record of each attempt says which it is)."""
    base = f"{run}-{part_label(index, count)}"
    return base if attempt == 1 else f"{base}-r{attempt}"


def assign(count: int, targets: list[str]) -> list[str]:
    """The target of each shard: round-robin."""
    return [targets[index % len(targets)] for index in range(count)]


def read_fleet(store: Store) -> Fleet | None:
    try:
        text = store.read(FLEET_KEY).decode("utf-8")
    except OSError as exc:
        if store.stat(FLEET_KEY) is None:
            return None
        raise UsageError(f"{store.uri}/{FLEET_KEY} cannot be read: {exc}") from None
    try:
        return Fleet.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{store.uri}/{FLEET_KEY} cannot be read ({exc}): move it away to start a new fleet") from None


def write_fleet(store: Store, fleet: Fleet) -> None:
    """Atomically (a temporary file, then a rename; one PUT): a reader never sees half of it."""
    with writing_text(store, FLEET_KEY) as out:
        out.write(fleet.to_json())


@contextmanager
def watching(store: Store, fleet: Fleet) -> Iterator[None]:
    """One watch per fleet: two would each schedule a dead node's shards again.
    The store's lock ``fleet-watch``, taken at once or not at all: an OS lock
    released however the watch ends, or a bucket's lease its watch renews (a
    killed watch's lapses after ``lease.LEASE_S``)."""
    with ExitStack() as held:
        try:
            held.enter_context(store.exclusive(WATCH_LOCK, wait=False))
        except StoreLocked:
            raise UsageError(f"fleet {fleet.run} is watched already (from another shell or machine); "
                             "`scrapy fleet --status` shows it") from None
        yield
