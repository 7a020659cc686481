"""Polite crawling and dataset filters: the publishers' X-Robots-Tag opt-outs
(``opted_out``, final), a user agent that says who crawls, and the filters on
the decoded image (``filtered``): each a reason of its own, counted apart from
the errors."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
from pathlib import Path

import pytest
from scrapy.exceptions import UsageError

from openimages_crawler import __version__
from openimages_crawler.crawl.politeness import (
    AGENT_TOKEN,
    crawl_user_agent,
    opt_out,
    parse_directives,
    user_agent,
)
from openimages_crawler.dataset.catalogue import IMAGES_CSV_COLUMNS
from openimages_crawler.dataset.retry import RetryFilter
from openimages_crawler.imaging.process import Expected, SizeFilter, process_image
from openimages_crawler.testing.images import encoded, exif_rotated_jpeg, photo
from openimages_crawler.testing.mirror import Mirror, MirrorServer, Route
from tests.conftest import outcomes, run_crawl
from tests.test_containers import webdataset_samples

DEFAULT = parse_directives("noai,noimageai,noindex,noimageindex")


@pytest.mark.parametrize(("values", "refused"), [
    (["noai"], "noai"),
    (["nofollow, NoImageIndex"], "nofollow, NoImageIndex"),  # any one of a list, any case
    (["nofollow", "noimageai"], "noimageai"),  # the header given twice
    ([f"{AGENT_TOKEN}: noai"], f"{AGENT_TOKEN}: noai"),  # for this crawl's agent
    (["OpenImages-Crawler: noindex"], "OpenImages-Crawler: noindex"),
    (["googlebot: noindex"], None),  # for another agent
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),  # a directive with a value
    (["nofollow, noarchive"], None),
    (["noindex, unavailable_after: 25 Jun 2010 15:00:00 PST"], "noindex, unavailable_after: 25 Jun 2010 15:00:00 PST"),
    (["max-image-preview:large, noai"], "max-image-preview:large, noai"),  # a valued directive first
    (["none"], "none"),  # noindex, nofollow
    (["googlebot: none"], None),
    ([], None),
])
def test_opt_out_directives_for_all_agents_or_ours(values: list[str], refused: str | None) -> None:
    assert opt_out(values, DEFAULT) == refused


def test_an_empty_setting_turns_the_check_off() -> None:
    assert parse_directives("") == frozenset() and parse_directives(" , ") == frozenset()
    assert opt_out(["noai"], parse_directives("")) is None
    assert parse_directives(["NoAI", " noindex "]) == {"noai", "noindex"}


def test_user_agent_says_who_crawls_and_how_to_reach_them() -> None:
    assert user_agent("") == f"openimages-crawler/{__version__}"
    assert user_agent("ml-data@example.org") == f"openimages-crawler/{__version__} (+ml-data@example.org)"
    for bad in ("me (at) example.org", "ops@example.org\x00", "ops@exämple.org\x7f"):
        with pytest.raises(UsageError, match="OPENIMAGES_CONTACT"):
            user_agent(bad)


def test_a_user_agent_given_wins_over_ours() -> None:
    from scrapy.settings import Settings

    settings = Settings({"OPENIMAGES_CONTACT": "ops@example.org"})
    assert crawl_user_agent(settings) == user_agent("ops@example.org")
    settings.set("USER_AGENT", "my-lab-crawler/2 (+https://lab.example.org)", "cmdline")
    assert crawl_user_agent(settings) == "my-lab-crawler/2 (+https://lab.example.org)"


def test_opted_out_is_final_and_policy_reasons_are_not_transient() -> None:
    with pytest.raises(ValueError, match="opted_out is final"):
        RetryFilter.parse("transient,opted_out")
    transient = RetryFilter.parse("transient")
    assert not transient.matches("filtered", "64x48: shorter side 48 under OPENIMAGES_MIN_IMAGE_SIDE (64)")
    assert not transient.matches("opted_out", "X-Robots-Tag: noai")
    assert RetryFilter.parse("filtered").matches("filtered", "")  # asked for by name, a filtered row is tried again


@pytest.mark.parametrize(("keep", "refused"), [
    (SizeFilter(min_side=48), None),  # exactly at the limit: kept
    (SizeFilter(min_side=49), "shorter side 48 under OPENIMAGES_MIN_IMAGE_SIDE (49)"),
    (SizeFilter(max_area=64 * 48), None),
    (SizeFilter(max_area=64 * 48 - 1), "3072 pixels over OPENIMAGES_MAX_IMAGE_AREA (3071)"),
    (SizeFilter(max_aspect_ratio=1.3334), None),  # 64/48 = 1.3333...: the exact edge is the 115x100 test
    (SizeFilter(max_aspect_ratio=1.33), "aspect ratio 1.33 over OPENIMAGES_MAX_ASPECT_RATIO (1.33)"),
    (SizeFilter(), None),
])
def test_each_filter_keeps_its_edge(keep: SizeFilter, refused: str | None) -> None:
    body = encoded(photo(64, 48, 3), "JPEG", quality=90)
    outcome = process_image(body, Expected(), [], max_pixels=10**7, keep=keep)
    if refused is None:
        assert outcome.ok, outcome.details
    else:
        assert outcome.reason == "filtered" and outcome.details == f"64x48: {refused}"


def test_a_ratio_exactly_at_the_limit_is_kept_whatever_floats_say() -> None:
    body = encoded(photo(115, 100, 3), "JPEG", quality=90)  # 1.15 * 100 is 114.99999999999999 in floats
    assert process_image(body, Expected(), [], max_pixels=10**7, keep=SizeFilter(max_aspect_ratio=1.15)).ok


def test_a_filter_applies_to_the_upright_sides_whatever_the_turn() -> None:
    body = encoded(photo(48, 64, 3), "JPEG", quality=90)  # portrait: the same sides
    assert process_image(body, Expected(), [], max_pixels=10**7, keep=SizeFilter(min_side=48)).ok
    assert not process_image(body, Expected(), [], max_pixels=10**7,
                             keep=SizeFilter(max_aspect_ratio=1.3)).ok


def test_a_broken_image_is_corrupt_not_filtered() -> None:
    body = encoded(photo(64, 48, 3), "JPEG", quality=90)
    outcome = process_image(body[: len(body) // 2], Expected(), [], max_pixels=10**7,
                            keep=SizeFilter(min_side=1000))
    assert outcome.reason == "corrupt"


@pytest.mark.e2e
def test_opt_outs_are_recorded_once_the_agent_names_its_contact_and_filters_keep_apart(tmp_path: Path) -> None:
    """Responses with each directive (general and for this agent) become opted_out and a rerun does
    not fetch them again; the server sees the contact in the user agent; a filter's refusals are
    filtered, counted apart from the errors in the summary; the results and the packs record
    hashlib's digests of the original bytes and the original's upright size."""
    server = MirrorServer()
    images = {"a": (64, 48), "b": (64, 48), "c": (64, 48), "d": (64, 48), "e": (20, 48), "f": None}
    robots = {"a": (("X-Robots-Tag", "noai"),), "b": (("X-Robots-Tag", f"{AGENT_TOKEN}: noimageindex"),),
              "c": (("X-Robots-Tag", "googlebot: noindex"),), "d": (("X-Robots-Tag", "nofollow"),)}
    rows = []
    for index, (name, size) in enumerate(images.items()):
        image_id = f"{index:016x}"
        body = encoded(photo(*size, index), "JPEG", quality=90) if size else exif_rotated_jpeg(index)
        path = f"/img/{name}.jpg"
        server.routes[(server.bases[0], path)] = Route(body=body, headers=robots.get(name, ()))
        rows.append({"ImageID": image_id, "Subset": "train", "OriginalURL": server.bases[0] + path,
                     "OriginalSize": str(len(body)),
                     "OriginalMD5": base64.b64encode(hashlib.md5(body).digest()).decode(), "body": body})
    server.serve(Mirror())
    try:
        metadata = tmp_path / "images.csv"
        with open(metadata, "w", newline="") as handle:
            writer = csv.DictWriter(handle, IMAGES_CSV_COLUMNS, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        store = tmp_path / "store"
        settings = {"OPENIMAGES_CONTACT": "https://example.org/crawl-contact", "OPENIMAGES_MIN_IMAGE_SIDE": "48",
                    "OPENIMAGES_HASHES": "sha256,blake2b", "OPENIMAGES_RESIZE_CONTAINER": "webdataset"}
        done = run_crawl(metadata, store, settings)
        found = outcomes(store)
        assert found == {"0000000000000000": ["opted_out"], "0000000000000001": ["opted_out"],
                         "0000000000000002": ["success"], "0000000000000003": ["success"],
                         "0000000000000004": ["filtered"], "0000000000000005": ["success"]}
        with open(store / "train" / "images-failure.csv", newline="") as handle:
            details = {row["ImageID"]: row["FailureDetails"] for row in csv.DictReader(handle)}
        assert details["0000000000000000"] == "X-Robots-Tag: noai"
        assert details["0000000000000004"] == "20x48: shorter side 20 under OPENIMAGES_MIN_IMAGE_SIDE (48)"
        with open(store / "train" / "images-success.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == [*IMAGES_CSV_COLUMNS, "OriginalWidth", "OriginalHeight", "sha256", "blake2b"]
            stored = {row["ImageID"]: row for row in reader}
        bodies = {row["ImageID"]: row["body"] for row in rows}
        for image_id, row in stored.items():  # hashlib's digests of the original bytes, the upright size
            assert row["sha256"] == hashlib.sha256(bodies[image_id]).hexdigest()
            assert row["blake2b"] == hashlib.blake2b(bodies[image_id]).hexdigest()
        assert (stored["0000000000000005"]["OriginalWidth"], stored["0000000000000005"]["OriginalHeight"]) == (
            "300", "200")  # stored as 200x300 with EXIF orientation 6
        assert (stored["0000000000000002"]["OriginalWidth"], stored["0000000000000002"]["OriginalHeight"]) == (
            "64", "48")
        samples = webdataset_samples(store, "images-resized")
        assert {key: json.loads(sample["json"])["sha256"] for key, sample in samples.items()} == {
            image_id: row["sha256"] for image_id, row in stored.items()}
        assert json.loads(samples["0000000000000005"]["json"])["OriginalWidth"] == "300"
        import duckdb

        with duckdb.connect(str(store / "openimages.duckdb"), read_only=True) as con:
            recorded = dict(con.execute("SELECT ImageID, sha256 FROM images WHERE status = 'stored'").fetchall())
            widths = dict(con.execute("SELECT ImageID, OriginalWidth FROM images WHERE status = 'stored'").fetchall())
        assert recorded == {image_id: row["sha256"] for image_id, row in stored.items()}
        assert str(widths["0000000000000005"]) == "300"
        agents = set(server.counter.user_agents)
        assert agents == {f"openimages-crawler/{__version__} (+https://example.org/crawl-contact)"}
        assert "6 rows accounted: 3 stored, 0 failed, 3 left out" in done.stderr
        assert "left out (not errors): opted_out 2, filtered 1" in done.stderr
        before = sum(server.counter.requests.values())
        run_crawl(metadata, store, {**settings, "OPENIMAGES_DISALLOWED_DIRECTIVES": ""},
                  retry_failed="transient")
        assert sum(server.counter.requests.values()) == before  # recorded: nothing fetched again
        assert outcomes(store) == found
    finally:
        server.close()


def test_processes_left_out_counts_add_up_in_the_run_figures() -> None:
    """A multi-process run's summary sums each process's left-out rows, apart from its failures."""
    from openimages_crawler.monitor.progress import Counts
    from openimages_crawler.monitor.status import PartStatus, set_counts, total_counts

    records = []
    for part, left_out in (("1of2", {"opted_out": 2}), ("2of2", {"opted_out": 1, "filtered": 3})):
        record = PartStatus(part=part)
        set_counts(record, Counts(time=1.0, done=7, ok=1, failed=0, left_out=left_out), {})
        records.append(PartStatus(**json.loads(record.encode())))  # as read back from the store
    summed = total_counts(records, 2.0)
    assert summed.left_out == {"opted_out": 3, "filtered": 3} and summed.failed == 0 and summed.omitted == 6
