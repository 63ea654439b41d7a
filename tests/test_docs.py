"""The README and the documentation site say only what works.

Every command in a ``bash`` block of README.md and of the site's pages is parsed by the CLI's own
click parser (the command exists, its flags exist and take the values given), every ``make``
target exists, every script named exists; every manifest written in the README validates against
the schema; the sample output of the quickstart matches a fresh run (slow tier).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from pipeline.cli import main
from tools.sample_output import SAMPLE, condense, differences, mask

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in _BLOCK.findall(page.read_text()) if lang == language]


def commands(page: Path) -> list[list[str]]:
    """Each simple command of the page's bash blocks as its words (comments, pipes, && split)."""
    found = []
    for body in blocks(page, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            current: list[str] = []
            for word in words + ["&&"]:
                if word in ("&&", "||", "|", ";"):
                    if current:
                        found.append(current)
                    current = []
                else:
                    current.append(word)
    return found


def check_cli(args: list[str]) -> None:
    """Parse ``cskd-pipeline ARGS`` with click down to the leaf command, as the shell would run it."""
    command: click.Command = main
    parent = None
    name = "cskd-pipeline"
    while True:
        try:
            ctx = command.make_context(name, list(args), parent=parent) if "--help" not in args else None
        except click.BadParameter as exc:
            if "does not exist" in str(exc):  # an example's folder (your images): the flag itself parsed
                return
            raise
        if not isinstance(command, click.Group):
            return
        sub = next(word for word in args if not word.startswith("-"))     # the group takes no values
        assert sub in command.list_commands(click.Context(command)), f"no command {sub!r}"
        rest = args[args.index(sub) + 1:]
        parent, name, command, args = ctx, sub, command.get_command(click.Context(command), sub), rest


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_in_the_docs_parses(page: Path) -> None:
    checked = 0
    for words in commands(page):
        head = words[0]
        if head == "cskd-pipeline":
            check_cli(words[1:])
        elif head == "make":
            targets = [w for w in words[1:] if "=" not in w]
            assert set(targets) <= make_targets(), f"{page.name}: no make target in {' '.join(words)}"
        elif head in ("python", "python3", "bash"):
            script = next(w for w in words[1:] if not w.startswith("-"))
            assert (ROOT / script).is_file(), f"{page.name}: {' '.join(words)} names a missing script"
        else:
            continue
        checked += 1
    if page.name in ("README.md", "quickstart.md"):
        assert checked >= 2


def test_the_walker_rejects_a_flag_that_does_not_exist() -> None:
    with pytest.raises(click.UsageError, match="--no-such-flag"):
        check_cli(["run", "-m", "quickstart", "--no-such-flag"])
    with pytest.raises(AssertionError, match="no command"):
        check_cli(["no-such-command"])
    with pytest.raises(click.UsageError):
        check_cli(["bundle", "verify"])          # its DIR argument is missing


def test_every_manifest_in_the_readme_validates() -> None:
    import stages  # noqa: F401 - registers the stages and back-ends the schema names
    from foundation.manifest import Manifest

    manifests = [yaml.safe_load(body) for body in blocks(ROOT / "README.md", "yaml")]
    manifests = [m for m in manifests if isinstance(m, dict) and "name" in m]
    assert manifests
    for manifest in manifests:
        Manifest.model_validate(manifest)


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_readme_sample_lines_come_from_the_generated_sample() -> None:
    """The README quotes lines of the checked sample, not a copy of its own that could drift."""
    sample = {mask(line, numbers=False) for line in SAMPLE.read_text().splitlines()}
    quoted = [line for body in blocks(ROOT / "README.md", "") for line in body.splitlines()
              if line.startswith("[")]
    assert quoted
    for line in quoted:
        assert mask(line, numbers=False) in sample, f"README line not in {SAMPLE.name}: {line}"


def test_the_sample_comparison_catches_a_changed_id_and_a_missing_line() -> None:
    sample = SAMPLE.read_text().splitlines()
    assert not differences(sample, sample, same_cpu=True)
    edited = [re.sub(r"\b[0-9a-f]{12}\b", "0" * 12, line, count=1) for line in sample]
    assert differences(sample, edited, same_cpu=True)
    assert differences(sample, edited, same_cpu=False)       # the teacher's id still counts
    assert differences(sample, sample[:-1], same_cpu=False)
    timed = [re.sub(r"\b\d+\.\ds\b", "99.9s", line) for line in sample]
    assert not differences(sample, timed, same_cpu=True)     # timings are masked
    raced = [re.sub(r"(fastest at batch \d+:) \S+", r"\1 onnx-fp16", line) for line in sample]
    assert any("fastest" in line for line in sample)
    assert not differences(sample, raced, same_cpu=True)     # so is which back-end won them
    assert condense(["[teacher ] r epoch 1/3 x", "[teacher ] r epoch 2/3 x", "[teacher ] r epoch 3/3 x",
                     "[teacher ] ran"]) == ["[teacher ] r epoch 1/3 x", "...", "[teacher ] ran"]


@pytest.mark.slow  # a whole quickstart run in a fresh folder, as a user would start it (about a minute)
def test_the_sample_output_matches_a_fresh_run(tmp_path: Path) -> None:
    import json

    from tools.sample_output import run_quickstart, same_cpu

    meta = json.loads(SAMPLE.with_suffix(".json").read_text())
    problems = differences(SAMPLE.read_text().splitlines(), run_quickstart(tmp_path), same_cpu=same_cpu(meta))
    assert not problems, "\n".join(problems)


def test_the_readme_study_table_is_the_committed_study() -> None:
    """The table is written by tools/study_table.py from the study.json beside it: no hand copy."""
    from tools.study_table import BLOCK, rewrite, table

    readme = ROOT / "README.md"
    assert BLOCK.search(readme.read_text()), "the README lost its study table"
    assert rewrite(readme) == readme.read_text(), "run `python tools/study_table.py README.md`"
    study = json.loads((ROOT / "docs" / "study-fashion-mnist.json").read_text())
    first = study["summary"][0]
    assert f"| {first['loss']} | {first['n']} | {first['mean']:.2f} |" in table(study)


def test_the_search_tables_are_the_committed_search() -> None:
    """The README's and docs/search.md's search tables are written by tools/search_table.py from the
    committed search.json: no hand copy."""
    from tools.search_table import BLOCK, rewrite

    for page in (ROOT / "README.md", ROOT / "docs" / "search.md"):
        assert BLOCK.search(page.read_text()), f"{page.name} lost its search table"
        assert rewrite(page) == page.read_text(), f"run `python tools/search_table.py {page.relative_to(ROOT)}`"


class _Assets(__import__("html.parser").parser.HTMLParser):
    """What a page makes the browser fetch: scripts, styles, fonts, icons, images, frames."""

    FETCHED_LINKS = {"stylesheet", "preload", "preconnect", "modulepreload", "icon", "manifest", "dns-prefetch"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video") and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and set((a.get("rel") or "").split()) & self.FETCHED_LINKS:
            self.urls.append(a.get("href") or "")


def test_the_built_site_loads_nothing_from_the_network(tmp_path: Path) -> None:
    """Opened from file:// on a machine without internet, every script, style, font and image a
    page loads is in the site: no Google Fonts, no unpkg shim (the offline search needs it)."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "-d", str(site)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    remote = re.compile(r"^(https?:)?//", re.I)
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        parser = _Assets()
        parser.feed(page.read_text())
        assert not [url for url in parser.urls if remote.match(url)], page
        assert "mermaid" not in page.read_text()  # Material loads mermaid from unpkg for a diagram
        if "md-search" in page.read_text():  # a page of the site (not a study page it links to)
            assert "iframe-worker-shim.js" in page.read_text()  # the offline search's shim, bundled
    for sheet in site.rglob("*.css"):  # fonts and images a stylesheet pulls in
        assert not re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])(?:https?:)?//", sheet.read_text()), sheet
    assert (site / "search" / "search_index.js").is_file()  # the index inlined for file://
