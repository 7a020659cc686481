"""``scrapy fleet``: its decisions without HTTP, then real fleets on two real Scrapyd daemons."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
from scrapy.exceptions import UsageError
from scrapy.settings import Settings

from openimages_crawler.fleet.control import cancel_fleet
from openimages_crawler.fleet.decisions import (
    DOWN_GRACE_S,
    STALE_S,
    Freshness,
    Observation,
    Rotation,
    Verdict,
    decide,
    stray_jobs,
)
from openimages_crawler.fleet.launch import (
    check_arguments,
    check_secrets,
    fleet_store,
    refuse_unfinished,
)
from openimages_crawler.fleet.scrapyd import (
    ScrapydTarget,
    TargetDown,
    TargetRefused,
    configured_targets,
    pick_targets,
)
from openimages_crawler.fleet.state import (
    FLEET_KEY,
    Fleet,
    ShardJob,
    assign,
    job_id,
    read_fleet,
    watching,
    write_fleet,
)
from openimages_crawler.fleet.watch import Watch
from openimages_crawler.monitor.status import PartStatus, read_status
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.objects import ObjectStore
from openimages_crawler.testing.objects import S3Server
from openimages_crawler.testing.scrapyd import (
    Daemon,
    build_egg,
    clean_env,
    deploy,
    free_port,
    project_copy,
    start_daemon,
    write_cfg,
)
from tests.conftest import (
    FAST_SETTINGS,
    ROOT,
    Served,
    bucket_outcomes,
    fetch,
    objects,
    outcomes,
    project_settings,
    serve,
    unlisted_root_names,
    wait_for,
)

# --- scrapy.cfg targets ----------------------------------------------------------------


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a scrapy.cfg of its own, and a home without ~/.scrapy.cfg."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_targets_come_from_scrapy_cfg_as_scrapyd_deploy_reads_them(
        project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_ONE", "10.0.0.1")
    write_cfg(project_dir, "[deploy:node1]\nurl = http://${NODE_ONE}:6800/\nusername = crawler\npassword = s3cret\n\n"
                           "[deploy:node2]\nurl = http://node2.lan:6800\nproject = other\n\n"
                           "[deploy:nourl]\nproject = x\n")
    netrc = project_dir / "home" / ".netrc"
    netrc.write_text("machine node2.lan login netrc-user password netrc-pass\n")
    netrc.chmod(0o600)

    targets = pick_targets(configured_targets(), "all", None)
    assert [(t.name, t.url, t.project) for t in targets] == [
        ("node1", "http://10.0.0.1:6800/", "openimages_crawler"),  # env expanded; project from bare [deploy]
        ("node2", "http://node2.lan:6800/", "other"),
    ]
    assert (targets[0].auth.username, targets[0].auth.password) == ("crawler", "s3cret")
    assert targets[1].auth.username == "netrc-user"  # no username in the section: ~/.netrc

    chosen = pick_targets(configured_targets(), "node2", "mine")
    assert [(t.name, t.project) for t in chosen] == [("node2", "mine")]  # --project wins
    with pytest.raises(UsageError, match=r"unknown Scrapyd target node3 \(scrapy.cfg has: node1, node2\)"):
        pick_targets(configured_targets(), "node1,node3", None)
    with pytest.raises(UsageError, match="named twice"):
        pick_targets(configured_targets(), "node1,node1", None)


def test_no_target_is_one_clear_error(project_dir: Path) -> None:
    write_cfg(project_dir, "")
    with pytest.raises(UsageError, match=r"no Scrapyd target: add a section \[deploy:NAME\]"):
        pick_targets(configured_targets(), "all", None)


# --- what the user gives ----------------------------------------------------------------


def test_the_store_must_be_a_bucket_or_an_absolute_shared_folder() -> None:
    def store(uri: str) -> object:
        return fleet_store(Settings({"IMAGES_STORE": uri}))

    assert store("/data/openimages").root == Path("/data/openimages")
    assert store("file:///data/open%20images").root == Path("/data/open images")
    for relative in ("openimages", "./data", "file://data/x"):
        with pytest.raises(UsageError):
            store(relative)
    with pytest.raises(UsageError, match="relative"):
        store("openimages")
    bucket = store("s3://bucket/openimages")
    assert isinstance(bucket, ObjectStore) and (bucket.bucket, bucket.prefix) == ("bucket", "openimages/")
    with pytest.raises(UsageError, match="shared filesystem"):
        store("ftp://host/openimages")


def test_a_fleet_refuses_secrets_in_its_recorded_settings() -> None:
    check_secrets({"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "AKIA"})
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        with pytest.raises(UsageError, match=f"-s {name}: a fleet writes its -s settings into the store"):
            check_secrets({name: "secret"})


def test_arguments_are_checked_before_any_job(tmp_path: Path) -> None:
    metadata = tmp_path / "images.csv"
    metadata.write_text("ImageID\n")
    check_arguments({"metadata": str(metadata), "limit": "10"})
    with pytest.raises(UsageError, match="the fleet assigns the shards itself"):
        check_arguments({"metadata": str(metadata), "shard": "1/2"})
    with pytest.raises(UsageError, match="-a _job: arguments starting with _"):
        check_arguments({"metadata": str(metadata), "_job": "x"})
    with pytest.raises(UsageError, match="-a metadata=images.csv is relative"):
        check_arguments({"metadata": "images.csv"})
    with pytest.raises(UsageError, match="-a ids=ids.txt is relative"):
        check_arguments({"metadata": str(metadata), "ids": "ids.txt"})
    with pytest.raises(UsageError, match="did you mean -a limit"):
        check_arguments({"metadata": str(metadata), "limt": "10"})


# --- the fleet's record ------------------------------------------------------------------


def a_fleet(shards: int = 3, targets: tuple[str, ...] = ("a", "b")) -> Fleet:
    run = "20260101-000000-abcd"
    return Fleet(run=run, spider="openimages", shards=shards, arguments={"metadata": "/m.csv"},
                 settings={"IMAGES_STORE": "/s"},
                 targets={name: {"url": f"http://{name}:6800/", "project": "p"} for name in targets},
                 jobs=[ShardJob(index, name, job_id(run, index, shards, 1))
                       for index, name in enumerate(assign(shards, list(targets)), start=1)])


def test_shards_go_round_robin_with_one_job_id_per_attempt() -> None:
    assert assign(5, ["a", "b"]) == ["a", "b", "a", "b", "a"]
    assert assign(1, ["a", "b", "c"]) == ["a"]
    assert job_id("R", 2, 4, 1) == "R-2of4"
    assert job_id("R", 2, 4, 3) == "R-2of4-r3"


def test_fleet_json_round_trip_and_refusal_of_a_second_fleet(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    fleet = a_fleet()
    write_fleet(store, fleet)
    assert read_fleet(store) == fleet
    assert not list((tmp_path / FLEET_KEY).parent.glob("*.part"))
    with pytest.raises(UsageError, match=r"already has fleet 20260101-000000-abcd \(running, 0 of 3 shards done\): "
                                         r"follow it with `scrapy fleet --watch`"):
        refuse_unfinished(read_fleet(store), str(tmp_path))
    for job in fleet.jobs:
        job.state = "done"
    refuse_unfinished(fleet, str(tmp_path))  # every shard done: a new fleet may start
    fleet.jobs[0].state, fleet.state = "scheduled", "cancelled"
    refuse_unfinished(fleet, str(tmp_path))
    assert read_fleet(LocalStore(str(tmp_path / "elsewhere"))) is None
    (tmp_path / FLEET_KEY).write_text("{not json")
    with pytest.raises(UsageError, match="cannot be read"):
        read_fleet(store)


# --- decisions ------------------------------------------------------------------------


def record(job: str, exit_status: int | None = None) -> PartStatus:
    return PartStatus(part="1of3", job=job, exit=exit_status, updated="2026-01-01T00:00:00+00:00")


JOB = ShardJob(1, "a", "R-1of3")
RETRY = ShardJob(1, "b", "R-1of3-r2", attempts=2)


@pytest.mark.parametrize(("job", "seen", "verdict"), [
    (JOB, Observation("pending"), Verdict.WAIT),
    (JOB, Observation("running", record=record("R-1of3")), Verdict.WAIT),
    (JOB, Observation("running", record=record("R-1of3", 0)), Verdict.DONE),  # exiting: the record says done
    (JOB, Observation("finished", record=record("R-1of3", 0)), Verdict.DONE),
    (JOB, Observation("finished", record=record("R-1of3", 2)), Verdict.USAGE_ERROR),
    # A later job's exit 2: the lock of the job it replaces, most likely: not the end of the fleet.
    (RETRY, Observation("finished", record=record("R-1of3-r2", 2)), Verdict.RESCHEDULE),
    (JOB, Observation("finished", record=record("R-1of3", 143)), Verdict.RESCHEDULE),
    (JOB, Observation("finished", record=record("R-1of3")), Verdict.RESCHEDULE),  # killed -9
    (JOB, Observation("finished"), Verdict.RESCHEDULE),  # ended before writing a record (the lock was held)
    (JOB, Observation("absent"), Verdict.RESCHEDULE),  # its daemon restarted
    (JOB, Observation("finished", record=record("other", 143)), Verdict.RESCHEDULE),  # an ended job's record
    # The target is silent: wait a little, and as long as the job's record lives.
    (JOB, Observation(None, down_for=DOWN_GRACE_S - 1), Verdict.WAIT),
    (JOB, Observation(None, down_for=DOWN_GRACE_S + 1), Verdict.RESCHEDULE),
    (JOB, Observation(None, down_for=60, record=record("R-1of3"), record_age=3), Verdict.WAIT),
    (JOB, Observation(None, down_for=60, record=record("R-1of3"), record_age=STALE_S + 1), Verdict.RESCHEDULE),
    (JOB, Observation(None, down_for=1, record=record("R-1of3", 143)), Verdict.RESCHEDULE),  # its node stopped it
    # An earlier job of the shard still writes its record: it holds the lock; wait for it.
    (RETRY, Observation("finished", record=record("R-1of3"), record_age=2), Verdict.WAIT),
    (RETRY, Observation("finished", record=record("R-1of3"), record_age=STALE_S + 1), Verdict.RESCHEDULE),
    (RETRY, Observation("finished", record=record("R-1of3", 143), record_age=2), Verdict.RESCHEDULE),
])
def test_decide(job: ShardJob, seen: Observation, verdict: Verdict) -> None:
    assert decide(job, seen, limit=5) is verdict


def test_a_shard_that_keeps_failing_is_given_up() -> None:
    tired = ShardJob(1, "a", "R-1of3-r5", attempts=5)
    assert decide(tired, Observation("finished"), limit=5) is Verdict.GIVE_UP
    assert decide(tired, Observation("running"), limit=5) is Verdict.WAIT
    assert decide(tired, Observation("finished"), limit=9) is Verdict.RESCHEDULE


def test_rotation_skips_silent_targets() -> None:
    rotation = Rotation(["a", "b", "c"])
    assert [rotation.pick({"a", "b", "c"}) for _ in range(4)] == ["a", "b", "c", "a"]
    assert [rotation.pick({"a", "c"}) for _ in range(3)] == ["c", "a", "c"]
    assert rotation.pick(set()) is None


def test_freshness_is_measured_by_the_watchers_clock() -> None:
    freshness = Freshness()
    first = record("J")
    assert freshness.age("1of3", first, now=100.0) == 0.0
    assert freshness.age("1of3", first, now=130.0) == 30.0
    assert freshness.age("1of3", PartStatus(part="1of3", job="J", updated="later"), now=131.0) == 0.0
    assert freshness.age("1of3", None, now=140.0) == float("inf")


def test_stray_jobs_are_this_fleets_jobs_no_shard_counts_on() -> None:
    fleet = a_fleet()
    listing = {fleet.jobs[0].jobid: "running", f"{fleet.run}-1of3-r2": "pending", f"{fleet.run}-2of3-r2": "finished",
               "other-fleet-1of3": "running"}
    assert stray_jobs(fleet, listing) == [f"{fleet.run}-1of3-r2"]


# --- the watch, with stand-in targets ---------------------------------------------------------


class FakeTarget:
    """A target's answers, without HTTP."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.listing: dict[str, str] = {}
        self.silent = False
        self.scheduled: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.cancelled: list[str] = []

    def __repr__(self) -> str:
        return self.name

    def jobs(self) -> dict[str, str]:
        if self.silent:
            raise TargetDown(f"{self.name} does not answer")
        return dict(self.listing)

    def schedule(self, spider: str, jobid: str, arguments: dict[str, str], settings: dict[str, str]) -> None:
        self.scheduled.append((jobid, arguments, settings))
        self.listing[jobid] = "pending"

    def cancel(self, jobid: str) -> None:
        self.cancelled.append(jobid)

    def log_url(self, spider: str, jobid: str) -> str:
        return f"http://{self.name}/logs/{jobid}.log"


