"""settings.py is the one place of every default, and README's settings table
says the same."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import openimages_crawler.settings as project_settings_module
from tests.conftest import ROOT

SETTINGS_FILE = ROOT / "openimages_crawler" / "settings.py"


def defaults() -> dict[str, Any]:
    return {name: value for name, value in vars(project_settings_module).items() if name.isupper()}


def readme_table() -> dict[str, str]:
    """Setting name -> the README's default cell, from the table under '## Settings'."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
            table[name] = cells[1]
    return table


def shown(value: Any) -> str:
    """A default as README shows it."""
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def test_every_setting_is_in_the_readme_table_and_every_row_is_a_setting() -> None:
    table, names = readme_table(), set(defaults())
    assert sorted(names - set(table)) == [], "settings missing from README's table"
    assert sorted(set(table) - names) == [], "README rows for settings that settings.py does not have"


def test_the_project_defaults_in_the_readme_are_those_of_settings_py() -> None:
    table = readme_table()
    for name, value in defaults().items():
        if name.startswith("OPENIMAGES_") or name == "IMAGES_STORE":
            assert table[name] == shown(value), name


def test_every_setting_has_a_comment_line_above_it() -> None:
    lines = SETTINGS_FILE.read_text(encoding="utf-8").splitlines()
    module = ast.parse("\n".join(lines))
    for node in module.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            above = lines[node.lineno - 2].strip()
            assert above.startswith("#"), f"line {node.lineno}: no comment above it"


def test_no_openimages_setting_is_read_with_a_literal_fallback() -> None:
    """Defaults live in settings.py only: `settings.get("OPENIMAGES_X", 3)` would be a second one."""
    pattern = re.compile(r"""\.get\w*\(\s*["'](?:OPENIMAGES_\w+|IMAGES_STORE|LOGSTATS_INTERVAL|DOWNLOAD_MAXSIZE)["']\s*,""")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "openimages_crawler").rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_every_option_of_our_commands_says_its_default() -> None:
    """``--help`` of each custom command gives every option's meaning and its
    default (or says it is required); Scrapy's global options are its own."""
    import argparse
    import importlib
    import pkgutil

    from scrapy.commands import ScrapyCommand
    from scrapy.settings import Settings

    import openimages_crawler.commands as package

    def options(command: ScrapyCommand) -> dict[str, str | None]:
        command.settings = Settings()
        parser = argparse.ArgumentParser()
        command.add_options(parser)
        return {action.option_strings[-1]: action.help for action in parser._actions if action.option_strings}

    class Bare(ScrapyCommand):
        def short_desc(self) -> str:
            return ""

        def run(self, args: list[str], opts: argparse.Namespace) -> None:
            """Never run."""

    base = options(Bare())
    checked = 0
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        command_class = getattr(module, "Command", None)
        if command_class is None or info.name == "crawl":  # crawl: Scrapy's own options
            continue
        for option, text in options(command_class()).items():
            if option in base:
                continue
            assert text and ("default" in text or "required" in text), (info.name, option, text)
            checked += 1
    assert checked >= 20


def test_readme_names_the_registrys_formats() -> None:
    """README's tables list the formats outputs/formats.py registers, each once, in its order."""
    from openimages_crawler.outputs.formats import CONTAINERS, LABEL_FORMATS, PACKED_CONTAINERS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for setting in ("OPENIMAGES_RESIZE_CONTAINER", "OPENIMAGES_ORIGINALS_CONTAINER"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{setting}`"))
        described = row.split("|")[3].split("(see")[0]
        assert tuple(re.findall(r"`(\w+)`", described)) == CONTAINERS, row
    export = re.search(r"\| `-a export=([\w,]+)`", text)
    assert export is not None and tuple(export[1].split(",")) == LABEL_FORMATS
    pack = re.search(r"scrapy pack -i STORE_OR_TREE -o OUT --container ([\w|]+)", text)
    assert pack is not None and tuple(pack[1].split("|")) == PACKED_CONTAINERS
