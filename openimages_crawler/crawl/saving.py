"""One image's work in a worker thread, for the pipeline: verify and encode
(``process``), then write the original and every output through the run's
sinks (``save``). No Scrapy import: the pipeline calls these from its pools."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from openimages_crawler import reasons
from openimages_crawler.checkpoint.results import with_recorded
from openimages_crawler.dataset.masks import mask_name_ok
from openimages_crawler.imaging.pillow import ResizeSpec
from openimages_crawler.imaging.placement import placed_annotations
from openimages_crawler.imaging.process import Expected, Outcome, process_image
from openimages_crawler.outputs.containers import Annotations, PackSink

if TYPE_CHECKING:
    from openimages_crawler.checkpoint.planner import RowPlan
    from openimages_crawler.crawl.config import CrawlConfig
    from openimages_crawler.crawl.run import CrawlRun


def process(config: CrawlConfig, body: bytes, plan: RowPlan) -> Outcome:
    """Verify and decode ``body``, and encode every output the plan says is missing."""
    row = plan.row
    check_md5 = config.check_md5_if_exists or not plan.from_store
    expected = (
        Expected(size=row.size, md5=row.md5 if check_md5 else None)
        if plan.verified
        else Expected()  # not the original: only the decode check applies
    )
    specs = {output.dir: output.spec for output in config.outputs}
    return process_image(body, expected, [specs[folder] for folder in plan.outputs], max_pixels=config.max_pixels,
                         max_decode_bytes=config.max_decode_bytes, fast=config.fast_resize, rotation=row.rotation,
                         want_md5=plan.record_download, keep=config.keep, hashes=config.hashes)


def save(run: CrawlRun, body: bytes, plan: RowPlan, outcome: Outcome, original_key: str) -> Outcome:
    """Write the original (before the resized files, so an interrupted image
    can later be resized from it without a download), then every encoded
    output; an ``io_error`` outcome when the store cannot take them."""
    config, store = run.config, run.store
    encoded, outcome.encoded = outcome.encoded, []
    free = store.free_bytes()
    if free is not None and free < config.min_free_bytes + len(body) + sum(map(len, encoded)):
        return Outcome(reasons.IO_ERROR, f"{free:,} bytes free in the store, under "
                                         f"OPENIMAGES_MIN_FREE_BYTES ({config.min_free_bytes:,})")
    tickets: list[str | None] = []
    labelled: Annotations | None = None
    specs = {output.dir: output.spec for output in config.outputs}
    # the packs' metadata holds what the results record: the original's size and hashes
    row = replace(plan.row, fields=with_recorded(plan.row.fields, run.recorded_columns, outcome.upright,
                                                 outcome.hashes))
    try:
        if run.labelled is not None:
            labelled = run.labelled.of(plan.row.subset, plan.row.image_id)
        if plan.keep_original and not plan.from_store:
            if run.originals is None:
                store.write(original_key, body)
                outcome.bytes_written += write_masks(run, plan, config.layout.originals_dir, labelled, None,
                                                     outcome.original_size, outcome)
            else:
                tickets.append(run.originals.write(row, original_key.rpartition(".")[2], body,
                                                   outcome.original_size,
                                                   _placed(labelled, outcome, None, outcome.original_size)))
            outcome.bytes_written += len(body)
        for folder, data, size in zip(plan.outputs, encoded, outcome.sizes, strict=True):
            sink, spec = run.sinks[folder], specs[folder]
            if isinstance(sink, PackSink):  # the sample carries its annotations
                tickets.append(sink.write(row, spec.format, data, size, _placed(labelled, outcome, spec, size)))
            else:
                tickets.append(sink.write(row, spec.format, data, size, None))
                outcome.bytes_written += write_masks(run, plan, folder, labelled, spec, size, outcome)
            outcome.bytes_written += len(data)
        outcome.tickets = [ticket for ticket in tickets if ticket is not None]
    except OSError as exc:
        return Outcome(reasons.IO_ERROR, f"cannot write to the store: {exc}")
    return outcome


def _placed(labelled: Annotations | None, outcome: Outcome, spec: ResizeSpec | None,
            size: tuple[int, int]) -> Annotations | None:
    return None if labelled is None else placed_annotations(labelled, outcome.geometry, spec, size)


def write_masks(run: CrawlRun, plan: RowPlan, folder: str, labelled: Annotations | None, spec: ResizeSpec | None,
                size: tuple[int, int], outcome: Outcome) -> int:
    """A files output's masks, moved with its pixels, under
    ``{Subset}/masks/{folder}/{prefix}/{MaskPath}`` (the originals': the official
    PNGs); the bytes written."""
    if labelled is None or not labelled.get("masks"):
        return 0
    written = 0
    layout, row = run.config.layout, plan.row
    for mask in _placed({"masks": labelled["masks"]}, outcome, spec, size)["masks"]:  # type: ignore[index]
        if mask["png"] is None or not mask_name_ok(mask["MaskPath"], row.image_id):  # a name from a file
            continue
        run.store.write(layout.mask_key(row.subset, folder, row.image_id, mask["MaskPath"]), mask["png"])
        written += len(mask["png"])
    return written


def timed(task: Callable[[], Outcome]) -> tuple[Outcome, float, float]:
    """Run ``task`` in a worker and say how long it took, in wall and CPU time
    (the report's stage times; the CPU the event loop spends is the rest)."""
    started, cpu = time.perf_counter(), time.thread_time()
    outcome = task()
    return outcome, time.perf_counter() - started, time.thread_time() - cpu
