"""The script people write by hand: requests + hashlib MD5 + Pillow thumbnail
in a multiprocessing.Pool. Prints the number of images saved. Certificates
are not checked (``verify=False``), as the other contenders do not."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
from multiprocessing import Pool
from pathlib import Path

import requests
import urllib3
from PIL import Image

_session: requests.Session | None = None
_out: Path = Path()


def _init(out: Path) -> None:
    global _session, _out
    _session = requests.Session()
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    _out = out


def fetch(row: dict[str, str]) -> bool:
    assert _session is not None
    try:
        # Per request: a session's verify=False loses to REQUESTS_CA_BUNDLE in the environment.
        response = _session.get(row["url"], timeout=10, verify=False)
        if response.status_code != 200:
            return False
        data = response.content
        if len(data) != int(row["size"]) or hashlib.md5(data).hexdigest() != row["md5"]:
            return False
        image = Image.open(io.BytesIO(data))
        image.thumbnail((224, 224), Image.LANCZOS)
        image.convert("RGB").save(_out / f"{row['key']}.jpg", quality=90)
        return True
    except Exception:  # noqa: BLE001 - a hand-written script counts failures, nothing more
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url_list", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--processes", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.url_list, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with Pool(args.processes, initializer=_init, initargs=(args.out,)) as pool:
        saved = sum(pool.imap_unordered(fetch, rows, chunksize=4))
    print(saved)


if __name__ == "__main__":
    main()
