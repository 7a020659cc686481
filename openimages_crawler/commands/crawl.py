"""``scrapy crawl``, with the errors and the exit status this project promises.

Scrapy's own command lets a start error surface as "Task exception was never
retrieved" and a traceback, and exits 0 after a stopped crawl. Here a usage
mistake is one line on stderr and exit 2, before anything is downloaded or
written; the exit status is 0 only when the crawl finished, and a stop says
how many rows are still pending (130 after SIGINT, 143 after SIGTERM).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from openimages_crawler.commands.setting_names import check_setting_names, spider_settings
from openimages_crawler.crawl.config import CrawlConfig, check_store, isolate_shard_records, open_crawl_store
from openimages_crawler.crawl.processes import die_with_supervisor, plan_processes, process_count, supervisor_pid
from openimages_crawler.crawl.spider import OpenImagesSpider, scrapy_arguments
from openimages_crawler.exits import EXIT_USAGE, Exit
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments
from openimages_crawler.job.prepare import selection_of
from openimages_crawler.monitor.logs import quiet_framework
from openimages_crawler.run.crawl import ProcessCrawl, record_job_error
from openimages_crawler.run.finish import Extras
from openimages_crawler.run.supervisor import Supervisor
from openimages_crawler.store.base import store_scheme

if TYPE_CHECKING:
    import argparse


class Command(ScrapyCrawlCommand):
    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        quiet_framework(self.settings)  # before the crawler process logs its banner

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            super().run(args, opts)  # Scrapy's own usage errors
            return
        assert self.crawler_process is not None and self.settings is not None
        supervisor = supervisor_pid()
        if supervisor is not None:
            die_with_supervisor(supervisor)
        elif "_job" in opts.spargs:  # a Scrapyd job: it stops when its daemon is killed (a fleet reschedules it)
            die_with_supervisor(os.getppid())
        try:
            extras = self.check(args[0], opts.spargs)
            processes = process_count(self.settings["OPENIMAGES_PROCESSES"])
        except UsageError as exc:
            ending = Exit(EXIT_USAGE, str(exc))
            self.exitcode = ending.said()
            record_job_error(self.settings, opts.spargs, ending)
            return
        wanted = processes > 1 and supervisor is None and args[0] == OpenImagesSpider.name
        plan = plan_processes(self.settings, processes) if wanted else None
        if plan is not None and plan.count > 1:
            ending = Supervisor(self.settings, args[0], opts.spargs, plan).run(extras)
        else:
            crawl = ProcessCrawl(self.crawler_process, self._create_crawler(args[0]), opts.spargs,
                                 supervised=supervisor is not None)
            ending = crawl.run(extras)
        self.exitcode = ending.said()

    def check(self, spider_name: str, given: dict[str, Any]) -> Extras:
        """What can be checked before the crawl starts, without touching the
        store; what follows the crawl (``-a export``)."""
        assert self.settings is not None and self.crawler_process is not None
        check_setting_names(self.settings, spider_settings(self.crawler_process, spider_name))  # misspelled names
        if spider_name != OpenImagesSpider.name:
            return Extras()
        try:
            arguments = CrawlArguments.from_given(scrapy_arguments(dict(given))[1])
            selection_of(arguments)  # id lists too
        except ArgumentError as exc:
            raise UsageError(str(exc)) from None
        CrawlConfig.from_settings(self.settings)  # the settings' own checks
        store = open_crawl_store(self.settings)
        check_store(store)
        if arguments.exports and store_scheme(store.uri) not in ("", "file"):
            raise UsageError("-a export writes label files beside the images, in a folder store: run "
                             "scrapy export on a folder copy of this store instead")
        if supervisor_pid() is None:  # a supervised process has its supervisor's settings
            isolate_shard_records(self.settings, arguments.shard)
        return Extras(formats=arguments.exports, subsets=list(arguments.splits))

