"""``scrapy demo``: a real crawl of a generated offline mirror, no internet needed."""

from __future__ import annotations

import argparse
import csv
import glob
import shutil
from collections import Counter
from pathlib import Path

from scrapy.commands import ScrapyCommand
from scrapy.settings import SETTINGS_PRIORITIES

from openimages_crawler.crawl.config import subset_feed_paths
from openimages_crawler.monitor.logs import quiet_framework
from openimages_crawler.run.database import database_path, run_database
from openimages_crawler.checkpoint.results import FailureRow, SuccessRow
from openimages_crawler.testing.mirror import MirrorServer, build_mirror, refused_base

# The demo's hanging host must time out quickly.
DEMO_TIMEOUT = 2
# The demo stores a few MB: it runs where a real crawl's 1 GiB floor would stop it.
DEMO_MIN_FREE_BYTES = 64 * 1024**2


class Command(ScrapyCommand):
    requires_project = True

    def syntax(self) -> str:
        return "[options]"

    def short_desc(self) -> str:
        return "Crawl a generated local Open Images mirror (images and faults) and report"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--dir", default="demo", help="folder for the mirror and the store (default: demo)")
        parser.add_argument("--copies", type=int, default=2, help="images of each kind (default: 2)")
        parser.add_argument("--fresh", action="store_true", help="delete the folder first (default: keep it, "
                            "so a second demo finds everything done)")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        root = Path(opts.dir)
        if opts.fresh:
            shutil.rmtree(root, ignore_errors=True)
        demo_settings = {
            "IMAGES_STORE": str(root / "openimages"),
            "OPENIMAGES_SAVE_ORIGINALS": True,
            "DOWNLOAD_TIMEOUT": DEMO_TIMEOUT,
            "OPENIMAGES_MIN_FREE_BYTES": DEMO_MIN_FREE_BYTES,
            "OPENIMAGES_BLOCK_PRIVATE_HOSTS": False,  # the mirror's hosts are 127.0.0.1 and .2
        }
        for name, value in demo_settings.items():  # -s on the command line still wins
            if (self.settings.getpriority(name) or 0) < SETTINGS_PRIORITIES["cmdline"]:
                self.settings.set(name, value, priority="cmdline")
        quiet_framework(self.settings)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.crawler_process is not None and self.settings is not None
        server = MirrorServer()
        mirror = build_mirror(
            server.bases, copies=opts.copies, hang_seconds=DEMO_TIMEOUT * 3,
            refused_url=refused_base(),
        )
        metadata = mirror.write_metadata(Path(opts.dir) / "mirror" / "images.csv")
        with server.serve(mirror):
            print(f"Mirror: {len(mirror.rows)} rows on {', '.join(server.bases)}")
            self.crawler_process.crawl(self.crawler_process.create_crawler("openimages"),
                                       metadata=str(metadata))
            self.crawler_process.start()
        run_database(self.settings)  # as at the end of any crawl
        self.exitcode = self.report(mirror.expected())

    def report(self, expected: dict[str, str]) -> int:
        """Print where the results went and check them against the mirror's truth."""
        assert self.settings is not None
        outcome: dict[str, list[str]] = {}
        print("\nResults:")
        for item_class in (SuccessRow, FailureRow):
            for pattern in subset_feed_paths(self.settings, item_class):
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
        store = Path(self.settings["IMAGES_STORE"])
        print(f"  images: {store}/<Subset>/images-resized/ and images-original/")
        if self.settings.getbool("OPENIMAGES_REPORT"):
            print(f"  report: {store / 'report.html'}")
        database = database_path(self.settings)
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
