"""The resume decision, per metadata row, in one place.

A row is either already recorded (nothing to do, or outputs to rebuild),
complete in the store (recorded without a download), rebuildable from its
stored original (read back, checked, no download), or to be fetched. The
plan names what to write and travels with the request to the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from openimages_crawler.checkpoint.ledger import ResultsLedger
from openimages_crawler.checkpoint.results import FailureRow, SuccessRow, with_download, with_recorded
from openimages_crawler.dataset.rows import ImageRow, InvalidRow
from openimages_crawler.dataset.source import ImageSource
from openimages_crawler.outputs.sinks import OutputSink
from openimages_crawler.reasons import INVALID_ROW
from openimages_crawler.store.base import Store
from openimages_crawler.store.layout import StoreLayout


@dataclass(frozen=True, slots=True)
class PlannedOutput:
    """An output the planner checks: its folder, its sink and its file extension."""

    dir: str
    sink: OutputSink
    ext: str


@dataclass(frozen=True, slots=True)
class RowPlan:
    """What to do for one row that needs its image's bytes."""

    row: ImageRow
    url: str  # where the image is fetched from
    verified: bool  # the metadata's size and MD5 apply to these bytes
    original: str  # the original's key in the store
    keep_original: bool  # write the original there (unless it was read from there)
    outputs: tuple[str, ...]  # folders of the outputs still to write
    recorded: bool = False  # already in the results: rebuild outputs, record nothing
    from_store: bool = False  # read the stored original back instead of downloading
    record_download: bool = False  # the results name the URL used and the bytes stored

    def fetch_instead(self) -> RowPlan:
        """The plan once a stored original turned out bad: download it again."""
        return replace(self, from_store=False)


Work = RowPlan | SuccessRow | FailureRow | None


class RowPlanner:
    """Decides, from the ledger and the store, what each row needs."""

    def __init__(
        self,
        ledger: ResultsLedger,
        store: Store,
        layout: StoreLayout,
        outputs: tuple[PlannedOutput, ...],
        source: ImageSource,
        *,
        save_originals: bool,
        check_md5_if_exists: bool,
        originals: OutputSink | None = None,
        recorded_columns: tuple[str, ...] = (),
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.layout = layout
        self.outputs = outputs
        self.source = source
        self.save_originals = save_originals
        self.check_md5_if_exists = check_md5_if_exists
        self.originals = originals  # a container of originals (None: files in the layout)
        self.recorded_columns = recorded_columns  # the results' own columns (sizes, hashes), empty here

    def result_fields(self, fields: dict[str, str]) -> dict[str, str]:
        """A row's fields as a result without a download."""
        fields = with_download(fields) if self.source.records_download else fields
        return with_recorded(fields, self.recorded_columns)

    def plan(self, row: ImageRow | InvalidRow) -> Work:
        """Nothing (``None``), a result straight away, or a ``RowPlan``."""
        ledger = self.ledger
        if isinstance(row, InvalidRow):
            image_id = row.fields.get("ImageID", "")
            if image_id and (image_id in ledger.failed or image_id in ledger.succeeded):
                return None
            return FailureRow(self.result_fields(row.fields), row.subset, INVALID_ROW, row.details)
        if row.image_id in ledger.failed:
            return None
        recorded = row.image_id in ledger.succeeded
        missing = tuple(output.dir for output in self.outputs if not output.sink.holds(row, output.ext))
        done = None if recorded else SuccessRow(self.result_fields(row.fields), row.subset)
        if not missing and not self.save_originals:  # the common rerun: one stat a row
            return done
        url, verified = self.source.url_for(row)
        original = self.layout.original_key(row.subset, row.image_id, row.url)
        if self.originals is None:
            size = self.store.stat(original)
            stored = readable = size == row.size if verified else bool(size)
        else:  # in a pack: done, but not read back (fetched again for a missing output)
            stored, readable = self.originals.holds(row, ""), False
        original_done = not self.save_originals or (
            stored and (recorded or not self.check_md5_if_exists)
        )
        if not missing and original_done:
            return done
        return RowPlan(
            row=row,
            url=url,
            verified=verified,
            original=original,
            keep_original=self.save_originals and (self.originals is None or not stored),
            outputs=missing,
            recorded=recorded,
            from_store=readable,
            record_download=self.source.records_download,
        )
