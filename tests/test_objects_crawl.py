"""Crawls into an object store (IMAGES_STORE=s3://…): the local mirror crawled
into a real S3-protocol server (moto's, on 127.0.0.1), checked with boto3's
own listings and downloads."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from openimages_crawler.redact import MASK
from openimages_crawler.testing.objects import S3Server, start_s3_server
from tests.conftest import (
    ROOT,
    Served,
    bucket_outcomes,
    bucket_rows,
    crawl_command,
    fetch,
    kill,
    objects,
    serve,
    unlisted_root_names,
    wait_for,
)

pytestmark = pytest.mark.e2e

TWO_OUTPUTS = json.dumps([{"dir": "crop224", "mode": "FillCrop", "size": 224},
                          {"dir": "fit64", "mode": "ShrinkToFit", "size": 64, "format": "webp"}])


def bucket_settings(s3: S3Server, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_REGION_NAME": "us-east-1",
            "OPENIMAGES_WORK_DIR": str(tmp_path / "work"), **extra}


def crawl(served: Served, store: str, settings: dict[str, str], env: dict[str, str] | None = None,
          timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = crawl_command(served.metadata, Path("unused"), {"IMAGES_STORE": store, **settings})
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def image_requests(served: Served) -> dict[str, int]:
    """Requests the mirror served, by path (it serves images only)."""
    return dict(served.server.counter.requests)


def test_the_mirror_crawled_into_a_bucket_records_every_row_once(
    mirror: Served, s3: S3Server, tmp_path: Path
) -> None:
    prefix = f"{tmp_path.name}/openimages/"
    settings = bucket_settings(s3, tmp_path, OPENIMAGES_SAVE_ORIGINALS="True", OPENIMAGES_OUTPUTS=TWO_OUTPUTS,
                               OPENIMAGES_RESULTS_FLUSH_SECONDS="0.5")
    result = crawl(mirror, f"s3://data/{prefix}", settings)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr  # the parts' uploads every half second included
    assert result.stderr.count("Cannot upload") == 0
    assert "Found endpoint" not in result.stderr and "Found credentials" not in result.stderr  # boto's chatter

    expected = mirror.mirror.expected()
    assert bucket_outcomes(s3, prefix) == {image_id: [outcome] for image_id, outcome in expected.items()}
    stored = objects(s3, prefix)
    assert not [key for key in stored if "/.parts/" in key]  # merged, and the merged parts deleted
    assert {"report.json", "report.html"} <= set(stored)
    success = bucket_rows(s3, prefix, "train/images-success.csv")
    for row in success:
        image_id = row["ImageID"]
        ext = "png" if row["OriginalURL"].endswith(".png") else "jpg"
        original = fetch(s3, f"{prefix}train/images-original/{image_id[:3]}/{image_id}.{ext}")
        assert len(original) == int(row["OriginalSize"])
        assert base64.b64encode(hashlib.md5(original).digest()).decode() == row["OriginalMD5"]
        with Image.open(io.BytesIO(fetch(s3, f"{prefix}train/crop224/{image_id[:3]}/{image_id}.jpg"))) as image:
            assert image.size == (224, 224)
        with Image.open(io.BytesIO(fetch(s3, f"{prefix}train/fit64/{image_id[:3]}/{image_id}.webp"))) as image:
            assert max(image.size) <= 64
    failed = {image_id for image_id, outcome in expected.items() if outcome != "success"}
    assert not [key for key in stored if Path(key).stem in failed]
    assert not Path(ROOT, "s3:").exists()

    # A rerun: no image downloaded, nothing recorded twice, the results read from the bucket.
    before = image_requests(mirror)
    assert sum(before.values()) >= len(success)
    again = crawl(mirror, f"s3://data/{prefix}", settings)
    assert again.returncode == 0, again.stderr[-4000:]
    assert image_requests(mirror) == before
    assert bucket_outcomes(s3, prefix) == {image_id: [outcome] for image_id, outcome in expected.items()}


def test_kill_9_then_resume_into_a_bucket_is_exactly_once_without_redownloads(
    s3: S3Server, tmp_path: Path
) -> None:
    served = serve(tmp_path, faults=False, copies=6)
    for route in served.mirror.routes.values():
        route.delay = 0.15
    try:
        prefix = f"{tmp_path.name}/killed/"
        store = f"s3://data/{prefix}"
        # Credentials and endpoint from the environment (boto3's chain), not from settings.
        settings = {"OPENIMAGES_WORK_DIR": str(tmp_path / "work"), "OPENIMAGES_SAVE_ORIGINALS": "True",
                    "CONCURRENT_REQUESTS": "4", "OPENIMAGES_RESULTS_FLUSH_SECONDS": "1"}
        env = s3.env()
        process = subprocess.Popen(crawl_command(served.metadata, Path("unused"), {"IMAGES_STORE": store, **settings}),
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, env={**os.environ, **env})

        def originals() -> set[str]:
            return {Path(key).stem for key in objects(s3, prefix) if "/images-original/" in key}

        wait_for(lambda: len(originals()) >= 15 and any("/.parts/" in key for key in objects(s3, prefix)),
                 timeout=90)
        kill(process)
        process.wait(timeout=30)
        stored_before = originals()
        requests_before = image_requests(served)

        result = crawl(served, store, settings, env)
        assert result.returncode == 0, result.stderr[-4000:]
        assert bucket_outcomes(s3, prefix) == {row.fields["ImageID"]: ["success"] for row in served.mirror.rows}
        by_id = {row.fields["ImageID"]: row for row in served.mirror.rows}
        for image_id in stored_before:
            path = "/" + by_id[image_id].fields["OriginalURL"].split("/", 3)[3]
            assert image_requests(served)[path] == requests_before[path], image_id
    finally:
        served.server.close()


@pytest.mark.parametrize("problem", ["missing bucket", "unknown key", "unreachable endpoint"])
def test_a_bucket_that_cannot_be_used_is_one_line_and_exit_2_before_any_download(
    clean_mirror: Served, s3: S3Server, tmp_path: Path, problem: str
) -> None:
    settings = bucket_settings(s3, tmp_path)
    store = f"s3://data/{tmp_path.name}"
    if problem == "missing bucket":
        store, message = "s3://no-such-bucket/x", "ERROR: s3://no-such-bucket/x: the bucket does not exist"
    elif problem == "unknown key":
        server = start_s3_server(tmp_path / "auth", authenticated=True)
        server.make_bucket("data")
        settings = bucket_settings(server, tmp_path, AWS_ACCESS_KEY_ID="AKIAUNKNOWN000000000")
        store, message = "s3://data", "ERROR: s3://data: the access key is not known to the server (AWS_ACCESS_KEY_ID)"
    else:
        settings["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # the discard port: nothing listens
        message = f"ERROR: {store}: the endpoint cannot be reached"
    try:
        result = crawl(clean_mirror, store, settings)
    finally:
        if problem == "unknown key":
            server.stop()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(message)
    assert sum(clean_mirror.server.counter.requests.values()) == 0
    assert not (tmp_path / "work").exists()


def test_shards_of_a_bucket_crawled_at_once_record_every_row_once(
    mirror: Served, s3: S3Server, tmp_path: Path
) -> None:
    """Two shards at once, as two fleet jobs on one node (one work folder), one
    of them in two processes; then a shard again from another machine."""
    prefix = f"{tmp_path.name}/sharded/"
    store = f"s3://data/{prefix}"
    settings = bucket_settings(s3, tmp_path, OPENIMAGES_RESULTS_FLUSH_SECONDS="0.5")
    processes = {"1/2": "2", "2/2": "1"}
    running = [subprocess.Popen(
        crawl_command(mirror.metadata, Path("unused"), {"IMAGES_STORE": store, **settings,
                                                        "OPENIMAGES_PROCESSES": count}, shard=shard),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for shard, count in processes.items()]
    for process in running:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-4000:]
        assert "Traceback" not in err

    expected = mirror.mirror.expected()
    assert bucket_outcomes(s3, prefix) == {image_id: [outcome] for image_id, outcome in expected.items()}
    stored = objects(s3, prefix)
    assert not [key for key in stored if "/.parts/" in key or key.startswith(".locks/")]
    for label in ("1of2", "2of2"):  # each run's own record, where a fleet reads it
        record = json.loads(fetch(s3, f"{prefix}.status/{label}.json"))
        assert record["exit"] == 0 and record["counts"]["done"] > 0
    folders = sorted(path.name for path in (tmp_path / "work").iterdir() if path.name.startswith("shard-"))
    assert folders == ["shard-1of2", "shard-2of2"]  # one work folder each
    assert not unlisted_root_names({key.split("/")[0] for key in stored}, {"train"})
    assert not unlisted_root_names(os.listdir(tmp_path / "work"), {"train"})

    before = image_requests(mirror)
    again = crawl_command(mirror.metadata, Path("unused"),
                          {"IMAGES_STORE": store, **settings, "OPENIMAGES_WORK_DIR": str(tmp_path / "other")},
                          shard="1/2")
    result = subprocess.run(again, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert image_requests(mirror) == before
    assert bucket_outcomes(s3, prefix) == {image_id: [outcome] for image_id, outcome in expected.items()}


SECRET_KEY = "Sekr1t-key-5f0c2a9e"  # literals searched for in every output
SESSION_TOKEN = "Tok3n-session-77d1b4"
UNREDACTED = re.compile(r"(?i)[?&](x-amz-signature|signature|x-amz-credential|x-amz-security-token)=(?!\*\*\*)")


def test_no_secret_reaches_a_log_record_report_or_printed_command(
    mirror: Served, s3: S3Server, tmp_path: Path
) -> None:
    """A bucket crawl given its secrets with -s, at DEBUG (Scrapy logs every
    request and its settings), with transient failures (the Next: line repeats
    the command), then a rerun that reads the stored originals back through
    presigned URLs: the secrets and the URLs' signatures are nowhere."""
    prefix = f"{tmp_path.name}/secrets/"
    settings = {**bucket_settings(s3, tmp_path, OPENIMAGES_SAVE_ORIGINALS="True", LOG_LEVEL="DEBUG"),
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_SESSION_TOKEN": SESSION_TOKEN}
    first = crawl(mirror, f"s3://data/{prefix}", settings)
    assert first.returncode == 0, first.stderr[-4000:]
    next_line = next(line for line in first.stderr.splitlines() if line.startswith("Next: "))
    assert "-a retry_failed=transient" in next_line
    assert f"AWS_SECRET_ACCESS_KEY={MASK}" in next_line and f"AWS_SESSION_TOKEN={MASK}" in next_line
    again = crawl(mirror, f"s3://data/{prefix}", {**settings, "OPENIMAGES_OUTPUTS": TWO_OUTPUTS})
    assert again.returncode == 0, again.stderr[-4000:]
    assert re.search(r"X-Amz-Signature=\*\*\*|Signature=\*\*\*", again.stderr)  # presigned reads were logged

    texts = {"first run": first.stdout + first.stderr, "rerun": again.stdout + again.stderr}
    texts |= {f"s3://data/{key}": fetch(s3, prefix + key).decode("latin-1") for key in objects(s3, prefix)}
    texts |= {str(path): path.read_bytes().decode("latin-1")
              for path in (tmp_path / "work").rglob("*") if path.is_file()}
    assert any(name.endswith("report.json") for name in texts) and any(".status/" in name for name in texts)
    leaks = {name: sorted({*(literal for literal in (SECRET_KEY, SESSION_TOKEN) if literal in text),
                           *UNREDACTED.findall(text)})
             for name, text in texts.items()}
    assert not {name: found for name, found in leaks.items() if found}
