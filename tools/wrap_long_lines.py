"""Bring a package's lines within the width (issue 35's E501), keeping what the code does.

    python tools/wrap_long_lines.py pipeline [more folders or files]

Three passes over the lines ruff reports over 100 characters: (1) a comment at the end of a long
line moves above it; (2) each statement holding a long line is formatted by ``ruff format
--range`` (only those statements: the rest of the file keeps its hand layout); (3) what ruff
leaves long is wrapped: comments, docstring lines (not the ones indented past the docstring's
text, which are preformatted examples or tables), and string literals, split into implicitly
concatenated pieces (a string alone at the end of a statement gets parentheses). A file whose
AST changes otherwise (string constants compared with their whitespace collapsed) is left as it
was. Lines it cannot wrap (a URL, an example command) are listed for a hand edit. Modules may pass
300 lines afterwards: split them.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import textwrap
import tokenize
from collections import defaultdict
from pathlib import Path

WIDTH = 100
RUFF = str(Path(sys.executable).parent / "ruff")


def long_rows(paths):
    out = subprocess.run([RUFF, "check", "--isolated", "--select", "E501", "--line-length", str(WIDTH), "--output-format",
                          "json", *paths], capture_output=True, text=True).stdout
    rows = defaultdict(set)
    for d in json.loads(out or "[]"):
        rows[d["filename"]].add(d["location"]["row"])
    return rows


def normalized(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = " ".join(node.value.split())
    return ast.dump(tree)


def split_at(text: str, limit: int, fstring: bool) -> int | None:
    """An index just after a space in ``text`` (string body), at most ``limit``, outside {...}."""
    depth, best, i = 0, None, 0
    while i < len(text) and i < limit:
        c = text[i]
        if fstring and c in "{}":
            if i + 1 < len(text) and text[i + 1] == c:
                i += 2
                continue
            depth += 1 if c == "{" else -1
        elif c == "\\":
            i += 2
            continue
        elif c == " " and depth == 0 and i + 1 < limit:
            best = i + 1
        i += 1
    return best if best and best > 10 else None


def parenthesized(line: str, tok) -> str | None:
    """A string that ends its line outside brackets (``x = "..."``, ``return f"..."``): in
    parentheses, its pieces one per line."""
    if line[tok.end[1]:].strip():
        return None
    indent = len(line) - len(line.lstrip())
    inner = " " * (indent + 4) + tok.string
    fake = tokenize.TokenInfo(tok.type, tok.string, (1, indent + 4), (1, indent + 4 + len(tok.string)), inner)
    body = wrap_string_token(inner, fake, 1)
    if body is None:
        return None
    return line[:tok.start[1]] + "(\n" + body + "\n" + " " * indent + ")"


def wrap_string_token(line: str, tok, depth: int) -> str | None:
    """Split the one-line string token ``tok`` on ``line`` into pieces that fit."""
    if tok.start[0] != tok.end[0]:
        return None
    if depth == 0:
        return parenthesized(line, tok)
    m = re.match(r"([rRbBuUfF]*)(['\"])", tok.string)
    if not m or tok.string.startswith(m.group(1) + m.group(2) * 3):  # a triple-quoted string
        return None
    prefix, quote = m.group(1), m.group(2)
    body = tok.string[len(prefix) + 1:-1]
    fstring = "f" in prefix.lower()
    col = tok.start[1]
    head, tail = line[:col], line[tok.end[1]:]
    pieces, first = [], True
    while True:
        room = WIDTH - (len(head) if first else col) - len(prefix) - 2
        if len(body) <= room - len(tail.rstrip()):
            pieces.append(body)
            break
        at = split_at(body, room, fstring)
        if at is None:
            return None
        pieces.append(body[:at])
        body, first = body[at:], False
    def lit(piece):
        p = prefix if ("{" in piece or not fstring) else prefix.replace("f", "").replace("F", "")
        return f"{p}{quote}{piece}{quote}"
    lines = [head + lit(pieces[0])] + [" " * col + lit(p) for p in pieces[1:]]
    lines[-1] += tail
    if len(lines[-1]) > WIDTH:
        return None
    return "\n".join(lines)


def wrap_text_line(line: str, comment: bool, width: int = WIDTH) -> str:
    indent = len(line) - len(line.lstrip())
    if comment:
        text = line.strip()[1:].strip()
        return "\n".join(textwrap.wrap(text, WIDTH, initial_indent=" " * indent + "# ",
                                       subsequent_indent=" " * indent + "# ", break_long_words=False,
                                       break_on_hyphens=False))
    return "\n".join(textwrap.wrap(line.strip(), width, initial_indent=" " * indent,
                                   subsequent_indent=" " * indent, break_long_words=False,
                                   break_on_hyphens=False))


def string_groups(tokens):
    """Runs of adjacent string tokens (implicit concatenation), each a list of tokens."""
    groups, current = [], []
    for t in tokens:
        if t.type == tokenize.STRING:
            current.append(t)
        elif t.type == tokenize.NL and current:  # a string continued on the next line
            continue
        else:
            if current:
                groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def reflow_group(lines: list[str], group) -> tuple[int, int, list[str]] | None:
    """The group's rows replaced by its joined text split again to fit, pieces aligned under the
    first one: (first row, last row, new lines), or None when the pieces cannot be joined."""
    kinds = set()
    bodies = []
    for t in group:
        if t.start[0] != t.end[0]:
            return None
        m = re.match(r"([rRbBuUfF]*)(['\"])", t.string)
        if not m or t.string[len(m.group(1)):].startswith(m.group(2) * 3):
            return None
        kinds.add((m.group(1).lower().replace("u", ""), m.group(2)))
        bodies.append(t.string[len(m.group(1)) + 1:-1])
    rows = [t.start[0] for t in group]
    if len(kinds) != 1 or len(set(rows)) != len(rows):
        return None
    (prefix, quote), = kinds
    if "b" in prefix or "r" in prefix:
        return None
    first, last = group[0], group[-1]
    # every token but the first must stand alone on its line (a continuation line)
    for t in group[1:]:
        text = lines[t.start[0] - 1]
        if text[:t.start[1]].strip() or (t is not last and text[t.end[1]:].strip()):
            return None
    head = lines[first.start[0] - 1][:first.start[1]]
    tail = lines[last.end[0] - 1][last.end[1]:]
    if lines[first.start[0] - 1][first.end[1]:].strip() and len(group) > 1:
        return None
    body = "".join(bodies)
    fstring = "f" in prefix
    col = first.start[1]
    pieces, room_first = [], WIDTH - len(head) - len(prefix) - 2
    room = WIDTH - col - len(prefix) - 2
    current_room = room_first
    while len(body) > current_room - len(tail.rstrip()):
        at = split_at(body, current_room, fstring)
        if at is None:
            return None
        pieces.append(body[:at])
        body, current_room = body[at:], room
    pieces.append(body)
    def lit(piece):
        keep_f = fstring and "{" in piece
        return f"{'f' if keep_f else ''}{quote}{piece}{quote}"
    out = [head + lit(pieces[0])] + [" " * col + lit(x) for x in pieces[1:]]
    out[-1] += tail
    if any(len(x) > WIDTH for x in out):
        return None
    return first.start[0], last.end[0], out


def docstring_rows(source: str, *, every_row: bool = False) -> set[int]:
    """The rows of every docstring that may be rewrapped: its first row and those indented no
    deeper than its text (deeper ones are preformatted examples or tables, kept as they are);
    with ``every_row``, all of its rows."""
    lines, rows = source.split("\n"), set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        first = node.body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            continue
        span = range(first.lineno, first.end_lineno + 1)
        indents = {r: len(lines[r - 1]) - len(lines[r - 1].lstrip()) for r in span if lines[r - 1].strip()}
        base = indents[first.lineno]  # the text's own indentation: the opening quotes' (PEP 257)
        rows.update(r for r in span if every_row or r == first.lineno or indents.get(r, 0) <= base)
    return rows


def bracket_depth(tokens: list[tokenize.TokenInfo], token: tokenize.TokenInfo) -> int:
    """How many brackets are open where ``token`` starts."""
    depth = 0
    for t in tokens:
        if t.start >= token.start:
            break
        if t.type == tokenize.OP and t.string in "([{":
            depth += 1
        elif t.type == tokenize.OP and t.string in ")]}":
            depth -= 1
    return depth


def fix_file(path: str, rows: set[int]) -> tuple[int, int]:
    """Wrap the long ``rows`` of ``path``: (rows wrapped, rows given); -1 wrapped when the file's AST
    would change (then it is not written)."""
    source = Path(path).read_text()
    before = normalized(ast.parse(source))
    lines = source.split("\n")
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    docstrings = docstring_rows(source)
    fixed = 0
    if not COMMENTS_ONLY:
        done = set()
        for group in sorted(string_groups(tokens), key=lambda g: -g[0].start[0]):
            span = range(group[0].start[0], group[-1].end[0] + 1)
            if len(group) < 2 or not any(r in rows for r in span):
                continue
            result = reflow_group(lines, group)
            if result:
                start, end, new = result
                lines[start - 1:end] = new
                done.update(r for r in span if r in rows)
                fixed += len([r for r in span if r in rows])
        if done:  # rows moved: recompute the rest from the edited text
            text = "\n".join(lines)
            try:
                if normalized(ast.parse(text)) != before:
                    return -1, len(rows)
            except SyntaxError:
                return 0, len(rows)
            Path(path).write_text(text)
            return fixed, len(rows)
    for row in sorted(rows, reverse=True):
        line = lines[row - 1]
        on_line = [t for t in tokens if t.start[0] <= row <= t.end[0]]
        new = None
        comment = [t for t in on_line if t.type == tokenize.COMMENT and t.start[0] == row]
        strings = [t for t in on_line if t.type == tokenize.STRING]
        if line.lstrip().startswith("#"):
            new = wrap_text_line(line, comment=True)
        elif comment and (COMMENTS_ONLY or len(line[:comment[0].start[1]].rstrip()) <= WIDTH):
            code = line[:comment[0].start[1]].rstrip()
            indent = len(line) - len(line.lstrip())
            new = wrap_text_line(" " * indent + comment[0].string, comment=True) + "\n" + code
        elif COMMENTS_ONLY:
            new = None
        elif row in docstrings:
            # a docstring's line: its words wrapped at the line's own indentation (whitespace only)
            stripped = line.rstrip()
            closing = ""
            for q in ('"""', "'''"):
                if stripped.endswith(q) and stripped.strip() != q and not (stripped.lstrip().startswith(q) and stripped.count(q) == 1):
                    stripped, closing = stripped[:-3], q
            new = wrap_text_line(stripped, comment=False, width=WIDTH - len(closing)) + closing
            if any(len(x) > WIDTH for x in new.split("\n")):
                new = None
        elif strings:
            one_line = sorted((t for t in strings if t.start[0] == row == t.end[0]), key=lambda t: -len(t.string))
            for token in one_line:  # the longest first
                new = wrap_string_token(line, token, bracket_depth(tokens, token))
                if new:
                    break
        if new and new != line:
            lines[row - 1: row] = new.split("\n")
            fixed += 1
    text = "\n".join(lines)
    try:
        after = normalized(ast.parse(text))
    except SyntaxError:
        return 0, len(rows)
    if after != before:
        return -1, len(rows)
    Path(path).write_text(text)
    return fixed, len(rows)


