"""Misspelled settings are errors (issue 28): an ``OPENIMAGES_*`` name that
settings.py does not define, from ``-s``, a settings module or the
environment, stops every command before it writes anything, with one line
naming the closest defined name."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import pytest
from scrapy.exceptions import UsageError
from scrapy.settings import Settings

import openimages_crawler.settings as settings_module
from openimages_crawler.commands.setting_names import (
    check_setting_names,
    defined_names,
    refuse_unknown_settings,
    setting_name_errors,
    spider_settings,
)
from openimages_crawler.dataset.catalogue import IMAGES_CSV_COLUMNS
from tests.conftest import FAST_SETTINGS, ROOT, crawl_command, project_settings

NO_ENV: dict[str, str] = {}


def errors(values: dict[str, object], **options: object) -> str:
    """The check's message for the project's settings with ``values`` given on the command line."""
    options.setdefault("environ", NO_ENV)
    return setting_name_errors(project_settings(values), **options)  # type: ignore[arg-type]


def test_a_misspelled_name_is_an_error_naming_the_closest() -> None:
    assert errors({"OPENIMAGES_RESIZE_SIZ": 300}) == (
        "unknown setting OPENIMAGES_RESIZE_SIZ; did you mean OPENIMAGES_RESIZE_SIZE?")
    settings = project_settings({"OPENIMAGES_RESIZE_SIZ": 300})
    with pytest.raises(UsageError, match=r"^unknown setting OPENIMAGES_RESIZE_SIZ; did you mean "
                       r"OPENIMAGES_RESIZE_SIZE\?$"):
        check_setting_names(settings)


def test_every_misspelled_name_is_named_on_one_line() -> None:
    message = errors({"OPENIMAGES_RESIZE_SIZ": 300, "OPENIMAGES_WORKRS": 4, "OPENIMAGES_ZZZZ": 1})
    assert message == ("unknown settings OPENIMAGES_RESIZE_SIZ (did you mean OPENIMAGES_RESIZE_SIZE?), "
                       "OPENIMAGES_WORKRS (did you mean OPENIMAGES_WORKERS?), OPENIMAGES_ZZZZ (no setting "
                       "of settings.py is close (README, Settings))")
    assert "\n" not in message


@pytest.mark.parametrize(("name", "meant"), [
    ("openimages_resize_size", "OPENIMAGES_RESIZE_SIZE"),  # Scrapy's names are case-sensitive: ignored silently
    ("OPENIMAGE_SAVE_ORIGINALS", "OPENIMAGES_SAVE_ORIGINALS"),  # the prefix itself misspelt
    ("OPENIMAGES_RESIZEMODE", "OPENIMAGES_RESIZE_MODE"),
])
def test_names_meant_as_ours_are_errors_too(name: str, meant: str) -> None:
    assert errors({name: "1"}) == f"unknown setting {name}; did you mean {meant}?"


def test_defined_names_pass_and_other_names_are_not_ours_to_judge() -> None:
    assert errors({}) == ""  # every default of settings.py
    assert errors({"OPENIMAGES_RESIZE_SIZE": 300, "OPENIMAGES_WORKERS": 2, **FAST_SETTINGS}) == ""
    # Scrapy's own names, a user's, and a misspelt one of Scrapy's (Scrapy's to judge, not ours)
    assert errors({"MYSETTING": 1, "DOWNLOAD_DELAY": 1, "CONCURENT_REQUESTS": 3, "IMAGES_STOR": "x"}) == ""
    settings = Settings({"MYSETTING": 1})  # no settings module at all (scrapy resize outside the project)
    assert setting_name_errors(settings, environ=NO_ENV) == ""


def test_the_names_come_from_the_settings_module_when_the_check_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    names = defined_names()
    assert names == {name for name in vars(settings_module) if name.startswith("OPENIMAGES_")}
    assert "OPENIMAGES_RESIZE_SIZE" in names and "IMAGES_STORE" not in names
    assert errors({"OPENIMAGES_BRAND_NEW": 1}).startswith("unknown setting OPENIMAGES_BRAND_NEW")
    monkeypatch.setattr(settings_module, "OPENIMAGES_BRAND_NEW", 0, raising=False)  # a setting added later
    assert errors({"OPENIMAGES_BRAND_NEW": 1}) == ""
    assert errors({"OPENIMAGES_BRAND_NEWW": 1}) == (
        "unknown setting OPENIMAGES_BRAND_NEWW; did you mean OPENIMAGES_BRAND_NEW?")


def test_a_spiders_custom_settings_are_checked() -> None:
    assert errors({}, more={"OPENIMAGES_RESIZE_SIZ": 1}) == (
        "unknown setting OPENIMAGES_RESIZE_SIZ; did you mean OPENIMAGES_RESIZE_SIZE?")
    spider = SimpleNamespace(custom_settings={"OPENIMAGES_WORKRS": 1})

    def load(name: str) -> object:
        if name != "typo":
            raise KeyError(name)
        return spider

    process = SimpleNamespace(spider_loader=SimpleNamespace(load=load))
    assert spider_settings(process, "typo") == {"OPENIMAGES_WORKRS": 1}  # type: ignore[arg-type]
    assert spider_settings(process, "nosuch") == {}  # type: ignore[arg-type]
    spider.custom_settings = None
    assert spider_settings(process, "typo") == {}  # type: ignore[arg-type]


def test_scrapy_prefixed_environment_variables_of_ours_are_refused() -> None:
    """Scrapy 2.19 makes settings of SCRAPY_SETTINGS_MODULE, _PROJECT, _CHECK and
    _PYTHON_SHELL only: SCRAPY_OPENIMAGES_… would be ignored silently."""
    environ = {"SCRAPY_OPENIMAGES_RESIZE_SIZ": "300", "SCRAPY_SETTINGS_MODULE": "x", "SCRAPY_PROJECT": "default",
               "OPENIMAGES_SUPERVISOR": "123", "SCRAPY_MYSETTING": "1"}
    assert errors({}, environ=environ) == (
        "environment variable SCRAPY_OPENIMAGES_RESIZE_SIZ sets nothing (Scrapy reads no settings from "
        "SCRAPY_ variables): give -s OPENIMAGES_RESIZE_SIZE=VALUE")
    both = errors({"OPENIMAGES_WORKRS": 1}, environ={"SCRAPY_OPENIMAGES_WORKERS": "2"})
    assert both.startswith("unknown setting OPENIMAGES_WORKRS; did you mean OPENIMAGES_WORKERS?; environment "
                           "variable SCRAPY_OPENIMAGES_WORKERS sets nothing")
    assert errors({}, environ={"SCRAPY_SETTINGS_MODULE": "x", "OPENIMAGES_PROCESS_SHARE": "1/2"}) == ""


def test_refusing_writes_one_error_line_and_returns_2(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("SCRAPY_OPENIMAGE")]:
        monkeypatch.delenv(name)
    assert refuse_unknown_settings(project_settings({"OPENIMAGES_RESIZE_SIZE": 1})) is None
    assert capsys.readouterr().err == ""
    assert refuse_unknown_settings(project_settings({"OPENIMAGES_RESIZE_SIZ": 1})) == 2
    assert capsys.readouterr().err == (
        "ERROR: unknown setting OPENIMAGES_RESIZE_SIZ; did you mean OPENIMAGES_RESIZE_SIZE?\n")


def _environment_names() -> set[str]:
    """Names of ``X_ENV = "OPENIMAGES_…"`` constants: environment variables, not settings."""
    found = set()
    for path in (ROOT / "openimages_crawler").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and any(isinstance(target, ast.Name) and target.id.endswith("_ENV") for target in node.targets)):
                found.add(str(node.value.value))
    return found


def test_every_openimages_name_our_code_sets_or_reads_is_defined() -> None:
    """The supervisor's children, the demo, scrapy db and the fleet set settings of
    their own at run time: each must be in settings.py, or the check would refuse it."""
    pattern = re.compile(r"^OPENIMAGES_[A-Z0-9_]+$")
    used: dict[str, str] = {}
    for path in sorted((ROOT / "openimages_crawler").rglob("*.py")):
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.match(node.value):
                used.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(used) > 20  # the walk found them
    undefined = {name: where for name, where in used.items() if name not in defined_names()}
    assert {name: where for name, where in undefined.items() if name not in _environment_names()} == {}


# --- end to end: real commands ---------------------------------------------------------------------

def _one_error_line(stderr: str) -> str:
    errors_said = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors_said) == 1, stderr[-3000:]
    assert stderr.splitlines()[-1] == errors_said[0] and "Traceback" not in stderr
    return errors_said[0]


def _metadata(tmp_path: Path) -> Path:
    metadata = tmp_path / "images.csv"
    metadata.write_text(",".join(IMAGES_CSV_COLUMNS) + "\n")  # the names are checked before it is read
    return metadata


@pytest.mark.e2e
def test_a_misspelled_setting_stops_the_crawl_before_anything_is_written(tmp_path: Path) -> None:
    _crawl_refused(tmp_path, {"OPENIMAGES_RESIZE_SIZ": "300"}, os.environ)


@pytest.mark.e2e
def test_a_misspelled_setting_in_a_settings_module_from_the_environment_stops_the_crawl(tmp_path: Path) -> None:
    """SCRAPY_SETTINGS_MODULE (the environment's way to a settings module) naming a module with a typo."""
    (tmp_path / "typo_settings.py").write_text("from openimages_crawler.settings import *  # noqa: F403\n"
                                               "OPENIMAGES_RESIZE_SIZ = 300\n")
    _crawl_refused(tmp_path, {}, {**os.environ, "SCRAPY_SETTINGS_MODULE": "typo_settings",
                                   "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])})


def _crawl_refused(tmp_path: Path, settings: dict[str, str], environment: Mapping[str, str]) -> None:
    """The crawl stops with exit 2 and one line naming OPENIMAGES_RESIZE_SIZE, writing nothing."""
    store = tmp_path / "store"
    done = subprocess.run(crawl_command(_metadata(tmp_path), store, settings), cwd=ROOT, env=dict(environment),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _one_error_line(done.stderr) == (
        "ERROR: unknown setting OPENIMAGES_RESIZE_SIZ; did you mean OPENIMAGES_RESIZE_SIZE?")
    assert not store.exists()


@pytest.mark.e2e
def test_a_misspelled_setting_stops_scrapy_resize(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    (source / "a.jpg").write_bytes(b"not read")
    done = subprocess.run([sys.executable, "-m", "scrapy", "resize", "-i", str(source), "-o", str(out), "--size",
                           "64", "-s", "OPENIMAGES_MAX_PIXEL=10"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _one_error_line(done.stderr) == (
        "ERROR: unknown setting OPENIMAGES_MAX_PIXEL; did you mean OPENIMAGES_MAX_PIXELS?")
    assert not out.exists()
