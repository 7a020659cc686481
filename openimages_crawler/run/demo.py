"""``scrapy demo``'s run (the command sets its options): a real crawl of a
generated offline mirror, no internet needed, checked against the mirror's truth."""

from __future__ import annotations

import csv
import glob
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from openimages_crawler.checkpoint.results import FailureRow, SuccessRow
from openimages_crawler.crawl.config import subset_feed_paths
from openimages_crawler.run.database import database_path, run_database
from openimages_crawler.testing.mirror import MirrorServer, build_mirror, refused_base

if TYPE_CHECKING:
    from scrapy.crawler import CrawlerProcess
    from scrapy.settings import BaseSettings

# The demo's hanging host must time out quickly.
DEMO_TIMEOUT = 2


def run_demo(process: CrawlerProcess, settings: BaseSettings, folder: Path, copies: int) -> int:
    """The mirror served, crawled, and the results checked against its truth; the exit status."""
    server = MirrorServer()
    mirror = build_mirror(server.bases, copies=copies, hang_seconds=DEMO_TIMEOUT * 3, refused_url=refused_base())
    metadata = mirror.write_metadata(folder / "mirror" / "images.csv")
    with server.serve(mirror):
        print(f"Mirror: {len(mirror.rows)} rows on {', '.join(server.bases)}")
        process.crawl(process.create_crawler("openimages"), metadata=str(metadata))
        process.start()
    run_database(settings)  # as at the end of any crawl
    return report(settings, mirror.expected())


def report(settings: BaseSettings, expected: dict[str, str]) -> int:
    """Print where the results went and check them against the mirror's truth."""
    outcome: dict[str, list[str]] = {}
    print("\nResults:")
    for item_class in (SuccessRow, FailureRow):
        for pattern in subset_feed_paths(settings, item_class):
            for path in sorted(glob.glob(pattern)):  # absolute or relative
                with open(path, newline="", encoding="utf-8") as handle:
                    rows = list(csv.DictReader(handle))
                for row in rows:
                    outcome.setdefault(row["ImageID"], []).append(
                        row.get("FailureReason", "success")
                    )
                print(f"  {path}: {len(rows)} rows")
    reasons = Counter(v[0] for v in outcome.values() if v)
    print("  outcomes: " + ", ".join(f"{k}={n}" for k, n in sorted(reasons.items())))
    store = Path(settings["IMAGES_STORE"])
    print(f"  images: {store}/<Subset>/images-resized/ and images-original/")
    if settings.getbool("OPENIMAGES_REPORT"):
        print(f"  report: {store / 'report.html'}")
    database = database_path(settings)
    if database is not None:
        print(f"  database: {database} (duckdb; queries in README)")
    wrong = {k: (v, outcome.get(k)) for k, v in expected.items() if outcome.get(k) != [v]}
    if wrong:
        print(f"MISMATCH: {len(wrong)} rows not recorded exactly once as expected:")
        for image_id, (want, got) in sorted(wrong.items()):
            print(f"  {image_id}: expected {want}, got {got}")
        return 1
    print(f"All {len(expected)} rows recorded exactly once, each with the expected outcome.")
    print("Next: scrapy crawl openimages -a version=7 -a subset=validation (the real dataset; needs the "
          "internet), or scrapy demo again (a rerun finds everything done).")
    return 0