COMMENTS_ONLY = False


def format_statements(paths: list[str]) -> None:
    """``ruff format --range`` on each statement that holds a long line, bottom up."""
    for path, rows in long_rows(paths).items():
        strings = docstring_rows(Path(path).read_text(), every_row=True)  # ruff would reindent them
        for row in sorted(rows - strings, reverse=True):
            subprocess.run([RUFF, "format", "--line-length", str(WIDTH), f"--range={row}:{row}", path],
                           capture_output=True, check=False)


def wrap(paths: list[str]) -> list[str]:
    """The three passes; the lines still too long, as ``path:row``."""
    global COMMENTS_ONLY
    COMMENTS_ONLY = True
    for path, rows in long_rows(paths).items():
        fix_file(path, rows)
    COMMENTS_ONLY = False
    format_statements(paths)
    for _ in range(3):  # a file whose string groups were reflowed is read again for its other lines
        for path, rows in long_rows(paths).items():
            if fix_file(path, rows)[0] < 0:
                print(f"{path}: left as it was (its AST would change)")
    return [f"{path}:{row}" for path, rows in long_rows(paths).items() for row in sorted(rows)]


if __name__ == "__main__":
    left = wrap(sys.argv[1:])
    print("\n".join(left) or "every line within the width")
    sys.exit(1 if left else 0)
