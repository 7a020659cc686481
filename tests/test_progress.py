"""Live progress: the meter's arithmetic, the log line on a non-terminal, the
bar on a terminal (a real pseudo-terminal), and the figures in the stats."""

from __future__ import annotations

import gzip
import os
import pty
import re
import select
import subprocess
from pathlib import Path

import pytest

from openimages_crawler.dataset.idset import IdSet
from openimages_crawler.dataset.rows import count_lines
from openimages_crawler.dataset.selection import IdList, Selection, Shard
from openimages_crawler.monitor.progress import (
    Counts,
    ProgressDisplay,
    ProgressMeter,
    duration,
    summary_line,
)
from tests.conftest import ROOT, Served, crawl_command, outcomes

# --- the meter -----------------------------------------------------------------


def test_rates_eta_and_a_history_that_stays_small() -> None:
    meter = ProgressMeter(window=10.0, history_points=8)
    for second in range(0, 61):
        meter.add(Counts(float(second), done=10 * second, ok=8 * second, failed=second,
                         bytes_in=2_000_000 * second, bytes_out=500_000 * second, total=1000))
    rates = meter.rates()
    assert rates.rows_per_s == pytest.approx(10.0)
    assert rates.images_per_s == pytest.approx(9.0)  # ok + failed, not rows done before
    assert rates.mb_in_per_s == pytest.approx(2.0) and rates.mb_out_per_s == pytest.approx(0.5)
    assert rates.eta_s == pytest.approx((1000 - 600) / 10.0)
    assert len(meter.history) <= 8 and meter.history[0].time == 0 and meter.history[-1].time >= 48
    assert ProgressMeter().rates().eta_s is None  # nothing yet


def test_duration_and_summary_line() -> None:
    assert [duration(s) for s in (None, 4, 725, 11_220, 183_600)] == ["?", "4s", "12m05s", "3h07m", "2d03h"]
    counts = Counts(5.0, done=250, ok=200, failed=40, total=1000,
                    failures={"unavailable": 30, "http_error": 6, "timeout": 4}, downloading=64, working=2)
    meter = ProgressMeter()
    meter.add(Counts(0.0, total=1000))
    meter.add(counts)
    line = summary_line(counts, meter.rates())
    assert line.startswith("250/1,000 rows (25.0%), ETA 15s | 48.0 img/s")
    assert "ok 200, failed 40 (unavailable 30, http_error 6, timeout 4)" in line
    assert line.endswith("downloading 64, in workers 2")
    with pytest.raises(ValueError, match="progress mode 'loud'"):
        ProgressDisplay("loud", 60)


def test_the_last_line_says_done_only_when_the_total_was_reached(caplog: pytest.LogCaptureFixture) -> None:
    for counts, label in ((Counts(5.0, done=30, total=37), "Stopped"), (Counts(5.0, done=37, total=37), "Done"),
                          (Counts(5.0, done=37), "Done")):
        meter = ProgressMeter()
        meter.add(counts)
        caplog.clear()
        with caplog.at_level("INFO", logger="openimages_crawler.monitor.progress"):
            ProgressDisplay("log", 60).show(meter, final=True)
        assert [record.getMessage().split(":")[0] for record in caplog.records] == [label]


def test_counting_rows_and_estimating_the_selection(tmp_path: Path) -> None:
    plain = tmp_path / "images.csv"
    plain.write_bytes(b"ImageID,OriginalURL\na,x\nb,y\nc,z")  # no final line break
    assert count_lines(plain) == 3
    packed = tmp_path / "images.csv.gz"
    packed.write_bytes(gzip.compress(b"ImageID\n" + b"a\n" * 5000))
    assert count_lines(packed) == 5000
    assert Selection().estimate(9_000) == 9_000
    assert Selection(shard=Shard(1, 4), offset=100, limit=2000).estimate(9_000) == 2000
    assert Selection(shard=Shard(2, 4), offset=100).estimate(9_000) == 2150
    assert Selection(ids=IdList(IdSet(["a", "b"]))).estimate(9_000) == 2


# --- in a crawl ----------------------------------------------------------------


@pytest.mark.e2e
def test_log_lines_off_a_terminal_and_figures_in_the_stats(mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = subprocess.run(
        crawl_command(mirror.metadata, store, {"LOGSTATS_INTERVAL": "0.5", "STATS_DUMP": "True"}),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "Progress: " in line]
    assert len(lines) >= 2  # the hanging host keeps the crawl going for seconds
    assert any("downloading " in line and "img/s" in line for line in lines)
    final = re.search(r"Done: (\d+)/(\d+) rows \(100\.0%\).* ok (\d+), failed (\d+) \(([^)]*)\)", done.stderr)
    assert final, done.stderr[-2000:]
    found = outcomes(store)
    ok = sum(v == ["success"] for v in found.values())
    assert int(final[1]) == int(final[2]) == len(mirror.mirror.rows)
    assert (int(final[3]), int(final[4])) == (ok, len(found) - ok)
    reasons = {v[0] for v in found.values() if v != ["success"]}
    assert {part.rsplit(" ", 1)[0] for part in final[5].split(", ") if part != "…"} <= reasons
    assert f"'openimages/progress/rows_done': {len(found)}" in done.stderr
    assert "'openimages/progress/mb_in_per_s'" in done.stderr
    assert "Crawled " not in done.stderr  # Scrapy's own LogStats line is replaced


@pytest.mark.e2e
def test_a_live_bar_on_a_terminal(clean_mirror: Served, tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        crawl_command(clean_mirror.metadata, tmp_path / "store", {"LOG_LEVEL": "INFO"}),
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary,
    )
    os.close(secondary)
    output = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 0
    os.close(primary)
    text = output.decode("utf-8", "replace")
    rows = len(clean_mirror.mirror.rows)
    assert "\r" in text  # redrawn in place
    assert re.search(rf"100%\|[^\n]*\| {rows}/{rows} ", text), text[-1500:]
    assert f"✓{rows}" in text and "✗0" in text and "img/s" in text
    # Log lines are printed above the bar, each on a line of its own.
    assert "Report: " in text and "Spider closed" not in text  # ours; Scrapy's own only at DEBUG
    assert not re.search(r"(cpu \d+\]|rows/s\]) ?\d{4}-\d\d-\d\d \d\d:", text), text[-2000:]
