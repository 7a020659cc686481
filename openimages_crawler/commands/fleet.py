"""``scrapy fleet``: the command (see :mod:`openimages_crawler.fleet` for how a
fleet works): its options, the checks of what the user gave, done before any
job exists, and the start of a fleet or a watch re-attached to one."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.conf import arglist_to_dict
from scrapy.utils.log import configure_logging

from openimages_crawler.crawl.config import CrawlConfig, check_store, open_crawl_store
from openimages_crawler.crawl.processes import process_count
from openimages_crawler.crawl.spider import OpenImagesSpider, scrapy_arguments
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments
from openimages_crawler.exits import EXIT_OK, EXIT_USAGE, fail
from openimages_crawler.fleet.control import cancel_fleet, show_status
from openimages_crawler.fleet.scrapyd import (
    DEFAULT_PROJECT,
    ScrapydTarget,
    TargetError,
    TargetRefused,
    ask_all,
    configured_targets,
    pick_targets,
    recorded_targets,
)
from openimages_crawler.fleet.state import (
    DONE,
    FAILED,
    FINISHED,
    RUNNING,
    UNFINISHED,
    Fleet,
    ShardJob,
    assign,
    job_id,
    new_run_id,
    read_fleet,
    timestamp,
    write_fleet,
)
from openimages_crawler.fleet.watch import (
    Watch,
    cancel_quietly,
    job_settings,
    shard_arguments,
)
from openimages_crawler.redact import is_secret
from openimages_crawler.store.base import Store
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.objects import StoreUnavailable

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

PATH_ARGUMENTS = ("metadata", "ids", "exclude")  # read by every job, on its node
OBJECT_SCHEMES = ("s3", "gs")  # stores every node reaches by itself


def fleet_store(settings: BaseSettings) -> Store:
    """IMAGES_STORE as every node reaches it: a bucket (``s3://``, ``gs://``), or
    the absolute folder every node mounts at the same path (a relative path
    would be resolved in each job's own working folder, a Scrapyd node's)."""
    uri = str(settings["IMAGES_STORE"] or "")
    parts = urlsplit(uri)
    if parts.scheme in OBJECT_SCHEMES:
        return open_crawl_store(settings)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        path = unquote(parts.path)
    elif parts.scheme == "":
        path = uri
    else:
        raise UsageError(f"IMAGES_STORE={uri!r}: a fleet needs a bucket (s3://, gs://) or a folder on a shared "
                         "filesystem that every node mounts at the same absolute path (a path or file:///path)")
    if not os.path.isabs(path):
        raise UsageError(f"IMAGES_STORE={uri!r} is relative: each node would resolve it in its own folder; "
                         "give the absolute path of a folder on a shared filesystem every node mounts there")
    return LocalStore(path)


def check_secrets(given_settings: dict[str, str]) -> None:
    """A fleet records its settings in the store and gives them to every
    Scrapyd job (whose listing and log show them): no secret goes there."""
    secret = sorted(name for name in given_settings if is_secret(name))
    if secret:
        raise UsageError(f"-s {secret[0]}: a fleet writes its -s settings into the store and every job's "
                         "log; give each node its credentials in its own environment (AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role) or in the deployed project's settings")


def check_arguments(given: dict[str, str]) -> None:
    """The crawl's own checks of ``-a``, here before any job exists, plus the
    fleet's: it assigns the shards, and jobs read the files on their nodes."""
    if "shard" in given:
        raise UsageError("-a shard: the fleet assigns the shards itself (--shards N)")
    reserved = sorted(name for name in given if name.startswith("_"))
    if reserved:
        raise UsageError(f"-a {reserved[0]}: arguments starting with _ are the scheduler's")
    for name in PATH_ARGUMENTS:
        if given.get(name) and not os.path.isabs(given[name]):
            raise UsageError(f"-a {name}={given[name]} is relative: jobs run in their node's folder; give "
                             "the absolute path of a file on the shared filesystem")
    try:
        CrawlArguments.from_given(scrapy_arguments(dict(given))[1])
    except ArgumentError as exc:
        raise UsageError(str(exc)) from None


def check_settings(settings: BaseSettings) -> None:
    """The settings every job will read, checked once here (a mistake would
    otherwise stop N jobs one by one)."""
    CrawlConfig.from_settings(settings)
    process_count(settings["OPENIMAGES_PROCESSES"])


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
            return self.reattach(fleet, store, arglist_to_dict(opts.set))
        if len(args) != 1:
            raise UsageError("give the spider (scrapy fleet openimages ...), or --status, --cancel or --watch")
        return self.start(args[0], opts)

    def start(self, spider: str, opts: argparse.Namespace) -> int:
        assert self.settings is not None
        if spider != OpenImagesSpider.name:
            raise UsageError(f"scrapy fleet runs the {OpenImagesSpider.name} spider, not {spider!r}")
        store = fleet_store(self.settings)
        uri = store.uri  # a bucket's, or the absolute folder every node mounts
        given_settings = arglist_to_dict(opts.set)
        check_secrets(given_settings)
        settings = self.settings.copy()
        settings.set("IMAGES_STORE", uri, priority="cmdline")
        check_arguments(opts.spargs)
        check_settings(settings)
        targets = pick_targets(configured_targets(), opts.targets, opts.project)
        shards = len(targets) if opts.shards is None else opts.shards
        if shards < 1:
            raise UsageError(f"--shards {shards}: give 1 or more")
        check_store(store)  # a bucket answers, before any job exists
        with store.exclusive("fleet"):  # (a folder store is made with its .locks folder)
            refuse_unfinished(read_fleet(store), store.uri)
            check_targets(targets, spider)
            run = new_run_id()
            fleet = Fleet(
                run=run, spider=spider, shards=shards, arguments=dict(opts.spargs),
                settings={**given_settings, "IMAGES_STORE": uri},
                targets={t.name: {"url": t.url, "project": t.project} for t in targets},
                jobs=[ShardJob(index, name, job_id(run, index, shards, 1))
                      for index, name in enumerate(assign(shards, [t.name for t in targets]), start=1)],
            )
            write_fleet(store, fleet)
            schedule_all(fleet, {t.name: t for t in targets}, store)
        logger.info("Fleet %s: %d shards scheduled on %s", run, shards, ", ".join(map(repr, targets)))
        if opts.watch is False:
            print(f"Fleet {run}: {shards} jobs scheduled on {', '.join(t.name for t in targets)}. Follow them "
                  "with `scrapy fleet --watch` (it also schedules again the shards of nodes that die) or "
                  "`scrapy fleet --status`, with the same IMAGES_STORE.")
            return EXIT_OK
        return Watch(fleet, {t.name: t for t in targets}, store, settings).run()

    def reattach(self, fleet: Fleet, store: Store, given_settings: dict[str, str]) -> int:
        assert self.settings is not None
        if fleet.state == FINISHED:
            print(f"Fleet {fleet.run} finished at {fleet.ended}: nothing to watch.")
            return EXIT_OK
        if fleet.state not in UNFINISHED:
            raise UsageError(f"fleet {fleet.run} was {fleet.state}: start a new one with scrapy fleet openimages ...")
        settings = self.settings.copy()
        # The jobs' settings (their FEEDS, for the merge), and this command's -s (its progress display).
        settings.setdict({**fleet.settings, **given_settings}, priority="cmdline")
        fleet.state = RUNNING
        return Watch(fleet, recorded_targets(fleet), store, settings).run()


def refuse_unfinished(fleet: Fleet | None, where: str) -> None:
    if fleet is not None and fleet.unfinished:
        done = sum(job.state == DONE for job in fleet.jobs)
        raise UsageError(f"{where} already has fleet {fleet.run} ({fleet.state}, {done} of {fleet.shards} shards "
                         "done): follow it with `scrapy fleet --watch` or stop it with `scrapy fleet --cancel`")


def check_targets(targets: list[ScrapydTarget], spider: str) -> None:
    """Every target answers and has the project with the spider, before any job exists."""
    answers = ask_all(targets, lambda target: target.spiders())
    for target in targets:
        spiders = answers[target.name]
        if isinstance(spiders, TargetRefused):
            raise UsageError(f"{spiders} (deploy the project: scrapyd-deploy {target.name} -p {target.project})")
        if isinstance(spiders, TargetError):
            raise UsageError(str(spiders))
        if spider not in spiders:
            raise UsageError(f"{target!r}: project {target.project} has no spider {spider} "
                             f"(deploy it again: scrapyd-deploy {target.name} -p {target.project})")


def schedule_all(fleet: Fleet, targets: dict[str, ScrapydTarget], store: Store) -> None:
    """The first job of every shard; on a failure the ones scheduled are stopped
    (a fleet starts whole or not at all)."""
    for job in fleet.jobs:
        try:
            targets[job.target].schedule(fleet.spider, job.jobid, shard_arguments(fleet, job.index),
                                         job_settings(fleet))
        except TargetError as exc:
            for scheduled in fleet.jobs[: job.index - 1]:
                cancel_quietly(targets[scheduled.target], scheduled.jobid)
            fleet.state, fleet.ended = FAILED, timestamp()
            write_fleet(store, fleet)
            raise UsageError(f"cannot schedule shard {fleet.shard(job)}: {exc}") from None
