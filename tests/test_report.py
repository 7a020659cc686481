"""The end-of-run report: report.json figures equal the results files;
report.html is one self-contained page."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.report import (
    HISTORY_RUNS,
    HostTally,
    build,
    run_record,
    throughput,
    to_html,
    with_history,
)
from tests.conftest import Served, outcomes, read_csv, run_crawl


@pytest.mark.e2e
def test_report_of_a_crawl_and_of_a_rerun(mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_crawl(mirror.metadata, store, subset="train")
    report = json.loads((store / "report.json").read_text())
    found = outcomes(store)
    reasons = Counter(v[0] for v in found.values() if v != ["success"])
    totals = report["totals"]
    assert totals["rows_done"] == len(found) == len(mirror.mirror.rows)
    assert totals["stored"] == sum(v == ["success"] for v in found.values())
    assert totals["failed"] == sum(reasons.values()) and totals["failures"] == dict(reasons)
    assert totals["already_done"] == 0
    assert totals["bytes_downloaded"] > 0 and totals["bytes_written"] > 0
    assert report["store_totals"] == {"success rows": totals["stored"], "failure rows": totals["failed"]}
    assert report["run"]["finish_reason"] == "finished"
    assert report["run"]["arguments"] == {"metadata": str(mirror.metadata), "subset": "train"}
    # Per host: every result counted under the host of its URL.
    _, failures = read_csv(store / "train" / "images-failure.csv")
    by_host = Counter(urlsplit(row["OriginalURL"]).hostname or "" for row in failures)
    assert {h["host"]: h["failed"] for h in report["hosts"] if h["failed"]} == dict(by_host)
    assert sum(h["stored"] + h["failed"] for h in report["hosts"]) == len(found)
    assert report["throughput"] and all(p["images_per_s"] >= 0 for p in report["throughput"])
    stages = report["stages"]
    assert stages["download_s"] > 0 and stages["worker_s"] > 0 and stages["wall_s"] >= 1
    assert stages["worker_s_per_image_ms"] > 0
    page = (store / "report.html").read_text()
    assert "<svg" in page and "Failures by reason" in page
    assert not re.search(r"<script|<link|src=|url\(", page)  # self-contained, works offline
    for reason in reasons:
        assert reason in page
    # A rerun: everything was done before. The report keeps the figures of the
    # run that did the work and adds the rerun to its history; the log says so.
    rerun = run_crawl(mirror.metadata, store, subset="train")
    again = json.loads((store / "report.json").read_text())
    assert {key: again[key] for key in report if key != "history"} == {
        key: report[key] for key in report if key != "history"}
    assert [(run["stored"], run["failed"], run["already_done"]) for run in again["history"]] == [
        (totals["stored"], totals["failed"], 0), (0, 0, len(found))]
    assert "keeps the previous run's figures" in rerun.stderr
    assert f"Nothing new: all {len(found)} selected rows were already recorded" in rerun.stderr
    assert "found nothing new" in (store / "report.html").read_text()


@pytest.mark.e2e
def test_report_can_be_switched_off(clean_mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_crawl(clean_mirror.metadata, store, {"OPENIMAGES_REPORT": "False", "OPENIMAGES_PROGRESS": "off"})
    assert outcomes(store) and not (store / "report.json").exists() and not (store / "report.html").exists()


def test_throughput_and_escaping() -> None:
    second = Counts(2.0, done=22, ok=18, failed=2, bytes_in=4_000_000, bytes_out=1_000_000, downloading=3, working=1)
    history = [Counts(0.0), second, second,  # the final sample may repeat the last point
               Counts(4.0, done=32, ok=27, failed=3, bytes_in=6_000_000, bytes_out=1_000_000)]
    # Rows accounted count the rows found done before (2 here), not only the images processed.
    assert throughput(history) == [
        {"t": 2.0, "rows_done": 22, "stored": 18, "failed": 2, "in_flight": 4, "rows_per_s": 11.0,
         "images_per_s": 10.0, "mb_in_per_s": 2.0, "mb_out_per_s": 0.5},
        {"t": 4.0, "rows_done": 32, "stored": 27, "failed": 3, "in_flight": 0, "rows_per_s": 5.0,
         "images_per_s": 5.0, "mb_in_per_s": 1.0, "mb_out_per_s": 0.0},
    ]
    figures = build(final=history[-1], history=history, hosts={"<evil>": HostTally(ok=1)},
                    stages={"download_s": 1.0}, run={"store": "<b>x</b>", "arguments": {"classes": "a&b"}},
                    store_totals={})
    page = to_html(figures)
    assert "<evil>" not in page and "&lt;evil&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "classes=a&amp;b" in page


def figures_of(run: str, *, stored: int, failed: int, done: int) -> dict[str, Any]:
    final = Counts(10.0, done=done, ok=stored, failed=failed, failures={"timeout": failed} if failed else {})
    return build(final=final, history=[Counts(0.0), final], hosts={},
                 stages={"download_s": 4.0, "worker_s": 2.0, "wall_s": 10.0},
                 run=run_record("/store", started=run, seconds=10.0, reason="finished", arguments={},
                                settings={"outputs": "images-resized (ShrinkToFit 224 jpg)", "RETRY_TIMES": 3}),
                 store_totals={})


def test_a_rerun_that_finds_nothing_new_keeps_the_figures_and_adds_to_the_history() -> None:
    first, _ = with_history(figures_of("first", stored=8, failed=2, done=10), None)
    assert [entry["started"] for entry in first["history"]] == ["first"] and first["totals"]["stored"] == 8
    rerun, kept = with_history(figures_of("rerun", stored=0, failed=0, done=10), first)
    assert kept and rerun["run"]["started"] == "first" and rerun["totals"]["stored"] == 8
    assert [(entry["started"], entry["stored"], entry["already_done"]) for entry in rerun["history"]] == [
        ("first", 8, 0), ("rerun", 0, 10)]
    # A run that did work (even only failures) replaces the figures; the history goes on.
    retry, kept = with_history(figures_of("retry", stored=0, failed=2, done=2), rerun)
    assert not kept and retry["run"]["started"] == "retry" and len(retry["history"]) == 3
    # A report from before the history existed starts it with its own run; the history stays bounded.
    old = {key: value for key, value in first.items() if key != "history"}
    assert [entry["started"] for entry in with_history(rerun, old)[0]["history"]] == ["first", "first"]
    long = {**first, "history": first["history"] * (HISTORY_RUNS + 5)}
    assert len(with_history(figures_of("next", stored=1, failed=0, done=1), long)[0]["history"]) == HISTORY_RUNS


def test_the_page_names_stages_in_words_and_states_the_run_settings() -> None:
    first, _ = with_history(figures_of("first", stored=8, failed=2, done=10), None)
    page = to_html(first)
    assert "downloading (all transfers)" in page and "whole run (wall clock)" in page
    assert "download_s" not in page and "wall_s" not in page
    assert "images-resized (ShrinkToFit 224 jpg)" in page and "RETRY_TIMES" in page
    assert "Rows accounted over time" in page and "rows accounted per second" in page
    assert "found nothing new" not in page
    rerun, _ = with_history(figures_of("rerun", stored=0, failed=0, done=10), first)
    assert "found nothing new: its 10 rows were already done" in to_html(rerun)


@pytest.mark.e2e
def test_the_page_as_a_person_sees_it_in_a_headless_browser(tmp_path: Path, chromium: Any) -> None:
    """A crawl's report after a rerun that found nothing new: the notice, the
    charts drawn (lines of real size inside the page), stages in words, the
    run's settings and its history; the screenshot stays in the test's folder."""
    from selenium.webdriver.common.by import By

    history = [Counts(float(t), done=min(40 * t, 90) + t, ok=min(30 * t, 70), failed=min(10 * t, 20) + t,
                      bytes_in=10**6 * t, downloading=max(8 - t, 1), working=2) for t in range(10)]
    first = build(final=history[-1], history=history, hosts={"farm4.staticflickr.com": HostTally(ok=70)},
                  stages={"prepare_s": 0.5, "download_s": 40.0, "worker_s": 12.0, "worker_cpu_s": 9.0,
                          "process_cpu_s": 14.0, "wall_s": 9.0},
                  run=run_record("/data/openimages", started="first", seconds=9.0, reason="finished",
                                 arguments={"version": "6", "subset": "validation"},
                                 settings={"outputs": "images-resized (ShrinkToFit 224 jpg)", "RETRY_TIMES": 3}),
                  store_totals={"success rows": 70, "failure rows": 29})
    kept, _ = with_history(first, None)
    report, _ = with_history(figures_of("rerun", stored=0, failed=0, done=99), kept)
    page = tmp_path / "report.html"
    page.write_text(to_html(report), encoding="utf-8")
    chromium.get(page.as_uri())
    text = chromium.find_element(By.TAG_NAME, "body").text
    assert "found nothing new: its 99 rows were already done" in text
    for words in ("Rows accounted over time", "downloading (all transfers)", "whole run (wall clock)",
                  "images-resized (ShrinkToFit 224 jpg)", "RETRY_TIMES", "Runs of this store", "-a version=6"):
        assert words in text, words
    assert "download_s" not in text
    width = chromium.execute_script("return document.documentElement.clientWidth")
    assert chromium.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scroll
    charts = chromium.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 4
    for chart in charts:
        box = chart.rect
        assert 500 < box["width"] <= width and box["height"] > 80
        for line in chart.find_elements(By.CSS_SELECTOR, "polyline"):
            drawn = chromium.execute_script("const b = arguments[0].getBBox(); return [b.width, b.height]", line)
            assert drawn[0] > 300, drawn  # spans the run's time
    legend = [key.text for key in chromium.find_elements(By.CSS_SELECTOR, "svg text.key")]
    assert legend == ["■ accounted", "■ stored", "■ failed"]
    runs = chromium.find_elements(By.XPATH, "//h2[.='Runs of this store']/following-sibling::table[1]//tr")
    assert len(runs) == 3  # a header, the rerun, the first run
    shot = tmp_path / "report.png"
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
