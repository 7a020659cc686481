"""Live progress, for the crawl and for ``scrapy resize``.

``ProgressMeter`` turns cumulative counts sampled over time into rates, an
ETA and a bounded history (for the dashboard's chart and the end-of-run
report); ``ProgressDisplay`` shows it as a live bar on a terminal (tqdm) or
as a compact log line every interval elsewhere. No Scrapy import: the crawl's
extension (``extensions.CrawlProgress``) and the resize command feed it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

logger = logging.getLogger(__name__)

PROGRESS_MODES = ("auto", "bar", "log", "off")
_MB = 1e6


@dataclass(frozen=True, slots=True)
class Counts:
    """Cumulative figures at one moment."""

    time: float  # seconds since the start
    done: int = 0  # rows (or files) finished: stored, failed or already done before
    ok: int = 0
    failed: int = 0
    bytes_in: int = 0  # downloaded (or read)
    bytes_out: int = 0  # written
    failures: dict[str, int] = field(default_factory=dict)  # FailureReason -> count, errors only
    left_out: dict[str, int] = field(default_factory=dict)  # POLICY_REASONS -> count: fine images not kept
    downloading: int | None = 0  # transfers in progress (None: nothing is downloaded)
    working: int = 0  # images in the worker pool (verify, decode, resize, write)
    total: int | None = None  # rows expected, when known or estimated

    @property
    def images(self) -> int:
        """Images processed (stored, failed or left out), not counting rows done before."""
        return self.ok + self.failed + self.omitted

    @property
    def omitted(self) -> int:
        """Images left out by the crawl's choice (opted out, filtered)."""
        return sum(self.left_out.values())


@dataclass(frozen=True, slots=True)
class Rates:
    images_per_s: float = 0.0
    rows_per_s: float = 0.0
    mb_in_per_s: float = 0.0
    mb_out_per_s: float = 0.0
    eta_s: float | None = None


class ProgressMeter:
    """Rates over a sliding window and a history that stays small over days
    (when full, every other point is dropped and sampling slows down)."""

    def __init__(self, window: float = 30.0, history_points: int = 720) -> None:
        self.window = window
        self.recent: deque[Counts] = deque()
        self.history: list[Counts] = []
        self.history_points = history_points
        self.history_step = 1.0  # seconds between history points, doubled when full
        self.latest = Counts(0.0)

    def add(self, counts: Counts) -> None:
        self.latest = counts
        self.recent.append(counts)
        while len(self.recent) > 2 and counts.time - self.recent[0].time > self.window:
            self.recent.popleft()
        if not self.history or counts.time - self.history[-1].time >= self.history_step:
            self.history.append(counts)
            if len(self.history) > self.history_points:
                self.history = self.history[::2]
                self.history_step *= 2

    def rates(self) -> Rates:
        if len(self.recent) < 2:
            return Rates()
        first, last = self.recent[0], self.recent[-1]
        span = last.time - first.time
        if span <= 0:
            return Rates()
        rows_per_s = (last.done - first.done) / span
        eta = None
        if last.total is not None and rows_per_s > 0:
            eta = max(last.total - last.done, 0) / rows_per_s
        return Rates(
            images_per_s=(last.images - first.images) / span,
            rows_per_s=rows_per_s,
            mb_in_per_s=(last.bytes_in - first.bytes_in) / span / _MB,
            mb_out_per_s=(last.bytes_out - first.bytes_out) / span / _MB,
            eta_s=eta,
        )


def figures(counts: Counts, rates: Rates) -> dict[str, int | float | None]:
    """The figures of one moment by name: the crawl's stats under
    ``openimages/progress/`` and the web view's status use these."""
    return {
        "rows_done": counts.done,
        "rows_total": counts.total,
        "images_per_s": round(rates.images_per_s, 2),
        "mb_in_per_s": round(rates.mb_in_per_s, 2),
        "mb_out_per_s": round(rates.mb_out_per_s, 2),
        "eta_s": None if rates.eta_s is None else round(rates.eta_s),
        "downloading": counts.downloading,
        "in_workers": counts.working,
    }


