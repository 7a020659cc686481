"""``scrapy db``: the store's DuckDB database built or brought up to date
(``run.database``); also run at the end of every crawl (OPENIMAGES_DATABASE)."""

from __future__ import annotations

import argparse

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.log import configure_logging

from openimages_crawler.commands.setting_names import refuse_unknown_settings
from openimages_crawler.run.database import STORE_PLACEHOLDER, run_database
from openimages_crawler.run.export import folder_store


class Command(ScrapyCommand):
    requires_project = False
    requires_crawler_process = False  # it never crawls
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return "--store STORE [--database PATH]"

    def short_desc(self) -> str:
        return "Build or update the store's DuckDB database (images, classes, labels, boxes)"

    def long_desc(self) -> str:
        return ("The store's results, pending rows, annotations and class descriptions as DuckDB tables "
                "images, classes, labels and boxes, in STORE/openimages.duckdb (OPENIMAGES_DATABASE). Only "
                "what changed since the last update is read; reading needs only the duckdb package.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--store", help="the store's folder (default: IMAGES_STORE)")
        parser.add_argument("--database", help="the database file (default: OPENIMAGES_DATABASE, "
                            "{IMAGES_STORE}/openimages.duckdb)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        settings = self.settings
        if (refused := refuse_unknown_settings(self.settings)) is not None:  # a misspelled name: one line, exit 2
            self.exitcode = refused
            return
        configure_logging(settings)
        if args:
            raise UsageError(f"unexpected argument {args[0]!r}: give the store with --store")
        folder_store(opts.store, settings, "give a folder (an object store's database is in its work folder: "
                     "--store that folder)")
        if opts.database:
            settings.set("OPENIMAGES_DATABASE", opts.database, priority="cmdline")
        elif not settings.get("OPENIMAGES_DATABASE"):
            settings.set("OPENIMAGES_DATABASE", f"{STORE_PLACEHOLDER}/openimages.duckdb", priority="cmdline")
        self.exitcode = 0 if run_database(settings) else 1
