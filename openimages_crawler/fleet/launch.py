"""The start of a fleet (``scrapy fleet openimages ...``) and a watch
re-attached to one (``--watch``): what the user gave checked before any job
exists, every shard's first job scheduled (a fleet starts whole or not at
all), then the watch (``fleet.watch``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from scrapy.exceptions import UsageError

from openimages_crawler.crawl.config import CrawlConfig, check_store, open_crawl_store
from openimages_crawler.crawl.processes import process_count
from openimages_crawler.crawl.spider import OpenImagesSpider, scrapy_arguments
from openimages_crawler.exits import EXIT_OK
from openimages_crawler.fleet.scrapyd import (
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
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments
from openimages_crawler.redact import is_secret
from openimages_crawler.store.base import Store
from openimages_crawler.store.local import LocalStore

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetRequest:
    """What ``scrapy fleet openimages`` was given."""

    arguments: dict[str, str]  # -a
    settings: dict[str, str]  # -s, as given (recorded in the store and given to every job)
    targets: str  # --targets: names of scrapy.cfg's [deploy:NAME] sections, or all
    project: str | None  # --project
    shards: int | None  # --shards (None: one per target)
    watch: bool | None  # --watch / --no-watch

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


def start_fleet(settings: BaseSettings, spider: str, request: FleetRequest) -> int:
    """A new fleet: checked, scheduled whole, watched (unless ``--no-watch``)."""
    if spider != OpenImagesSpider.name:
        raise UsageError(f"scrapy fleet runs the {OpenImagesSpider.name} spider, not {spider!r}")
    store = fleet_store(settings)
    uri = store.uri  # a bucket's, or the absolute folder every node mounts
    given_settings = request.settings
    check_secrets(given_settings)
    settings = settings.copy()
    settings.set("IMAGES_STORE", uri, priority="cmdline")
    check_arguments(request.arguments)
    check_settings(settings)
    targets = pick_targets(configured_targets(), request.targets, request.project)
    shards = len(targets) if request.shards is None else request.shards
    if shards < 1:
        raise UsageError(f"--shards {shards}: give 1 or more")
    check_store(store)  # a bucket answers, before any job exists
    with store.exclusive("fleet"):  # (a folder store is made with its .locks folder)
        refuse_unfinished(read_fleet(store), store.uri)
        check_targets(targets, spider)
        run = new_run_id()
        fleet = Fleet(
            run=run, spider=spider, shards=shards, arguments=dict(request.arguments),
            settings={**given_settings, "IMAGES_STORE": uri},
            targets={t.name: {"url": t.url, "project": t.project} for t in targets},
            jobs=[ShardJob(index, name, job_id(run, index, shards, 1))
                  for index, name in enumerate(assign(shards, [t.name for t in targets]), start=1)],
        )
        write_fleet(store, fleet)
        schedule_all(fleet, {t.name: t for t in targets}, store)
    logger.info("Fleet %s: %d shards scheduled on %s", run, shards, ", ".join(map(repr, targets)))
    if request.watch is False:
        print(f"Fleet {run}: {shards} jobs scheduled on {', '.join(t.name for t in targets)}. Follow them "
              "with `scrapy fleet --watch` (it also schedules again the shards of nodes that die) or "
              "`scrapy fleet --status`, with the same IMAGES_STORE.")
        return EXIT_OK
    return Watch(fleet, {t.name: t for t in targets}, store, settings).run()


def reattach(settings: BaseSettings, fleet: Fleet, store: Store, given_settings: dict[str, str]) -> int:
    """The watch of the store's unfinished fleet, again (``--watch`` alone)."""
    if fleet.state == FINISHED:
        print(f"Fleet {fleet.run} finished at {fleet.ended}: nothing to watch.")
        return EXIT_OK
    if fleet.state not in UNFINISHED:
        raise UsageError(f"fleet {fleet.run} was {fleet.state}: start a new one with scrapy fleet openimages ...")
    settings = settings.copy()
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
