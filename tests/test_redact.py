"""Secrets never reach a log, a report, a record or a printed command
(openimages_crawler.redact), checked at the lowest layer that shows it; the
crawl into a bucket with literal secrets is in tests/test_objects_crawl.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from openimages_crawler.monitor.report import run_record
from openimages_crawler.monitor.status import PartStatus
from openimages_crawler.redact import MASK, _Redacting, is_secret, redact, redacted_argv, redacted_settings, remember
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def no_secrets_remembered_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no remembered secret: other tests of the same
    worker remember theirs (a bucket's ``secret``), which would mask words here."""
    import openimages_crawler.redact as redact_module

    monkeypatch.setattr(redact_module, "_known", set())
    monkeypatch.setattr(redact_module, "_pattern", None)

PRESIGNED_V4 = ("https://s3.example.com/data/train/images-original/000/000a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                "&X-Amz-Credential=AKIAEXAMPLE%2F20261202%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261202T000000Z"
                "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLETOKEN"
                "&X-Amz-Signature=0123456789abcdef0123456789abcdef")
PRESIGNED_V2 = ("http://127.0.0.1:9000/data/a.jpg?AWSAccessKeyId=AKIAEXAMPLE&Signature=dGhpc2lzYXNpZw%3D%3D"
                "&Expires=1800000000&x-amz-security-token=FwoGZXIvYXdzV2TOKEN")


@pytest.mark.parametrize(("name", "secret"), [
    ("AWS_SECRET_ACCESS_KEY", True), ("AWS_SESSION_TOKEN", True), ("PROXY_PASSWORD", True),
    ("MY_API_KEY", True), ("aws_secret_access_key", True), ("AWS_ACCESS_KEY_ID", False),
    ("IMAGES_STORE", False), ("OPENIMAGES_RESIZE_SIZE", False),
])
def test_a_setting_is_secret_by_its_name(name: str, secret: bool) -> None:
    assert is_secret(name) is secret


def test_presigned_urls_lose_their_signature_credential_and_token() -> None:
    shown = redact(f"Gave up retrying <GET {PRESIGNED_V4}> (failed 5 times)")
    for value in ("AKIAEXAMPLE%2F20261202", "FwoGZXIvYXdzEXAMPLETOKEN", "0123456789abcdef0123456789abcdef"):
        assert value not in shown
    assert "X-Amz-Signature=***" in shown and "X-Amz-Credential=***" in shown
    assert "/data/train/images-original/000/000a.jpg" in shown and "X-Amz-Expires=86400" in shown
    shown = redact(PRESIGNED_V2)
    assert "dGhpc2lzYXNpZw" not in shown and "FwoGZXIvYXdzV2TOKEN" not in shown
    assert "AWSAccessKeyId=AKIAEXAMPLE" in shown  # an access key's id is not a secret


def test_url_passwords_and_remembered_secrets_are_masked() -> None:
    assert redact("proxy http://crawler:hunter22@proxy.example:3128 refused") == \
        f"proxy http://crawler:{MASK}@proxy.example:3128 refused"
    remember([("MY_SERVICE_TOKEN", "tok-literal-4711"), ("OTHER", "not-a-secret-0815"), ("SHORT_KEY", "1")])
    assert redact("sent tok-literal-4711 and not-a-secret-0815 with 1") == \
        f"sent {MASK} and not-a-secret-0815 with 1"


def test_the_command_line_is_printed_without_secret_values() -> None:
    argv = ["openimages", "-a", "version=3", "-s", "AWS_SECRET_ACCESS_KEY=s3cr3t/value", "--set",
            "AWS_SESSION_TOKEN=tok", "--set=MY_PASSWORD=pw", "-sAPI_KEY=k", "-s", "AWS_ACCESS_KEY_ID=AKIAID",
            "-s", "IMAGES_STORE=s3://data/x", "-a", "metadata=http://user:pw@mirror.example/images.csv"]
    assert redacted_argv(argv) == [
        "openimages", "-a", "version=3", "-s", f"AWS_SECRET_ACCESS_KEY={MASK}", "--set", f"AWS_SESSION_TOKEN={MASK}",
        f"--set=MY_PASSWORD={MASK}", f"-sAPI_KEY={MASK}", "-s", "AWS_ACCESS_KEY_ID=AKIAID",
        "-s", "IMAGES_STORE=s3://data/x", "-a", f"metadata=http://user:{MASK}@mirror.example/images.csv"]


