"""tools/wrap_long_lines.py (issue 35's E501): long lines wrapped, the code's values unchanged, and
a docstring's preformatted lines (indented past its text) left as they are."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SOURCE = '''"""A module.

    an example line indented past the docstring's text is kept as it is, however long it is: xxxxxxxxxxxx
"""


def f(x):  # a comment at the end of a long line, which pushes it past the width of a hundred characters and more
    return dict(name="a string literal inside a call that is far too long for one line of this module", x=x, y=x)


MESSAGE = f"a string alone at the end of a statement, {1 + 1} placeholders and all: it needs parentheses to wrap"
'''


def test_long_lines_are_wrapped_and_the_values_stay_the_same(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(SOURCE)
    result = subprocess.run([sys.executable, str(REPO / "tools" / "wrap_long_lines.py"), str(module)],
                            capture_output=True, text=True, timeout=120)
    text = module.read_text()
    preformatted = SOURCE.splitlines()[2]
    assert len(preformatted) > 100 and preformatted in text
    assert [line for line in text.splitlines() if len(line) > 100] == [preformatted]
    assert result.returncode == 1 and f"{module}:3" in result.stdout  # the one left, for a hand edit
    before, after = {}, {}
    exec(compile(SOURCE, "before", "exec"), before)  # noqa: S102 - the test's own source
    exec(compile(text, "after", "exec"), after)  # noqa: S102
    assert after["f"](1) == before["f"](1) and after["MESSAGE"] == before["MESSAGE"]
    assert after["__doc__"].split() == before["__doc__"].split()
    assert all(len(SOURCE.splitlines()[row]) > 100 for row in (6, 7, 10))  # the three cases are long
    assert "# a comment at the end of a long line" in text.split("def f")[0]  # moved above the line
