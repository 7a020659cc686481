"""The Scrapyd nodes: a client of Scrapyd's JSON API, and the targets of scrapy.cfg.

``requests`` and ``scrapyd-client`` are imported only when the fleet needs
them: Scrapy imports every command of the project, also for the ``scrapy
crawl`` a Scrapyd node runs, and a node needs neither.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

from scrapy.exceptions import UsageError

if TYPE_CHECKING:
    from requests.auth import AuthBase

    from openimages_crawler.fleet.state import Fleet

T = TypeVar("T")

DEFAULT_PROJECT = "openimages_crawler"
HTTP_TIMEOUT = (3.0, 10.0)  # connect, read: a dead node must not stall the watch

# A job as its target lists it; ABSENT: not listed (lost in a restart, or dropped from the finished list).
PENDING, LISTED_RUNNING, ABSENT = "pending", "running", "absent"
ALIVE = (PENDING, LISTED_RUNNING)


class TargetError(Exception):
    """A target could not do what was asked."""


class TargetDown(TargetError):
    """No answer (refused, timed out, not a Scrapyd): the node may be gone."""


class TargetRefused(TargetError):
    """An answer, with an error (Scrapyd's ``"status": "error"``, or bad credentials)."""


class ScrapydTarget:
    """One Scrapyd daemon, through its JSON API.

    Scrapyd answers errors with HTTP 200 and ``"status": "error"``, so every
    answer is checked; every call has a timeout, so a dead node costs the
    watch seconds, not forever.
    """

    def __init__(self, name: str, url: str, project: str, auth: AuthBase | None = None) -> None:
        self.name = name
        self.url = url if url.endswith("/") else url + "/"
        self.project = project
        self.auth = auth

    def __repr__(self) -> str:
        return f"{self.name} ({self.url})"

    def jobs(self) -> dict[str, str]:
        """Job id -> pending, running or finished, for the project."""
        answer = self._call("GET", "listjobs.json", params={"project": self.project})
        return {job["id"]: state for state in (PENDING, LISTED_RUNNING, "finished") for job in answer.get(state, [])}

    def spiders(self) -> list[str]:
        return list(self._call("GET", "listspiders.json", params={"project": self.project})["spiders"])

    def schedule(self, spider: str, jobid: str, arguments: dict[str, str], settings: dict[str, str]) -> None:
        data = [("project", self.project), ("spider", spider), ("jobid", jobid),
                *arguments.items(), *(("setting", f"{name}={value}") for name, value in settings.items())]
        self._call("POST", "schedule.json", data=data)

    def cancel(self, jobid: str) -> None:
        """SIGTERM, the graceful stop (Scrapyd's default SIGINT would do too,
        but TERM is what a dying daemon sends, so one path is tested)."""
        self._call("POST", "cancel.json", data={"project": self.project, "job": jobid, "signal": "TERM"})

    def log_url(self, spider: str, jobid: str) -> str:
        return urljoin(self.url, f"logs/{self.project}/{spider}/{jobid}.log")

    def _call(self, method: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        import requests  # see the module's docstring

        try:
            response = requests.request(method, urljoin(self.url, endpoint), auth=self.auth,
                                        timeout=HTTP_TIMEOUT, **kwargs)
        except requests.Timeout:
            raise TargetDown(f"{self!r} does not answer (timed out)") from None
        except requests.RequestException as exc:
            raise TargetDown(f"{self!r} does not answer ({type(exc).__name__})") from None
        if response.status_code in (401, 403):
            raise TargetRefused(f"{self!r} refused the credentials: set username and password in "
                                f"[deploy:{self.name}] of scrapy.cfg, or in ~/.netrc")
        try:
            answer = response.json()
        except ValueError:
            raise TargetDown(f"{self!r} answered HTTP {response.status_code}, not Scrapyd's JSON") from None
        if not isinstance(answer, dict) or answer.get("status") != "ok":
            message = answer.get("message", answer) if isinstance(answer, dict) else answer
            raise TargetRefused(f"{self!r}: {message}")
        return answer


def ask_all(targets: list[ScrapydTarget], call: Callable[[ScrapydTarget], T]) -> dict[str, T | TargetError]:
    """``call`` on every target at once, by name: a silent node costs one
    timeout, not one per node, and Scrapyd answers some calls slowly (it runs
    ``scrapy list`` for ``listspiders.json``)."""

    def answer(target: ScrapydTarget) -> T | TargetError:
        try:
            return call(target)
        except TargetError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(len(targets), 16) or 1) as pool:
        futures = {target.name: pool.submit(answer, target) for target in targets}
    return {name: future.result() for name, future in futures.items()}


def configured_targets() -> dict[str, dict[str, str]]:
    """``[deploy:NAME]`` sections of scrapy.cfg, as scrapyd-deploy reads them
    (environment variables expanded, bare ``[deploy]`` as the base)."""
    try:
        from scrapyd_client.utils import _get_targets
    except ImportError:
        raise UsageError("scrapy fleet needs scrapyd-client: pip install scrapyd-client") from None
    return {name: dict(target) for name, target in _get_targets().items()}


def target_auth(url: str, username: str | None, password: str | None) -> AuthBase | None:
    """scrapyd-client's rule: username/password from the section, else ~/.netrc."""
    from scrapyd_client.utils import get_auth

    return get_auth(url=url, username=username or "", password=password or "")


def pick_targets(configured: dict[str, dict[str, str]], wanted: str, project: str | None) -> list[ScrapydTarget]:
    """The targets ``--targets`` names (``all``: every one with a url)."""
    usable = {name: target for name, target in configured.items() if target.get("url")}
    if not usable:
        raise UsageError("scrapy.cfg has no Scrapyd target: add a section [deploy:NAME] with "
                         "url = http://HOST:6800/ for each node")
    names = sorted(usable) if wanted == "all" else [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in usable]
    if unknown or not names:
        raise UsageError(f"unknown Scrapyd target {', '.join(unknown) or repr(wanted)} "
                         f"(scrapy.cfg has: {', '.join(sorted(usable))})")
    if len(set(names)) != len(names):
        raise UsageError(f"--targets {wanted}: a target is named twice")
    return [ScrapydTarget(name, usable[name]["url"], project or usable[name].get("project") or DEFAULT_PROJECT,
                          target_auth(usable[name]["url"], usable[name].get("username"),
                                      usable[name].get("password")))
            for name in names]


def recorded_targets(fleet: Fleet) -> dict[str, ScrapydTarget]:
    """The fleet's targets at their recorded urls, with scrapy.cfg's
    credentials (they are not written in the store)."""
    configured = configured_targets()
    targets = {}
    for name, recorded in fleet.targets.items():
        section = configured.get(name, {})
        targets[name] = ScrapydTarget(name, recorded["url"], recorded["project"],
                                      target_auth(recorded["url"], section.get("username"), section.get("password")))
    return targets