def test_reports_and_status_records_hold_no_secret_values() -> None:
    settings = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-literal", "AWS_ACCESS_KEY_ID": "AKIAID", "CONCURRENT_REQUESTS": 8,
                "AWS_SESSION_TOKEN": ""}
    run = run_record("s3://data/x", started="now", seconds=1.0, reason="finished",
                     arguments={"metadata": "http://u:p4ss@host/images.csv"}, settings=settings)
    assert run["settings"] == {"AWS_SECRET_ACCESS_KEY": MASK, "AWS_ACCESS_KEY_ID": "AKIAID",
                               "CONCURRENT_REQUESTS": 8, "AWS_SESSION_TOKEN": ""}
    assert "p4ss" not in json.dumps(run)
    record = PartStatus(part="1of1", arguments={"metadata": "http://u:p4ss@host/images.csv"},
                        error=f"cannot read {PRESIGNED_V4}")
    encoded = record.encode().decode()
    assert "p4ss" not in encoded and "0123456789abcdef0123456789abcdef" not in encoded
    assert record.arguments["metadata"] == "http://u:p4ss@host/images.csv"  # the record in memory is untouched
    assert redacted_settings({"A": None, "B_TOKEN": None}) == {"A": None, "B_TOKEN": None}


def test_every_log_record_of_a_command_is_redacted_scrapy_s_included() -> None:
    """The project's commands package installs the redaction: a record of any
    logger (Scrapy's too), its message, arguments and traceback, is masked."""
    code = f"""
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s %(message)s")
import openimages_crawler.commands  # what `scrapy` imports before any project command
from openimages_crawler.redact import remember
remember([("AWS_SECRET_ACCESS_KEY", "s3cr3t-from-settings")])
url = {PRESIGNED_V4!r}
logging.getLogger("scrapy.downloadermiddlewares.retry").error("Gave up retrying %(request)s", {{"request": url}})
logging.getLogger("botocore").debug("secret %s and %s", "s3cr3t-from-settings", "s3cr3t-from-env")
logging.getLogger("scrapy.crawler").info("Overridden settings: %s", {{"AWS_SESSION_TOKEN": "tok-from-argv-42"}})
try:
    raise ValueError("failed " + url)
except ValueError:
    logging.getLogger("x").exception("boom")
"""
    done = subprocess.run([sys.executable, "-c", code, "-s", "AWS_SESSION_TOKEN=tok-from-argv-42"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "MY_SECRET": "s3cr3t-from-env"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "scrapy.downloadermiddlewares.retry Gave up retrying https://s3.example.com/data/" in out
    assert "botocore secret *** and ***" in out
    assert "scrapy.crawler Overridden settings: {'AWS_SESSION_TOKEN': '***'}" in out
    assert "ValueError: failed https://s3.example.com" in out  # the traceback is there, masked
    for literal in ("0123456789abcdef0123456789abcdef", "FwoGZXIvYXdzEXAMPLETOKEN", "s3cr3t", "tok-from"):
        assert literal not in out


def test_a_record_that_cannot_be_formatted_is_left_to_the_handler() -> None:
    factory = _Redacting(logging.LogRecord)
    record = factory("x", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert (record.msg, record.args) == ("%d items", ("many",))
    record = factory("x", logging.INFO, __file__, 1, "%s", (PRESIGNED_V2,), None)
    assert "dGhpc2lzYXNpZw" not in record.getMessage()