def a_watch(tmp_path: Path, fleet: Fleet) -> tuple[Watch, dict[str, FakeTarget]]:
    targets = {name: FakeTarget(name) for name in fleet.targets}
    for job in fleet.jobs:
        targets[job.target].listing[job.jobid] = "running"
    settings = project_settings({"IMAGES_STORE": str(tmp_path), "OPENIMAGES_PROGRESS": "off"})
    store = LocalStore(str(tmp_path))
    write_fleet(store, fleet)
    return Watch(fleet, targets, store, settings), targets  # type: ignore[arg-type]


def write_record(root: Path, part: str, job: str, exit_status: int | None, done: int = 0) -> None:
    PartStatus(part=part, job=job, exit=exit_status, counts={"time": 1.0, "done": done, "ok": done, "total": done}
               ).write(LocalStore(str(root)))


def test_a_silent_targets_shard_moves_to_a_live_target_and_the_fleet_ends_with_one_report(tmp_path: Path) -> None:
    fleet = a_fleet(shards=2)
    watch, targets = a_watch(tmp_path, fleet)
    assert watch.tick() is None  # both running
    targets["a"].silent = True
    assert watch.tick() is None  # silent for less than the grace: wait
    watch.silent_since["a"] -= DOWN_GRACE_S + 1
    assert watch.tick() is None
    moved = fleet.jobs[0]
    assert (moved.target, moved.jobid, moved.attempts) == ("b", f"{fleet.run}-1of2-r2", 2)
    assert targets["b"].scheduled == [(moved.jobid, {"metadata": "/m.csv", "shard": "1/2"},
                                       {"IMAGES_STORE": "/s", "OPENIMAGES_REPORT": "False", "OPENIMAGES_DASHBOARD_PORT": ""})]
    assert read_fleet(LocalStore(str(tmp_path))).jobs[0] == moved  # recorded before the next look

    write_record(tmp_path, "1of2", f"{fleet.run}-1of2", 0, done=5)  # the old job's: not this shard's any more
    write_record(tmp_path, "2of2", fleet.jobs[1].jobid, 0, done=4)
    assert watch.tick() is None
    assert [job.state for job in fleet.jobs] == ["scheduled", "done"]
    write_record(tmp_path, "1of2", moved.jobid, 0, done=6)
    assert watch.tick() == 0
    saved = read_fleet(LocalStore(str(tmp_path)))
    assert saved is not None and saved.state == "finished"
    figures = json.loads((tmp_path / "report.json").read_text())
    assert figures["totals"]["rows_done"] == 10
    assert figures["run"]["arguments"] == {"metadata": "/m.csv"}


