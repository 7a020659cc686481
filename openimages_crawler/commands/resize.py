"""``scrapy resize``: resize a tree of images with the crawl's Pillow code, on
every core, with the crawl's progress display.

Parity with the downsampled-Open-Images resizer's options, as long options
where its short ones (-s, -a, -l) would clash with Scrapy's global options.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.log import configure_logging

from openimages_crawler.commands.setting_names import refuse_unknown_settings
from openimages_crawler.imaging.pillow import (
    OUTPUT_FORMATS,
    RESAMPLE_FILTERS,
    RESIZE_MODES,
    ResizeSpec,
    parse_color,
)
from openimages_crawler.imaging.tree import ResizeOptions
from openimages_crawler.monitor.progress import ProgressDisplay
from openimages_crawler.run.resize import TreeResize
from openimages_crawler.store.local import remove_dead_staging

logger = logging.getLogger(__name__)


class Command(ScrapyCommand):
    requires_project = False
    requires_crawler_process = False  # it never crawls
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return "-i IN_DIR -o OUT_DIR --size SIZE [options]"

    def short_desc(self) -> str:
        return "Resize a tree of images (e.g. an extracted CVDF tarball or a store's originals)"

    def long_desc(self) -> str:
        return (
            "Resize every image under IN_DIR into OUT_DIR, mirroring the folders, with the "
            "crawl's resize modes and decoder checks. Existing outputs are skipped, outputs are "
            "written atomically, unreadable files are reported (see --log) without stopping."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-i", "--input", dest="in_dir", required=True, help="folder of images (required)")
        parser.add_argument("-o", "--output", dest="out_dir", required=True, help="folder for the outputs (required)")
        parser.add_argument("--size", type=int, required=True, help="box size in pixels (required)")
        parser.add_argument("--mode", default="ShrinkToFit", choices=RESIZE_MODES,
                            help="ShrinkToFit: fit inside the box, never enlarge; FillCrop: fill the box, "
                            "crop the centre; FillDistort: fill the box, stretch; FitPad: ShrinkToFit, then pad "
                            "to the square (--pad-color); ShortSide: the shorter side becomes SIZE, enlarged "
                            "if smaller, aspect kept (default: ShrinkToFit)")
        parser.add_argument("--pad-color", default=None,
                            help="FitPad's padding colour, any Pillow colour: black, '#808080', "
                            "'rgb(124,116,104)' (default: OPENIMAGES_PAD_COLOR, black)")
        parser.add_argument("--ext", default="jpg", choices=tuple(OUTPUT_FORMATS),
                            help="output format (default: jpg)")
        parser.add_argument("--algorithm", default="lanczos", choices=tuple(RESAMPLE_FILTERS),
                            help="resampling filter (default: lanczos)")
        parser.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality (default 90)")
        parser.add_argument("-j", "--processes", type=int, default=0,
                            help="worker processes (default: one per CPU)")
        parser.add_argument("--log", dest="failure_log",
                            help="CSV of the files that could not be resized (path, reason, details; default: none, "
                            "the log says them)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        settings = self.settings
        if (refused := refuse_unknown_settings(self.settings)) is not None:  # a misspelled name: one line, exit 2
            self.exitcode = refused
            return
        configure_logging(settings)  # no crawler process does it for this command
        in_dir, out_dir = Path(opts.in_dir), Path(opts.out_dir)
        if not in_dir.is_dir():
            raise UsageError(f"-i {in_dir}: not a folder")
        if out_dir.resolve() == in_dir.resolve():
            raise UsageError("-o must be another folder than -i")
        if opts.processes < 0:
            raise UsageError(f"-j {opts.processes}: give 1 or more processes (0: one per CPU)")
        color, color_name = opts.pad_color, "--pad-color"
        if color is None:  # outside the project there is no setting: ResizeSpec's own default
            color, color_name = settings["OPENIMAGES_PAD_COLOR"], "OPENIMAGES_PAD_COLOR"
        try:
            padding = {} if color is None else {"pad_color": parse_color(color)}
        except ValueError as exc:
            raise UsageError(f"{color_name}: {exc}") from None
        try:
            spec = ResizeSpec(mode=opts.mode, size=opts.size, resample=opts.algorithm, format=opts.ext,
                              quality=opts.quality, **padding)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        options = ResizeOptions(
            spec=spec,
            max_pixels=settings.getint("OPENIMAGES_MAX_PIXELS"),
            max_decode_bytes=settings.getint("OPENIMAGES_MAX_DECODE_BYTES"),
            max_bytes=settings.getint("DOWNLOAD_MAXSIZE") or 1 << 62,
            fast=settings.getbool("OPENIMAGES_FAST_RESIZE"),
        )
        display = ProgressDisplay(
            str(settings["OPENIMAGES_PROGRESS"]).lower(),
            settings.getfloat("LOGSTATS_INTERVAL"),
            unit="files",
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(out_dir)  # left by a killed run
        run = TreeResize(in_dir, out_dir, options, opts.processes or os.cpu_count() or 1, display,
                         Path(opts.failure_log) if opts.failure_log else None)
        try:
            run.start()
        except KeyboardInterrupt:
            logger.warning("Interrupted: the outputs written so far are whole; run again to finish")
            self.exitcode = 130
            return
        self.exitcode = 0