def duration(seconds: float | None) -> str:
    """``4s``, ``12m05s``, ``3h07m``, ``2d03h``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def byte_size(count: int) -> str:
    """``812 B``, ``3.2 MB``, ``1.4 TB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def failure_breakdown(failures: dict[str, int], limit: int = 4) -> str:
    """``unavailable 30, http_error 4, …`` (largest first)."""
    parts = [f"{reason} {count:,}" for reason, count in sorted(failures.items(), key=lambda kv: -kv[1]) if count]
    if len(parts) > limit:
        parts = parts[:limit] + ["…"]
    return ", ".join(parts)


def summary_line(counts: Counts, rates: Rates, unit: str = "rows") -> str:
    """The compact progress line for logs."""
    if counts.total:
        share = 100 * counts.done / counts.total
        done = f"{counts.done:,}/{counts.total:,} {unit} ({share:.1f}%), ETA {duration(rates.eta_s)}"
    else:
        done = f"{counts.done:,} {unit}"
    failed = f"failed {counts.failed:,}"
    if counts.failed:
        failed += f" ({failure_breakdown(counts.failures)})"
    if counts.omitted:
        failed += f", left out {counts.omitted:,} ({failure_breakdown(counts.left_out)})"
    downloading = "" if counts.downloading is None else f"downloading {counts.downloading}, "
    return (
        f"{done} | {rates.images_per_s:.1f} img/s, {rates.mb_in_per_s:.1f} MB/s in, "
        f"{rates.mb_out_per_s:.1f} MB/s written | ok {counts.ok:,}, {failed} | "
        f"{downloading}in workers {counts.working}"
    )


class ProgressDisplay:
    """A tqdm bar on a terminal, else a log line every ``interval`` seconds."""

    def __init__(self, mode: str, interval: float, unit: str = "rows", stream: IO[str] | None = None) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode {mode!r} is not one of {', '.join(PROGRESS_MODES)}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode
        self.interval = interval
        self.unit = unit
        self.bar: tqdm | None = None
        self.redirect = ExitStack()  # log records printed above the bar while it lives
        self.last_line = 0.0  # the first line comes after one interval

    def show(self, meter: ProgressMeter, final: bool = False) -> None:
        """Draw the bar, or log a line when one is due (nothing when ``off``)."""
        counts, rates = meter.latest, meter.rates()
        if self.mode == "bar":
            self._bar(counts, rates, final)
        elif self.mode == "log" and (final or counts.time - self.last_line >= self.interval):
            self.last_line = counts.time
            label = "Progress"
            if final:  # a finished run's total is what it did; a stopped one falls short of it
                label = "Stopped" if counts.total is not None and counts.done < counts.total else "Done"
            logger.info("%s: %s", label, summary_line(counts, rates, self.unit))

    def write(self, text: str) -> None:
        """Print lines (another process's log, say) above the bar, or plainly."""
        if self.bar is not None:
            self.bar.write(text.rstrip("\n"), file=self.stream)
        else:
            self.stream.write(text)
            self.stream.flush()

    def _bar(self, counts: Counts, rates: Rates, final: bool) -> None:
        if self.bar is None:
            # A new pseudo-terminal may report 0x0, where tqdm would hide the bar.
            sized = _terminal_width(self.stream) > 0
            self.bar = tqdm(
                total=counts.total, unit=f" {self.unit}", file=self.stream, smoothing=0.1, mininterval=0,
                dynamic_ncols=sized, ncols=None if sized else 120, nrows=None if sized else 24,
            )
            self.redirect.enter_context(logging_redirect_tqdm())
        bar = self.bar
        if counts.total is not None and bar.total != counts.total:
            bar.total = counts.total
        failed = f"✗{counts.failed:,}"
        if counts.failed:
            failed += f" [{failure_breakdown(counts.failures, limit=3)}]"
        bar.set_postfix_str(
            f"{rates.images_per_s:.1f} img/s ↓{rates.mb_in_per_s:.1f} ↑{rates.mb_out_per_s:.1f} MB/s "
            f"✓{counts.ok:,} {failed} {'' if counts.downloading is None else f'dl {counts.downloading} '}"
            f"cpu {counts.working}",
            refresh=False,
        )
        bar.update(counts.done - bar.n)
        if final:
            bar.close()
            self.bar = None
            self.redirect.close()


def _terminal_width(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0