def test_a_first_jobs_usage_error_stops_the_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = a_fleet(shards=3)
    watch, targets = a_watch(tmp_path, fleet)
    write_record(tmp_path, "2of3", fleet.jobs[1].jobid, 2)
    targets["b"].listing[fleet.jobs[1].jobid] = "finished"
    assert watch.tick() == 2
    assert targets["a"].cancelled == [fleet.jobs[0].jobid, fleet.jobs[2].jobid]
    assert read_fleet(LocalStore(str(tmp_path))).state == "failed"  # type: ignore[union-attr]
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"ERROR: shard 2/3 (job {fleet.jobs[1].jobid} on b) stopped with a usage error")


def test_a_shard_failing_every_time_ends_the_watch_with_exit_1_once_the_others_are_done(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = a_fleet(shards=2)
    watch, targets = a_watch(tmp_path, fleet)
    write_record(tmp_path, "2of2", fleet.jobs[1].jobid, 0)
    for _ in range(10):
        job = fleet.jobs[0]
        targets[job.target].listing[job.jobid] = "finished"  # crashes at once, every time
        status = watch.tick()
        if status is not None:
            break
    assert status == 1
    assert fleet.jobs[0].attempts == 5 and fleet.jobs[0].state == "failed"
    assert "shard 1/2 of fleet" in capsys.readouterr().err
    assert read_fleet(LocalStore(str(tmp_path))).state == "incomplete"  # type: ignore[union-attr]


def test_a_signal_stops_the_watch_and_leaves_the_jobs_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = a_fleet(shards=2)
    watch, targets = a_watch(tmp_path, fleet)
    watch.on_signal(signal.SIGTERM, None)
    assert watch.run() == 143
    assert "`scrapy fleet --watch`" in capsys.readouterr().err
    assert not targets["a"].cancelled and not targets["b"].cancelled
    assert read_fleet(LocalStore(str(tmp_path))).state == "running"  # type: ignore[union-attr]


def test_one_watch_per_fleet_and_a_cancel_ends_the_watch_without_rescheduling(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = a_fleet(shards=2)
    watch, targets = a_watch(tmp_path, fleet)
    with watching(LocalStore(str(tmp_path)), fleet), pytest.raises(UsageError, match="is watched already"):
        with watching(LocalStore(str(tmp_path)), fleet):
            pass
    with watching(LocalStore(str(tmp_path)), fleet):
        pass  # released

    cancelled = read_fleet(LocalStore(str(tmp_path)))
    assert cancelled is not None
    assert cancel_fleet(cancelled, targets, LocalStore(str(tmp_path))) == 0  # type: ignore[arg-type]
    for job in fleet.jobs:
        targets[job.target].listing[job.jobid] = "finished"  # stopped by the cancel
    assert watch.tick() == 1
    assert "was cancelled" in capsys.readouterr().err
    assert not targets["a"].scheduled and not targets["b"].scheduled
    assert read_fleet(LocalStore(str(tmp_path))).state == "cancelled"  # type: ignore[union-attr]


def test_cancel_stops_every_job_of_the_fleet_and_says_which_nodes_did_not_answer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = a_fleet(shards=3)
    _, targets = a_watch(tmp_path, fleet)
    targets["a"].listing[f"{fleet.run}-1of3-r9"] = "pending"  # a stray
    targets["a"].listing["another-fleet-1of3"] = "running"
    targets["b"].silent = True
    assert cancel_fleet(fleet, targets, LocalStore(str(tmp_path))) == 1  # type: ignore[arg-type]
    assert sorted(targets["a"].cancelled) == [fleet.jobs[0].jobid, f"{fleet.run}-1of3-r9", fleet.jobs[2].jobid]
    assert "but b did not answer" in capsys.readouterr().err
    saved = read_fleet(LocalStore(str(tmp_path)))
    assert saved is not None and saved.state == "cancelled" and not saved.unfinished
    targets["b"].silent = False
    assert cancel_fleet(saved, targets, LocalStore(str(tmp_path))) == 0  # type: ignore[arg-type]
    assert "nothing to cancel" in capsys.readouterr().out


# --- the client, against a stand-in HTTP server ------------------------------------------------


class Answers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b'{"status": "error", "message": "project \'p\' not found"}'
        if self.path.startswith("/listjobs.json"):
            body = b'{"status": "ok", "pending": [{"id": "j1"}], "running": [{"id": "j2"}], "finished": []}'
        elif self.path.startswith("/html"):
            body = b"<html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_scrapyd_errors_are_exceptions_whatever_the_http_status() -> None:
    server = HTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        target = ScrapydTarget("n", url, "p")
        assert target.jobs() == {"j1": "pending", "j2": "running"}
        with pytest.raises(TargetRefused, match="project 'p' not found"):
            target.spiders()
        with pytest.raises(TargetDown, match="not Scrapyd's JSON"):
            ScrapydTarget("n", f"{url}/html/", "p").jobs()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(TargetDown, match="does not answer"):
        ScrapydTarget("gone", f"http://127.0.0.1:{free_port()}", "p").jobs()


# --- end to end: two Scrapyd daemons -----------------------------------------------------------

def ensure_scrapyd() -> None:
    if importlib.util.find_spec("scrapyd") is None or importlib.util.find_spec("scrapyd_client") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "scrapyd==1.6.0", "scrapyd-client==2.0.3"],
                       check=True, timeout=300)


