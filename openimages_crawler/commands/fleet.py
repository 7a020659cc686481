"""``scrapy fleet``: the command (see :mod:`openimages_crawler.fleet` for how a
fleet works): its options, and the call into ``fleet.launch`` (a new fleet, or
a watch re-attached to the store's), ``fleet.control`` (--status, --cancel)."""

from __future__ import annotations

import argparse

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.conf import arglist_to_dict
from scrapy.utils.log import configure_logging

from openimages_crawler.commands.setting_names import check_setting_names
from openimages_crawler.exits import EXIT_USAGE, fail
from openimages_crawler.fleet.control import cancel_fleet, show_status
from openimages_crawler.fleet.launch import FleetRequest, fleet_store, reattach, start_fleet
from openimages_crawler.fleet.scrapyd import DEFAULT_PROJECT, recorded_targets
from openimages_crawler.fleet.state import read_fleet
from openimages_crawler.store.objects import StoreUnavailable


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False  # the crawling happens in the Scrapyd jobs
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return ("openimages [-a NAME=VALUE ...] [-s NAME=VALUE ...] --targets NAME[,NAME...]|all --shards N "
                "[--no-watch] [--project P] | --status | --cancel | --watch")

    def short_desc(self) -> str:
        return "Crawl in N shard jobs on Scrapyd nodes that share IMAGES_STORE, and watch them to the end"

    def long_desc(self) -> str:
        return ("Schedule shard K/N of the crawl as one job per shard, round-robin over the Scrapyd targets "
                "of scrapy.cfg ([deploy:NAME] sections), watch their progress, schedule a shard again on "
                "another node when its job or node dies, and merge the results and write one report at the "
                "end. IMAGES_STORE must be a bucket (s3://, gs://) or an absolute folder every node mounts at "
                "the same path. --status shows the fleet recorded in the store, --cancel stops its jobs, --watch follows it.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-a", dest="spargs", action="append", default=[], metavar="NAME=VALUE",
                            help="crawl argument, as for scrapy crawl (may be repeated; not shard; default: none)")
        parser.add_argument("--targets", default="all", metavar="NAME[,NAME...]",
                            help="Scrapyd targets of scrapy.cfg ([deploy:NAME]), or all (default)")
        parser.add_argument("--shards", type=int, metavar="N", help="jobs to split the crawl into "
                            "(default: one per target)")
        parser.add_argument("--project", help="the Scrapyd project (default: the target's project, "
                            f"else {DEFAULT_PROJECT})")
        parser.add_argument("--watch", action=argparse.BooleanOptionalAction, default=None,
                            help="follow the jobs to the end (the default); alone: re-attach to the "
                            "store's fleet. --no-watch returns once they are scheduled")
        actions = parser.add_mutually_exclusive_group()
        actions.add_argument("--status", action="store_true", help="show the store's fleet and exit (default: start a fleet)")
        actions.add_argument("--cancel", action="store_true", help="stop every job of the store's fleet (default: start a fleet)")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        try:
            opts.spargs = arglist_to_dict(opts.spargs)
        except ValueError:
            raise UsageError("Invalid -a value, use -a NAME=VALUE", print_help=False) from None

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        configure_logging(self.settings)  # no crawler process does it for this command
        try:
            self.exitcode = self.dispatch(args, opts)
        except (UsageError, StoreUnavailable) as exc:  # a bucket refused (its leases, say): one line
            self.exitcode = fail(str(exc), EXIT_USAGE)

    def dispatch(self, args: list[str], opts: argparse.Namespace) -> int:
        assert self.settings is not None
        check_setting_names(self.settings)  # a misspelled name: one line, before any job is scheduled
        if opts.status or opts.cancel or (opts.watch and not args):
            if args or opts.spargs:
                raise UsageError("--status, --cancel and --watch alone act on the store's fleet: "
                                 "give no spider or -a")
            store = fleet_store(self.settings)
            fleet = read_fleet(store)
            if fleet is None:
                raise UsageError(f"no fleet recorded in {store.uri} (IMAGES_STORE)")
            if opts.status:
                return show_status(fleet, recorded_targets(fleet), store)
            if opts.cancel:
                with store.exclusive("fleet"):  # after a watch's current look
                    fleet = read_fleet(store) or fleet
                    return cancel_fleet(fleet, recorded_targets(fleet), store)
            return reattach(self.settings, fleet, store, arglist_to_dict(opts.set))
        if len(args) != 1:
            raise UsageError("give the spider (scrapy fleet openimages ...), or --status, --cancel or --watch")
        request = FleetRequest(opts.spargs, arglist_to_dict(opts.set), opts.targets, opts.project, opts.shards,
                               opts.watch)
        return start_fleet(self.settings, args[0], request)
