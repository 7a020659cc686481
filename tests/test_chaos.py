"""Chaos: a crawl of a few thousand rows against hosts with random faults,
killed (SIGKILL) at random moments several times and stopped (SIGTERM) once,
resumed each time. At the end every row is in exactly one results file
exactly once, every stored file matches its row, and no image whose row was
recorded was downloaded again."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from openimages_crawler.testing.images import photo
from openimages_crawler.testing.mirror import (
    Mirror,
    MirrorRow,
    MirrorServer,
    Route,
    metadata_row,
)
from tests.conftest import (
    count_rows,
    kill,
    outcomes,
    read_csv,
    run_crawl,
    start_crawl,
    wait_for,
)

pytestmark = pytest.mark.e2e

ROWS = 2000


def chaos_mirror(server: MirrorServer, seed: int) -> Mirror:
    chance = random.Random(seed)
    bodies = []
    for index in range(24):
        out = io.BytesIO()
        photo(96 + index, 64 + index, index).save(out, "JPEG", quality=85)
        bodies.append(out.getvalue())
    mirror = Mirror()
    for index in range(ROWS):
        base = server.bases[index % len(server.bases)]
        path = f"/chaos/{index}.jpg"
        body = bodies[index % len(bodies)]
        image_id = hashlib.md5(f"chaos-{index}".encode()).hexdigest()[:16]
        roll = chance.random()
        route, expected = Route(body=body, delay=chance.uniform(0.0, 0.03)), "success"
        if roll < 0.05:
            route.status, expected = 404, "http_error"
        elif roll < 0.08:
            route.status, expected = 503, "http_error"  # dead: every retry fails
        elif roll < 0.14:
            route.fail_first = 1  # flaky: the retry succeeds
        elif roll < 0.16:
            route.body, expected = body + b"\0", "size_mismatch"
        mirror.routes[(base, path)] = route
        mirror.rows.append(MirrorRow(metadata_row(image_id, "train", base + path, body, index), expected, "chaos"))
    return mirror


def test_kills_and_a_stop_at_random_moments_lose_nothing_and_repeat_nothing(tmp_path: Path) -> None:
    chance = random.Random(7)
    server = MirrorServer(("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    mirror = chaos_mirror(server, seed=11)
    metadata = mirror.write_metadata(tmp_path / "images.csv")
    server.serve(mirror)
    store = tmp_path / "store"
    settings = {"OPENIMAGES_SAVE_ORIGINALS": "True", "CONCURRENT_REQUESTS": "24", "RETRY_TIMES": "1",
                "OPENIMAGES_PROCESSES": "2"}  # a kill -9 hits the command; its processes stop on their own
    success, failure = store / "train" / "images-success.csv", store / "train" / "images-failure.csv"
    recorded_requests: dict[str, int] = {}  # path of a recorded row's image -> requests when recorded
    url_of = {row.fields["ImageID"]: row.fields["OriginalURL"] for row in mirror.rows}
    try:
        for stop in [signal.SIGKILL] * 4 + [signal.SIGTERM]:
            done_before = count_rows(success) + count_rows(failure)
            process = start_crawl(metadata, store, settings)
            wait_for(lambda before=done_before: count_rows(success) + count_rows(failure) > before + 50, timeout=60)
            time.sleep(chance.uniform(0.0, 1.5))
            kill(process, stop)
            process.wait(timeout=60)
            for image_id in outcomes(store):
                path = "/" + url_of[image_id].split("/", 3)[3]
                recorded_requests.setdefault(path, server.counter.requests[path])
        run_crawl(metadata, store, settings, timeout=300)
        found = outcomes(store)
        assert found == {image_id: [expected] for image_id, expected in mirror.expected().items()}
        for path, requests in recorded_requests.items():
            assert server.counter.requests[path] == requests, path  # recorded, never fetched again
        by_id = {row.fields["ImageID"]: row.fields for row in mirror.rows}
        for row in read_csv(success)[1]:
            original = store / "train" / "images-original" / row["ImageID"][:3] / f"{row['ImageID']}.jpg"
            data = original.read_bytes()
            assert str(len(data)) == by_id[row["ImageID"]]["OriginalSize"]
            assert base64.b64encode(hashlib.md5(data).digest()).decode() == by_id[row["ImageID"]]["OriginalMD5"]
            with Image.open(io.BytesIO(data)) as image:
                image.load()
            resized = store / "train" / "images-resized" / row["ImageID"][:3] / f"{row['ImageID']}.jpg"
            with Image.open(resized) as image:
                image.load()
        assert not any((store / ".tmp").glob("*/*")) if (store / ".tmp").exists() else True
    finally:
        server.close()
