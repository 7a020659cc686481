"""``scrapy demo``: a real crawl of a generated offline mirror, no internet needed."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from scrapy.commands import ScrapyCommand
from scrapy.settings import SETTINGS_PRIORITIES

from openimages_crawler.commands.setting_names import refuse_unknown_settings
from openimages_crawler.monitor.logs import quiet_framework
from openimages_crawler.run.demo import DEMO_TIMEOUT, run_demo

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
        if (refused := refuse_unknown_settings(self.settings)) is not None:  # a misspelled name: one line, exit 2
            self.exitcode = refused
            return
        self.exitcode = run_demo(self.crawler_process, self.settings, Path(opts.dir), opts.copies)
