"""mkdocs hooks: add the generated reference pages (tools/docs_ref.py) to every build."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).parent))

import docs_ref  # noqa: E402 - mkdocs loads this file by path, not as tools.mkdocs_hooks


def on_files(files, config):
    for uri, make in (("reference/manifest.md", docs_ref.manifest_reference),
                      ("reference/cli.md", docs_ref.cli_reference)):
        files.append(File.generated(config, uri, content=make()))
    return files


def on_page_content(html, page, config, files):
    # click 8.3 marks "no default" with a sentinel that mkdocs-click 0.9 prints as it is
    if page.file.src_uri == "reference/cli.md":
        html = html.replace("<code>Sentinel.UNSET</code>", "-")
    return html
