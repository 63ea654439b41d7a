"""The docs' search tables and plot, written from a committed search.json so they cannot disagree.

    python tools/search_table.py README.md docs/search.md   # rewrite every <!-- search-table: PATH --> block
    python tools/search_table.py --plot docs/search-cifar10.json docs/search-cifar10.png

A block is the lines between ``<!-- search-table: docs/x.json -->`` and ``<!-- /search-table -->``;
a test checks that each block is what this script writes from its JSON (the table `search` prints).
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- search-table: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /search-table -->)", re.S)


def rewrite(page: Path) -> str:
    from pipeline.search_page import markdown

    def body(match: re.Match) -> str:
        document = json.loads((ROOT / match["path"]).read_text())
        return f"{match[1]}{markdown(document)}\n{match[4]}"

    return BLOCK.sub(body, page.read_text())


def main(argv: list[str]) -> None:
    if argv[:1] == ["--plot"]:
        from pipeline.search_page import pareto_plot

        source, target = Path(argv[1]), Path(argv[2])
        target.write_bytes(base64.b64decode(pareto_plot(json.loads(source.read_text()))))
        return
    for name in argv:
        page = Path(name)
        page.write_text(rewrite(page))


if __name__ == "__main__":
    main(sys.argv[1:])
