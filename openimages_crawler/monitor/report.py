"""The end-of-run report: ``report.json`` (the figures) and ``report.html``
(the same, self-contained: inline CSS and SVG, no script, no network).

Pure functions from collected figures to text; the ``RunReport`` extension
collects them during the crawl and writes the files.
"""

from __future__ import annotations

import html
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from openimages_crawler.monitor.progress import Counts, byte_size, duration
from openimages_crawler.redact import redacted_settings
from openimages_crawler.store.base import Store, has_room, writing_text
from openimages_crawler.store.layout import REPORT_HTML, REPORT_JSON

logger = logging.getLogger(__name__)

_TOP_HOSTS = 30
HISTORY_RUNS = 200  # runs kept in the report's history, latest last

# The stages' times in words (report.json keeps the keys).
STAGE_NAMES = {
    "wall_s": "whole run (wall clock)",
    "prepare_s": "preparing the metadata and selection",
    "download_s": "downloading (all transfers)",
    "worker_s": "verifying, decoding, resizing, writing (all workers)",
    "worker_cpu_s": "CPU in the workers",
    "process_cpu_s": "CPU of the crawl (start-up included)",
    "event_loop_cpu_s": "CPU of the event loop's thread (from the spider's opening)",
}


@dataclass
class HostTally:
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def throughput(history: list[Counts]) -> list[dict[str, float]]:
    """Rates between consecutive history points: rows accounted (stored,
    failed or found done before), images processed, MB in and out; with the
    cumulative rows and the work in flight at each point."""
    points = []
    for before, after in zip(history, history[1:], strict=False):
        span = after.time - before.time
        if span <= 0:
            continue
        points.append({
            "t": round(after.time, 1),
            "rows_done": after.done,
            "stored": after.ok,
            "failed": after.failed,
            "in_flight": (after.downloading or 0) + after.working,
            "rows_per_s": round((after.done - before.done) / span, 2),
            "images_per_s": round((after.images - before.images) / span, 2),
            "mb_in_per_s": round((after.bytes_in - before.bytes_in) / span / 1e6, 3),
            "mb_out_per_s": round((after.bytes_out - before.bytes_out) / span / 1e6, 3),
        })
    return points


def build(
    *,
    final: Counts,
    history: list[Counts],
    hosts: dict[str, HostTally],
    stages: dict[str, float],
    run: dict[str, Any],
    store_totals: dict[str, int],
) -> dict[str, Any]:
    """The report's figures (what report.json holds)."""
    images = final.images
    top_hosts = sorted(hosts.items(), key=lambda kv: (-kv[1].failed, -kv[1].ok, kv[0]))[:_TOP_HOSTS]
    return {
        "run": run,
        "totals": {
            "rows_done": final.done,
            "stored": final.ok,
            "failed": final.failed,
            "left_out": final.omitted,
            "already_done": final.done - images,
            "failures": dict(sorted(final.failures.items(), key=lambda kv: -kv[1])),
            "left_out_reasons": dict(sorted(final.left_out.items(), key=lambda kv: -kv[1])),
            "bytes_downloaded": final.bytes_in,
            "bytes_written": final.bytes_out,
            "images_per_s": round(images / final.time, 2) if final.time > 0 else 0.0,
            "rows_per_s": round(final.done / final.time, 2) if final.time > 0 else 0.0,
        },
        "store_totals": store_totals,
        "throughput": throughput(history),
        "hosts": [
            {"host": host, "stored": tally.ok, "failed": tally.failed, "failures": dict(tally.failures)}
            for host, tally in top_hosts
        ],
        "stages": {
            **{name: round(value, 2) for name, value in stages.items()},
            **{
                f"{name}_per_image_ms": round(1000 * stages[name] / images, 2)
                for name in ("download_s", "worker_s", "worker_cpu_s", "event_loop_cpu_s")
                if name in stages and images
            },
        },
    }


