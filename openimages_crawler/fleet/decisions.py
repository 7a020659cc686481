"""What the watch does about each shard, from what it sees of the shard's job
(its target's listing, the shard's record in the store): no HTTP, no files,
so every case is tested alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from openimages_crawler.exits import EXIT_OK, EXIT_USAGE
from openimages_crawler.fleet.scrapyd import ABSENT, ALIVE
from openimages_crawler.fleet.state import DONE, Fleet, ShardJob
from openimages_crawler.monitor.status import PartStatus

DOWN_GRACE_S = 10.0  # a target silent this long is presumed gone...
STALE_S = 15.0  # ...once its job's record has not changed for this long (it is rewritten every ~2 s)


class Verdict(Enum):
    WAIT = "wait"
    DONE = "done"
    USAGE_ERROR = "usage error"
    RESCHEDULE = "reschedule"
    GIVE_UP = "give up"


@dataclass(frozen=True)
class Observation:
    """What the watch sees of one shard's job."""

    listing: str | None  # pending, running, finished or absent on its target; None: the target is silent
    down_for: float = 0.0  # seconds its target has been silent
    record: PartStatus | None = None  # the shard's record in the store, whichever job wrote it
    record_age: float = 0.0  # seconds since the record last changed, by the watch's clock

    def mine(self, job: ShardJob) -> PartStatus | None:
        """The record, if this job wrote it."""
        return self.record if self.record is not None and self.record.job == job.jobid else None


def decide(job: ShardJob, seen: Observation, limit: int) -> Verdict:
    """What to do about one shard; ``limit``: the attempts it may reach."""
    if job.state == DONE:
        return Verdict.DONE
    mine = seen.mine(job)
    if mine is not None and mine.exit == EXIT_OK:
        return Verdict.DONE
    # A first job's usage error is the same on every node. A later job's exit 2 is most
    # likely the shard's lock, still held by the job it replaces: try again.
    if mine is not None and mine.exit == EXIT_USAGE and job.attempts == 1:
        return Verdict.USAGE_ERROR
    if not job_over(seen, mine):
        return Verdict.WAIT
    if held_by_another(job, seen):
        return Verdict.WAIT
    return Verdict.RESCHEDULE if job.attempts < limit else Verdict.GIVE_UP


def job_over(seen: Observation, mine: PartStatus | None) -> bool:
    """Whether the job has ended, or its node is gone with it."""
    if seen.listing in ALIVE:
        return False
    if seen.listing is not None:
        return True  # finished (crashed, cancelled, done without exit 0), or unknown to its target
    if mine is not None and mine.exit is not None:
        return True  # its command returned (its node's death stops it: SIGTERM, exit 143)
    if seen.down_for < DOWN_GRACE_S:
        return False
    return mine is None or seen.record_age >= STALE_S


def held_by_another(job: ShardJob, seen: Observation) -> bool:
    """Another job of this shard (an earlier attempt, still stopping) keeps
    its record fresh: a new job would find the shard locked."""
    record = seen.record
    return record is not None and record.job != job.jobid and record.exit is None and seen.record_age < STALE_S


def ending(seen: Observation, job: ShardJob) -> str:
    """How a job ended, as far as the watch knows."""
    mine = seen.mine(job)
    if mine is not None and mine.exit is not None:
        return f"ended with exit status {mine.exit}"
    if seen.listing is None:
        return f"went silent with its node ({seen.down_for:.0f} s)"
    if seen.listing == ABSENT:
        return "is unknown to its node (restarted?)"
    return "ended without an exit status (killed?)"


class Rotation:
    """Round-robin over the targets, skipping those that do not answer."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.turn = 0

    def pick(self, live: set[str]) -> str | None:
        for _ in self.names:
            name = self.names[self.turn % len(self.names)]
            self.turn += 1
            if name in live:
                return name
        return None


class Freshness:
    """How long each shard's record has stayed the same, by this process's
    clock (a node's clock may differ from ours, so its timestamps are compared
    only with themselves)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[tuple[str, str], float]] = {}

    def age(self, label: str, record: PartStatus | None, now: float) -> float:
        if record is None:
            self.seen.pop(label, None)
            return math.inf
        key = (record.job, record.updated)
        known = self.seen.get(label)
        if known is None or known[0] != key:
            self.seen[label] = (key, now)
            return 0.0
        return now - known[1]


def stray_jobs(fleet: Fleet, listing: dict[str, str]) -> list[str]:
    """Jobs of this fleet a target still holds that no shard counts on (one
    queued on a node that was presumed dead and came back, say)."""
    current = {job.jobid for job in fleet.jobs}
    return sorted(jobid for jobid, state in listing.items()
                  if state in ALIVE and jobid.startswith(f"{fleet.run}-") and jobid not in current)
