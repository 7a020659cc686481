"""Where images come from: 300K thumbnails and the CVDF mirror."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from openimages_crawler.dataset.catalogue import DOWNLOAD_COLUMNS, IMAGE_INFO_COLUMNS, IMAGE_SIZE_COLUMNS
from openimages_crawler.testing.images import photo
from openimages_crawler.testing.mirror import Route
from tests.conftest import (
    ROOT,
    Served,
    crawl_command,
    outcomes,
    read_csv,
    run_crawl,
    serve,
)

pytestmark = pytest.mark.e2e


def small_jpeg(seed: int, size: tuple[int, int] = (320, 213)) -> bytes:
    out = io.BytesIO()
    photo(*size, seed).save(out, "JPEG", quality=80)
    return out.getvalue()


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_300k_thumbnails_where_rows_have_one(tmp_path: Path) -> None:
    served: Served = serve(tmp_path, faults=False)
    try:
        rows = served.mirror.rows
        thumbnails: dict[str, bytes] = {}
        for index, row in enumerate(rows):
            if not row.fields["Thumbnail300KURL"]:
                continue
            url = urlsplit(row.fields["Thumbnail300KURL"])
            body = small_jpeg(index)
            served.server.routes[(f"{url.scheme}://{url.netloc}", url.path)] = Route(body=body)
            thumbnails[row.fields["ImageID"]] = body
        assert 0 < len(thumbnails) < len(rows)
        store = tmp_path / "store"
        run_crawl(served.metadata, store, {"OPENIMAGES_DOWNLOAD_300K": "True"})
        assert outcomes(store) == {r.fields["ImageID"]: ["success"] for r in rows}
        header, success = read_csv(store / "train" / "images-success.csv")
        assert header[-5:] == [*DOWNLOAD_COLUMNS, *IMAGE_SIZE_COLUMNS]
        for result in success:
            thumb = thumbnails.get(result["ImageID"])
            if thumb is not None:  # no size/MD5 check: the real ones are made on the fly
                assert result["DownloadURL"] == result["Thumbnail300KURL"]
                assert result["DownloadSize"] == str(len(thumb)) != result["OriginalSize"]
                assert result["DownloadMD5"] == b64md5(thumb)
            else:  # no thumbnail: the original, verified
                assert result["DownloadURL"] == result["OriginalURL"]
                assert result["DownloadMD5"] == result["OriginalMD5"]
        # The same store without the option has other columns: a clear error, not a mix.
        done = subprocess.run(crawl_command(served.metadata, store), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "use another IMAGES_STORE" in done.stderr
    finally:
        served.server.close()


def test_cvdf_source_decodes_records_actual_bytes_and_resumes(tmp_path: Path) -> None:
    served: Served = serve(tmp_path, faults=False)
    try:
        rows = [r for r in served.mirror.rows if r.kind.startswith("jpeg")]
        served.mirror.rows = rows
        for row in rows:
            row.fields["Subset"] = "validation"
            row.fields["Rotation"] = "0"
        metadata = served.mirror.write_metadata(tmp_path / "info.csv", IMAGE_INFO_COLUMNS)
        cvdf = served.server.bases[1]
        copies = {}
        for index, row in enumerate(rows[1:]):  # the first is missing from the mirror
            copies[row.fields["ImageID"]] = small_jpeg(100 + index, (400, 300))
            served.server.routes[(cvdf, f"/cvdf/validation/{row.fields['ImageID']}.jpg")] = Route(
                body=copies[row.fields["ImageID"]])
        broken = rows[2].fields["ImageID"]
        copies_broken = copies[broken][: len(copies[broken]) // 2]
        served.server.routes[(cvdf, f"/cvdf/validation/{broken}.jpg")] = Route(body=copies_broken)
        store = tmp_path / "store"
        settings = {"OPENIMAGES_CVDF_URL": cvdf + "/cvdf/", "OPENIMAGES_SAVE_ORIGINALS": "True"}
        run_crawl(metadata, store, settings, source="cvdf")
        found = outcomes(store, "validation")
        missing = rows[0].fields["ImageID"]
        assert found.pop(missing) == ["http_error"]
        assert found.pop(broken) == ["corrupt"]
        assert found == {image_id: ["success"] for image_id in copies if image_id != broken}
        _, success = read_csv(store / "validation" / "images-success.csv")
        for result in success:
            body = copies[result["ImageID"]]
            assert result["DownloadURL"] == f"{cvdf}/cvdf/validation/{result['ImageID']}.jpg"
            assert (result["DownloadSize"], result["DownloadMD5"]) == (str(len(body)), b64md5(body))
            stored = next((store / "validation" / "images-original").rglob(f"{result['ImageID']}.jpg"))
            assert stored.read_bytes() == body
            resized = next((store / "validation" / "images-resized").rglob(f"{result['ImageID']}.jpg"))
            with Image.open(resized) as image:
                assert image.size == (224, 168)
        _, failure = read_csv(store / "validation" / "images-failure.csv")
        assert {r["ImageID"]: r["DownloadURL"] for r in failure}[missing].endswith(f"/{missing}.jpg")
        # A rerun downloads nothing: the stored copies are not checked against OriginalSize.
        before = sum(served.server.counter.requests.values())
        run_crawl(metadata, store, settings, source="cvdf")
        assert sum(served.server.counter.requests.values()) == before
        assert all(len(v) == 1 for v in outcomes(store, "validation").values())
    finally:
        served.server.close()