@pytest.fixture(scope="module")
def egg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the project and its egg, built by scrapyd-deploy there, so no
    build/ or egg-info ever lands in the working tree."""
    ensure_scrapyd()
    copy = project_copy(ROOT, tmp_path_factory.mktemp("project"))
    return copy, build_egg(copy, copy.parent / "openimages_crawler.egg")


@contextmanager
def started_nodes(tmp_path: Path, egg: tuple[Path, Path],
                  env: dict[str, str] | None = None) -> Iterator[tuple[Path, list[Daemon]]]:
    """Two Scrapyd daemons with the project deployed, and the project copy whose
    scrapy.cfg names them node1 and node2."""
    copy, built = egg
    daemons = [start_daemon(tmp_path / name, name, env=env) for name in ("node1", "node2")]
    try:
        for daemon in daemons:
            wait_for(daemon.answers, timeout=30, interval=0.2)
        deploy(copy, daemons, built)
        yield copy, daemons
    finally:
        for daemon in daemons:
            daemon.kill()


@pytest.fixture
def nodes(tmp_path: Path, egg: tuple[Path, Path]) -> Iterator[tuple[Path, list[Daemon]]]:
    with started_nodes(tmp_path, egg) as started:
        yield started


def fleet_command(metadata: Path, store: Path | str, settings: dict[str, str] | None = None,
                  *options: str) -> list[str]:
    command = [sys.executable, "-m", "scrapy", "fleet", "openimages", "-a", f"metadata={metadata}",
               "--targets", "node1,node2", "--shards", "4", *options]
    for name, value in {**FAST_SETTINGS, "IMAGES_STORE": str(store), "OPENIMAGES_PROCESSES": "1",
                        **(settings or {})}.items():
        command += ["-s", f"{name}={value}"]
    return command


def run_in(copy: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=copy, env=clean_env(), capture_output=True, text=True, timeout=120)


def leftover_parts(store: Path) -> list[Path]:
    return [path for path in store.rglob("*") if ".parts" in path.parts and path.is_file()]


def job_logs(daemons: list[Daemon]) -> str:
    return "\n".join(f"--- {path}\n{path.read_text(errors='replace')[-1500:]}"
                     for daemon in daemons for path in sorted((daemon.folder / "logs").rglob("*.log")))


@pytest.mark.e2e
def test_a_node_that_dies_mid_fleet_costs_no_row_and_no_download_twice(
        tmp_path: Path, nodes: tuple[Path, list[Daemon]]) -> None:
    copy, daemons = nodes
    served: Served = serve(tmp_path, faults=False, copies=6)
    for route in served.mirror.routes.values():
        route.delay = 0.5  # each job takes seconds
    try:
        store = tmp_path / "store"
        port = free_port()  # the fleet's web view: the sums of every node's jobs
        fleet = subprocess.Popen(fleet_command(served.metadata, store, {"CONCURRENT_REQUESTS": "2",
                                                                        "OPENIMAGES_DASHBOARD_PORT": str(port)}),
                                 cwd=copy, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        try:
            wait_for(lambda: mid_run(store, ("2of4", "4of4")), timeout=60, interval=0.1)
            view: dict = {}

            def figures_shown() -> bool:
                try:
                    with urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as response:
                        view.update(json.load(response))
                except OSError:
                    return False
                return view["rows_done"] > 0 and bool(view["images"])

            wait_for(figures_shown, timeout=30, interval=0.5)
            assert not view["finished"]
            succeeded = {image_id for image_id, found in outcomes(store).items() if "success" in found}
            requests_before = dict(served.server.counter.requests)
            daemons[1].kill()  # node2: shards 2 and 4
            out, err = fleet.communicate(timeout=90)
        finally:
            if fleet.poll() is None:
                os.killpg(fleet.pid, signal.SIGKILL)
        assert fleet.returncode == 0, err[-4000:] + job_logs(daemons)
        assert outcomes(store) == {image_id: ["success"] for image_id in served.mirror.expected()}
        assert not leftover_parts(store)
        assert not unlisted_root_names(os.listdir(store), {"train"})
        paths = {row.fields["ImageID"]: urlsplit(row.fields["OriginalURL"]).path for row in served.mirror.rows}
        assert succeeded
        for image_id in succeeded:
            assert served.server.counter.requests[paths[image_id]] == requests_before[paths[image_id]], image_id
        recorded = read_fleet(LocalStore(str(store)))
        assert recorded is not None and recorded.state == "finished"
        moved = [job for job in recorded.jobs if job.attempts > 1]
        assert moved and all(job.target == "node1" for job in moved)
        assert "scheduled again as" in err
    finally:
        served.server.close()


def mid_run(store: Path, parts: tuple[str, ...]) -> bool:
    """A shard of these parts has recorded rows and has many left."""
    for part in parts:
        found = read_status(LocalStore(str(store)), part)
        if found is not None and found.exit is None:
            figures = found.figures()
            if figures.total is not None and 2 <= figures.done <= figures.total - 8:
                return True
    return False


@pytest.mark.e2e
def test_a_fleet_into_a_bucket_records_every_row_once_and_reports_once(
        tmp_path: Path, egg: tuple[Path, Path], s3: S3Server) -> None:
    """Scheduled with --no-watch, a second fleet refused, finished by --watch,
    shown by --status; each job a run of two processes. The nodes' credentials
    are in their environment, the jobs' work folders in their homes; fleet.json,
    the shards' records and the report are in the bucket. (The node-death test
    below runs a fleet on a shared folder.)"""
    prefix = f"{tmp_path.name}/fleet/"
    bucket = f"s3://data/{prefix}"
    served = serve(tmp_path)
    settings = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_REGION_NAME": "us-east-1",
                "OPENIMAGES_RESULTS_FLUSH_SECONDS": "1"}
    home = tmp_path / "home"
    try:
        with started_nodes(tmp_path, egg, {**s3.env(), "HOME": str(home)}) as (copy, daemons):
            def fleet(*command: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(list(command), cwd=copy, env={**clean_env(), **s3.env(),
                                                                    "HOME": str(tmp_path / "watcher")},
                                      capture_output=True, text=True, timeout=180)

            options = [f"-s{name}={value}" for name, value in {**settings, "IMAGES_STORE": bucket}.items()]
            scheduled = fleet(*fleet_command(served.metadata, bucket, {**settings, "OPENIMAGES_PROCESSES": "2"},
                                             "--no-watch"))
            assert scheduled.returncode == 0, scheduled.stderr[-4000:]
            assert "4 jobs scheduled on node1, node2. Follow them with `scrapy fleet --watch`" in scheduled.stdout
            second = fleet(*fleet_command(served.metadata, bucket, settings))
            assert second.returncode == 2
            assert "already has fleet" in second.stderr.strip().splitlines()[-1]
            watched = fleet(sys.executable, "-m", "scrapy", "fleet", "--watch", *options)
            assert watched.returncode == 0, watched.stderr[-4000:] + job_logs(daemons)
            status = fleet(sys.executable, "-m", "scrapy", "fleet", "--status", *options)
        expected = served.mirror.expected()
        assert bucket_outcomes(s3, prefix) == {image_id: [outcome] for image_id, outcome in expected.items()}
        stored = objects(s3, prefix)
        assert not [key for key in stored if "/.parts/" in key or key.startswith(".locks/")]
        assert {"report.json", ".fleet/fleet.json", *(f".status/{k}of4.json" for k in range(1, 5))} <= set(stored)
        assert [key for key in stored if key.endswith("report.json")] == ["report.json"]
        recorded = json.loads(fetch(s3, prefix + ".fleet/fleet.json"))
        assert recorded["state"] == "finished"
        assert sorted(job["target"] for job in recorded["jobs"]) == ["node1", "node1", "node2", "node2"]
        assert all(job["state"] == "done" and job["attempts"] == 1 for job in recorded["jobs"])
        assert (f"Fleet {recorded['run']} finished: 4 shards on 2 targets, {len(expected)} rows done"
                in watched.stdout)
        figures = json.loads(fetch(s3, prefix + "report.json"))
        assert figures["store_totals"] == {"success rows": list(expected.values()).count("success"),
                                           "failure rows": sum(v != "success" for v in expected.values())}
        assert status.returncode == 0, status.stderr[-3000:]
        lines = status.stdout.splitlines()
        assert f"in {bucket}: finished" in lines[0]
        assert lines[1].split() == ["shard", "target", "job", "state", "rows", "done", "exit", "attempts"]
        assert [line.split()[3] for line in lines[2:]] == ["done"] * 4
        # Two jobs per node, sharing a home: each its own work folder, with its two processes' records.
        work = home / ".cache" / "openimages-crawler" / "s3" / "data" / tmp_path.name / "fleet"
        folders = sorted(path.name for path in work.iterdir() if path.name.startswith("shard-"))
        assert folders == [f"shard-{k}of4" for k in range(1, 5)]
        assert sorted(path.name for path in work.glob("shard-*/.status/*.json")) == [
            f"{k}of8.json" for k in range(1, 9)]  # 4 jobs x 2 processes
    finally:
        served.server.close()