def run_record(store_uri: str, *, started: str, seconds: float, reason: str,
               arguments: dict[str, Any], processes: int = 1,
               settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's ``run`` section; ``settings``: the run's settings that
    matter to its figures (outputs, processes, limits), by name."""
    return {
        "store": store_uri,
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "finish_reason": reason,
        "arguments": redacted_settings(arguments),
        "processes": processes,
        "settings": redacted_settings(settings or {}),
    }


def run_entry(figures: dict[str, Any]) -> dict[str, Any]:
    """One run in the report's history."""
    run, totals = figures.get("run", {}), figures.get("totals", {})
    return {
        **{name: run.get(name) for name in ("started", "finished", "seconds", "finish_reason", "arguments")},
        **{name: totals.get(name, 0) for name in ("rows_done", "stored", "failed", "already_done")},
    }


def with_history(figures: dict[str, Any], previous: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """What report.json holds after this run, and whether the previous run's
    figures were kept: a run that stored and failed nothing (a rerun over a
    finished store) adds itself to the history under the previous figures,
    so the report goes on telling what the crawl that did the work did."""
    runs: list[dict[str, Any]] = []
    if previous is not None:
        runs = list(previous.get("history") or [run_entry(previous)])
    runs = [*runs, run_entry(figures)][-HISTORY_RUNS:]
    totals = figures["totals"]
    if previous is not None and totals["stored"] + totals["failed"] == 0:
        return {**previous, "history": runs}, True
    return {**figures, "history": runs}, False


def previous_report(store: Store) -> dict[str, Any] | None:
    """The store's report.json, when there is a readable one."""
    try:
        if store.stat(REPORT_JSON) is None:
            return None
        figures = json.loads(store.read(REPORT_JSON))
    except (OSError, ValueError) as exc:
        logger.warning("The previous report in %s cannot be read (%s): a new one replaces it", store.uri, exc)
        return None
    return figures if isinstance(figures, dict) and "totals" in figures and "run" in figures else None


def write(store: Store, min_free_bytes: int, figures: dict[str, Any]) -> str | None:
    """``report.json`` and ``report.html`` at the store's top (each atomically),
    the previous runs kept in their history; the page's address, ``None``
    when it could not be written (or not below ``min_free_bytes``)."""
    figures, kept = with_history(figures, previous_report(store))
    pages = ((REPORT_JSON, to_json(figures)), (REPORT_HTML, to_html(figures)))
    if not has_room(store, min_free_bytes, sum(len(text.encode()) for _, text in pages)):
        return None
    try:
        for name, text in pages:
            with writing_text(store, name) as out:
                out.write(text)
    except OSError as exc:
        logger.error("Cannot write the report in %s: %s", store.uri, exc)
        return None
    page = f"{store.uri.rstrip('/')}/{REPORT_HTML}"
    if kept:
        logger.info("Report: %s keeps the previous run's figures (this run found nothing new; "
                    "it is added to the report's history)", page)
    else:
        logger.info("Report: %s (and %s)", page, REPORT_JSON)
    return page


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def to_html(report: dict[str, Any]) -> str:
    """A self-contained page: figures, charts (inline SVG) and tables."""
    totals, run = report["totals"], report["run"]
    cards = [
        ("rows accounted", f"{totals['rows_done']:,}"),
        ("stored", f"{totals['stored']:,}"),
        ("failed", f"{totals['failed']:,}"),
        ("left out (opted out, filtered)", f"{totals.get('left_out', 0):,}"),
        ("already done before", f"{totals['already_done']:,}"),
        ("downloaded", byte_size(totals["bytes_downloaded"])),
        ("written", byte_size(totals["bytes_written"])),
        ("rows/s (mean)", f"{totals.get('rows_per_s', 0.0):.1f}"),
        ("duration", duration(run.get("seconds"))),
    ]
    series = report["throughput"]
    stages = {k: v for k, v in report["stages"].items() if k.endswith("_s")}
    parts = [
        f"<h1>Open Images crawl report</h1><p class=sub>{_e(run.get('store', ''))} · "
        f"{_e(run.get('started', ''))} → {_e(run.get('finished', ''))} · finished: "
        f"{_e(run.get('finish_reason', ''))} · {_e(_arguments(run.get('arguments', {})))}</p>",
        _latest_run_notice(report),
        "<div class=cards>" + "".join(
            f"<div class=card><b>{_e(value)}</b><span>{_e(label)}</span></div>" for label, value in cards
        ) + "</div>",
        "<h2>Rows accounted over time</h2>",
        "<p class=sub>Every selected row ends stored, failed (with its reason) or found done by an earlier "
        "run. A flat stretch is time spent waiting: on slow or hanging hosts (timeouts, retries), or on "
        "the images in flight shown below.</p>",
        _line_chart({"accounted": [(0.0, 0), *((p["t"], p["rows_done"]) for p in series)],
                     "stored": [(0.0, 0), *((p["t"], p.get("stored", 0)) for p in series)],
                     "failed": [(0.0, 0), *((p["t"], p.get("failed", 0)) for p in series)]}, "rows"),
        _line_chart({"rows/s": [(p["t"], p.get("rows_per_s", 0.0)) for p in series]}, "rows accounted per second"),
        _line_chart({"in flight": [(p["t"], p.get("in_flight", 0)) for p in series]},
                    "images being downloaded or processed"),
        _line_chart({"MB/s": [(p["t"], p["mb_in_per_s"]) for p in series]}, "MB/s downloaded"),
        "<h2>Failures by reason</h2>",
        _bars(list(totals["failures"].items())) or "<p>No failures.</p>",
        "<h2>Hosts with the most errors</h2>",
        _host_table(report["hosts"]),
        "<h2>Time per stage</h2>",
        _bars([(STAGE_NAMES.get(name, name), value) for name, value in stages.items()], unit=" s"),
        f"<p class=sub>Per image: {_e(_per_image(report['stages']))}. Downloading and the workers' time "
        "add up the time of every image: they overlap across concurrent transfers and workers, so they "
        "can exceed the whole run.</p>",
        "<h2>Settings of this run</h2>",
        _grid([], [["arguments", _arguments(run.get("arguments", {})) or "(none)"],
                   ["processes", run.get("processes", 1)],
                   *([name, value] for name, value in run.get("settings", {}).items())]),
        "<h2>Store totals</h2>",
        _grid([], [[name, value] for name, value in report["store_totals"].items()]),
        "<h2>Runs of this store</h2>",
        _runs_table(report.get("history", [])),
    ]
    return _PAGE.format(body="\n".join(part for part in parts if part))


def _latest_run_notice(report: dict[str, Any]) -> str:
    """When the latest run found nothing new, say so above the figures it kept."""
    history = report.get("history") or []
    if not history or history[-1] == run_entry(report):
        return ""
    latest = history[-1]
    return (f"<p class=notice>The latest run ({_e(latest.get('finished', ''))}) found nothing new: its "
            f"{latest.get('rows_done', 0):,} rows were already done. The figures below are from the run that "
            f"finished {_e(report['run'].get('finished', ''))}.</p>")


def _runs_table(runs: list[dict[str, Any]]) -> str:
    return _grid(["finished", "took", "ended", "stored", "failed", "already done", "arguments"], [
        [entry.get("finished") or "", duration(entry.get("seconds")), entry.get("finish_reason") or "",
         entry.get("stored", 0), entry.get("failed", 0), entry.get("already_done", 0),
         _arguments(entry.get("arguments") or {})]
        for entry in reversed(runs)
    ], "No runs recorded.")


def _grid(headers: list[str], rows: list[list[object]], empty: str = "") -> str:
    """A table: with headers, a column table (numbers right-aligned); without,
    a list of names and values (left-aligned, whatever their type)."""
    if not rows:
        return f"<p>{_e(empty)}</p>" if empty else ""
    head = f"<tr>{''.join(f'<th>{_e(name)}</th>' for name in headers)}</tr>" if headers else ""
    body = "".join(f"<tr>{''.join(_cell(value, bool(headers)) for value in row)}</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _cell(value: object, align_numbers: bool) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"<td{' class=num' if align_numbers else ''}>{_number(value)}</td>"
    return f"<td>{_e(value)}</td>"


def _per_image(stages: dict[str, float]) -> str:
    parts = [f"{STAGE_NAMES.get(name.removesuffix('_per_image_ms'), name)} {value:.1f} ms"
             for name, value in stages.items() if name.endswith("_per_image_ms")]
    return ", ".join(parts) or "no images"


def _arguments(arguments: dict[str, Any]) -> str:
    return " ".join(f"-a {name}={value}" for name, value in arguments.items())


def _e(value: object) -> str:
    return html.escape(str(value))


def _line_chart(series: dict[str, list[tuple[float, float]]], label: str,
                width: int = 720, height: int = 170) -> str:
    """An SVG chart of one or more lines over time, labelled with the largest
    value, the time span and (for several lines) a legend in their colours."""
    points = [point for line in series.values() for point in line]
    if len({x for x, _ in points}) < 2:
        return f"<p class=sub>{_e(label)}: not enough samples for a chart.</p>"
    x0, x1 = min(x for x, _ in points), max(x for x, _ in points)
    top = max(y for _, y in points) or 1.0
    pad = 34

    def xy(x: float, y: float) -> str:
        px = pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
        py = height - pad - y / top * (height - 2 * pad)
        return f"{px:.1f},{py:.1f}"

    lines = "".join(
        f'<polyline points="{" ".join(xy(x, y) for x, y in line)}" class="series s{number}" />'
        for number, line in enumerate(series.values())
    )
    legend = "" if len(series) < 2 else "".join(
        f'<text x="{width - pad - 110 * (len(series) - number - 1)}" y="{pad - 10}" text-anchor="end" '
        f'class="key s{number}">■ {_e(name)}</text>'
        for number, name in enumerate(series)
    )
    return (
        f'<svg class=chart viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" class=axis />'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" class=axis />{lines}'
        f'<text x="{pad + 4}" y="{pad - 10}">{_e(label)} (max {_number(round(top, 1))})</text>{legend}'
        f'<text x="{pad}" y="{height - 10}">0s</text>'
        f'<text x="{width - pad}" y="{height - 10}" text-anchor="end">{_e(duration(x1))}</text>'
        "</svg>"
    )


def _bars(items: list[tuple[str, float]], unit: str = "") -> str:
    """Horizontal bars (HTML/CSS), largest first."""
    items = [(label, value) for label, value in items if value]
    if not items:
        return ""
    top = max(value for _, value in items)
    rows = "".join(
        f"<div class=bar><span class=label>{_e(label)}</span><span class=track>"
        f"<span class=fill style='width:{100 * value / top:.1f}%'></span></span>"
        f"<span class=num>{_number(value)}{_e(unit)}</span></div>"
        for label, value in sorted(items, key=lambda kv: -kv[1])
    )
    return f"<div class=bars>{rows}</div>"


def _number(value: float) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def _host_table(hosts: list[dict[str, Any]]) -> str:
    return _grid(["host", "stored", "failed", "reasons"], [
        [host["host"] or "(no host)", host["stored"], host["failed"],
         ", ".join(f"{reason} {count}" for reason, count in host["failures"].items())]
        for host in hosts
    ], "No images.")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Open Images crawl report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
h1 {{ margin-bottom: 0; }} .sub {{ color: #666; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .6em; margin: 1em 0; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .5em .8em; min-width: 9em; }}
.card b {{ display: block; font-size: 1.4em; }} .card span {{ color: #666; }}
.chart {{ width: 100%; height: auto; background: #fafafa; border: 1px solid #eee; margin-bottom: .5em; }}
.chart .axis {{ stroke: #999; }} .chart .series {{ fill: none; stroke-width: 2; }}
.chart .s0 {{ stroke: #2a6fdb; fill: #2a6fdb; }} .chart .s1 {{ stroke: #2e9d4f; fill: #2e9d4f; }}
.chart .s2 {{ stroke: #d9534f; fill: #d9534f; }} .chart polyline.series {{ fill: none; }}
.chart text {{ font-size: 12px; fill: #555; }} .chart text.key {{ stroke: none; }}
.notice {{ background: #fff8e1; border: 1px solid #f0d68a; border-radius: 6px; padding: .5em .8em; }}
.bar {{ display: flex; align-items: center; gap: .5em; margin: .2em 0; }}
.bar .label {{ width: 19em; }} .bar .track {{ flex: 1; background: #eee; height: .9em; }}
.bar .fill {{ display: block; height: 100%; background: #d9534f; }} .num {{ text-align: right; min-width: 6em; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #eee; padding: .2em .6em; text-align: left; }}
</style></head><body>
{body}
</body></html>
"""
