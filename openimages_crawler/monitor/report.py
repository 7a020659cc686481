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

from openimages_crawler.monitor.progress import Counts, duration
from openimages_crawler.store.base import Store, writing_text

logger = logging.getLogger(__name__)

_TOP_HOSTS = 30


@dataclass
class HostTally:
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def throughput(history: list[Counts]) -> list[dict[str, float]]:
    """Rates between consecutive history points."""
    points = []
    for before, after in zip(history, history[1:], strict=False):
        span = after.time - before.time
        if span <= 0:
            continue
        points.append({
            "t": round(after.time, 1),
            "rows_done": after.done,
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
    if "process_cpu_s" in stages and "worker_cpu_s" in stages:
        stages = {**stages, "event_loop_cpu_s": max(stages["process_cpu_s"] - stages["worker_cpu_s"], 0.0)}
    top_hosts = sorted(hosts.items(), key=lambda kv: (-kv[1].failed, -kv[1].ok, kv[0]))[:_TOP_HOSTS]
    return {
        "run": run,
        "totals": {
            "rows_done": final.done,
            "stored": final.ok,
            "failed": final.failed,
            "already_done": final.done - images,
            "failures": dict(sorted(final.failures.items(), key=lambda kv: -kv[1])),
            "bytes_downloaded": final.bytes_in,
            "bytes_written": final.bytes_out,
            "images_per_s": round(images / final.time, 2) if final.time > 0 else 0.0,
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
               arguments: dict[str, Any], processes: int = 1) -> dict[str, Any]:
    """The report's ``run`` section."""
    return {
        "store": store_uri,
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "finish_reason": reason,
        "arguments": arguments,
        "processes": processes,
    }


def write(store: Store, figures: dict[str, Any]) -> None:
    """``report.json`` and ``report.html`` at the store's top (each atomically)."""
    try:
        for name, text in (("report.json", to_json(figures)), ("report.html", to_html(figures))):
            with writing_text(store, name) as out:
                out.write(text)
    except OSError as exc:
        logger.error("Cannot write the report in %s: %s", store.uri, exc)
        return
    logger.info("Report: %s (and report.json)", f"{store.uri.rstrip('/')}/report.html")


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def to_html(report: dict[str, Any]) -> str:
    """A self-contained page: figures, charts (inline SVG) and tables."""
    totals, run = report["totals"], report["run"]
    cards = [
        ("rows done", f"{totals['rows_done']:,}"),
        ("stored", f"{totals['stored']:,}"),
        ("failed", f"{totals['failed']:,}"),
        ("already done before", f"{totals['already_done']:,}"),
        ("downloaded", _bytes(totals["bytes_downloaded"])),
        ("written", _bytes(totals["bytes_written"])),
        ("images/s (mean)", f"{totals['images_per_s']:.1f}"),
        ("duration", duration(run.get("seconds"))),
    ]
    series = report["throughput"]
    stages = {k: v for k, v in report["stages"].items() if k.endswith("_s")}
    parts = [
        f"<h1>Open Images crawl report</h1><p class=sub>{_e(run.get('store', ''))} · "
        f"{_e(run.get('started', ''))} → {_e(run.get('finished', ''))} · finished: "
        f"{_e(run.get('finish_reason', ''))} · {_e(_arguments(run.get('arguments', {})))}</p>",
        "<div class=cards>" + "".join(
            f"<div class=card><b>{_e(value)}</b><span>{_e(label)}</span></div>" for label, value in cards
        ) + "</div>",
        "<h2>Throughput over time</h2>",
        _line_chart([(p["t"], p["images_per_s"]) for p in series], "images/s"),
        _line_chart([(p["t"], p["mb_in_per_s"]) for p in series], "MB/s downloaded"),
        "<h2>Failures by reason</h2>",
        _bars(list(totals["failures"].items())) or "<p>No failures.</p>",
        "<h2>Hosts with the most errors</h2>",
        _host_table(report["hosts"]),
        "<h2>Time per stage</h2>",
        _bars([(name, value) for name, value in stages.items()], unit=" s"),
        f"<p class=sub>Per image: {_e(_per_image(report['stages']))}. download_s and worker_s add up "
        "the time of every image (they overlap across concurrent transfers and workers); prepare_s "
        "is the metadata and selection work before the first request.</p>",
        "<h2>Store totals</h2>",
        "<table>" + "".join(
            f"<tr><td>{_e(name)}</td><td class=num>{value:,}</td></tr>"
            for name, value in report["store_totals"].items()
        ) + "</table>",
    ]
    return _PAGE.format(body="\n".join(parts))


def _per_image(stages: dict[str, float]) -> str:
    parts = [f"{name.removesuffix('_s_per_image_ms')} {value:.1f} ms"
             for name, value in stages.items() if name.endswith("_per_image_ms")]
    return ", ".join(parts) or "no images"


def _arguments(arguments: dict[str, Any]) -> str:
    return " ".join(f"-a {name}={value}" for name, value in arguments.items())


def _e(value: object) -> str:
    return html.escape(str(value))


def _bytes(count: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _line_chart(points: list[tuple[float, float]], label: str, width: int = 720, height: int = 160) -> str:
    """An SVG line chart with its maximum and time span as labels."""
    if len(points) < 2:
        return f"<p class=sub>{_e(label)}: not enough samples for a chart.</p>"
    x0, x1 = points[0][0], points[-1][0]
    top = max(y for _, y in points) or 1.0
    pad = 30

    def xy(x: float, y: float) -> str:
        px = pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
        py = height - pad - y / top * (height - 2 * pad)
        return f"{px:.1f},{py:.1f}"

    line = " ".join(xy(x, y) for x, y in points)
    return (
        f'<svg class=chart viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" class=axis />'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" class=axis />'
        f'<polyline points="{line}" class=series />'
        f'<text x="{pad + 4}" y="{pad - 8}">{_e(label)} (max {top:.1f})</text>'
        f'<text x="{width - pad}" y="{height - 8}" text-anchor="end">{_e(duration(x1 - x0))}</text>'
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
    if not hosts:
        return "<p>No images.</p>"
    rows = "".join(
        f"<tr><td>{_e(h['host'] or '(no host)')}</td><td class=num>{h['stored']:,}</td>"
        f"<td class=num>{h['failed']:,}</td><td>{_e(', '.join(f'{k} {v}' for k, v in h['failures'].items()))}</td></tr>"
        for h in hosts
    )
    return f"<table><tr><th>host</th><th>stored</th><th>failed</th><th>reasons</th></tr>{rows}</table>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Open Images crawl report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
h1 {{ margin-bottom: 0; }} .sub {{ color: #666; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .6em; margin: 1em 0; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .5em .8em; min-width: 9em; }}
.card b {{ display: block; font-size: 1.4em; }} .card span {{ color: #666; }}
.chart {{ width: 100%; height: auto; background: #fafafa; border: 1px solid #eee; margin-bottom: .5em; }}
.chart .axis {{ stroke: #999; }} .chart .series {{ fill: none; stroke: #2a6fdb; stroke-width: 2; }}
.chart text {{ font-size: 12px; fill: #555; }}
.bar {{ display: flex; align-items: center; gap: .5em; margin: .2em 0; }}
.bar .label {{ width: 12em; }} .bar .track {{ flex: 1; background: #eee; height: .9em; }}
.bar .fill {{ display: block; height: 100%; background: #d9534f; }} .num {{ text-align: right; min-width: 6em; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #eee; padding: .2em .6em; text-align: left; }}
</style></head><body>
{body}
</body></html>
"""
