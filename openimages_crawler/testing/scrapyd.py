"""Real Scrapyd daemons on 127.0.0.1 with the project deployed: for the
fleet's tests and benchmark (no Scrapy import; Scrapyd runs in processes of
its own).

A daemon reads ``./scrapyd.conf`` and writes ``./twistd.pid`` in its working
folder, so each gets a folder of its own, outside the project (a job started
from inside it would import the sources instead of the deployed egg), and an
environment without the project's settings module. ``items_dir`` stays
empty: a set one replaces the project's FEEDS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

PROJECT = "openimages_crawler"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env() -> dict[str, str]:
    """No project settings module or source path: a Scrapyd job must run the deployed egg."""
    return {name: value for name, value in os.environ.items()
            if name not in ("SCRAPY_SETTINGS_MODULE", "SCRAPY_PROJECT", "PYTHONPATH")}


@dataclass
class Daemon:
    name: str
    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def kill(self) -> None:
        """The node dies: the daemon and every job of its process group, at once."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def log(self) -> str:
        return (self.folder / "scrapyd.out").read_text(errors="replace")[-3000:]

    def answers(self) -> bool:
        assert self.process.poll() is None, self.log()
        try:
            with urlopen(f"{self.url}daemonstatus.json", timeout=2) as response:
                return json.load(response)["status"] == "ok"
        except OSError:
            return False


def start_daemon(folder: Path, name: str, max_proc: int = 2, env: dict[str, str] | None = None) -> Daemon:
    """A Scrapyd in a folder of its own; ``env``: more of its (and its jobs') environment."""
    folder.mkdir(parents=True)
    port = free_port()
    (folder / "scrapyd.conf").write_text(
        f"[scrapyd]\nbind_address = 127.0.0.1\nhttp_port = {port}\neggs_dir = {folder / 'eggs'}\n"
        f"logs_dir = {folder / 'logs'}\nitems_dir =\ndbs_dir = {folder / 'dbs'}\njobs_to_keep = 20\n"
        f"max_proc = {max_proc}\npoll_interval = 0.5\nusername =\npassword =\n")
    with open(folder / "scrapyd.out", "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "scrapyd"], cwd=folder, env={**clean_env(), **(env or {})},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Daemon(name, folder, port, process)


def project_copy(source: Path, copy: Path) -> Path:
    """What the egg is built from (scrapy.cfg, setup.py and the package),
    copied to ``copy``: scrapyd-deploy leaves build/ and egg-info where it runs."""
    copy.mkdir(parents=True, exist_ok=True)
    for name in ("scrapy.cfg", "setup.py"):
        shutil.copy2(source / name, copy / name)
    shutil.copytree(source / PROJECT, copy / PROJECT, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True)
    return copy


def build_egg(copy: Path, egg: Path) -> Path:
    """The project's egg, built by scrapyd-deploy (with the committed setup.py)."""
    subprocess.run([sys.executable, "-m", "scrapyd_client.deploy", "--build-egg", str(egg)], cwd=copy,
                   env=clean_env(), check=True, capture_output=True, timeout=120)
    return egg


def write_cfg(folder: Path, deploy: str) -> None:
    """A scrapy.cfg with the project's settings and ``deploy`` sections."""
    (folder / "scrapy.cfg").write_text(
        f"[settings]\ndefault = openimages_crawler.settings\n\n[deploy]\nproject = {PROJECT}\n\n" + deploy)


def deploy(copy: Path, daemons: list[Daemon], egg: Path) -> None:
    """Name the daemons in the copy's scrapy.cfg and deploy the egg to each with scrapyd-deploy."""
    write_cfg(copy, "".join(f"[deploy:{d.name}]\nurl = {d.url}\n\n" for d in daemons))
    deploys = [subprocess.Popen([sys.executable, "-m", "scrapyd_client.deploy", daemon.name, "-p", PROJECT,
                                 "--version", "1", "--egg", str(egg)],
                                cwd=copy, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for daemon in daemons]
    for process in deploys:
        output = process.communicate(timeout=60)[0].decode()
        if process.returncode != 0 or '"status": "ok"' not in output:
            raise RuntimeError(f"scrapyd-deploy failed: {output}")
