"""`carryon sweep` tables: read a CSV or JSON-lines table with a header, and substitute `{column}` in
templates (`{{` and `}}` stand for literal braces)."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass

from runtime.errors import InputError

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@dataclass
class Table:
    path: str
    columns: list[str]
    rows: list[dict[str, str]]


def _json_value(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    return json.dumps(v, separators=(",", ":"))


def _check_columns(path: str, columns: list[str]) -> None:
    seen: set[str] = set()
    for c in columns:
        if c == "" or "=" in c or "\0" in c:
            raise InputError(f"{path}: column name {c!r} cannot be an environment variable name")
        if c in seen:
            raise InputError(f"{path}: column {c!r} appears twice in the header")
        seen.add(c)


def _read_jsonl(path: str, text: str) -> Table:
    columns: list[str] = []
    rows: list[dict[str, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: not a JSON object: {e.msg}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: not a JSON object")
        if not columns:
            columns = [str(k) for k in obj]
            _check_columns(path, columns)
        elif set(obj) != set(columns):
            raise InputError(f"{path}:{lineno}: keys {sorted(obj)} differ from the first line's {columns}")
        rows.append({c: _json_value(obj[c]) for c in columns})
    return Table(path, columns, rows)


def _read_csv(path: str, text: str) -> Table:
    lines = text.splitlines(keepends=True)
    try:
        records = list(csv.reader(lines))
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV table: {e}") from None
    numbered = [(i, r) for i, r in enumerate(records, 1) if r and any(f.strip() for f in r)]
    if not numbered:
        raise InputError(f"{path}: empty table (a header line and at least one row are needed)")
    header = [c.strip() for c in numbered[0][1]]
    _check_columns(path, header)
    rows = []
    for lineno, rec in numbered[1:]:
        if len(rec) != len(header):
            raise InputError(f"{path}: record {lineno} has {len(rec)} fields, the header has {len(header)}")
        rows.append(dict(zip(header, rec)))
    return Table(path, header, rows)


def read_table(path: str) -> Table:
    """CSV with a header line, or JSON lines (one object per line; chosen by a .jsonl/.ndjson/.json
    name or a first non-blank character `{`)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"cannot read table {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if "\0" in text:
        raise InputError(f"{path}: not a text table (contains NUL bytes)")
    jsonl = path.endswith((".jsonl", ".ndjson", ".json")) or text.lstrip().startswith("{")
    table = _read_jsonl(path, text) if jsonl else _read_csv(path, text)
    if not table.rows:
        raise InputError(f"{path}: the table has no rows")
    return table


def fields(template: str) -> list[str]:
    """The column names a template refers to, in order."""
    return [m.group(1) for m in _FIELD.finditer(template) if m.group(1) is not None]


def check_template(template: str, columns: list[str], what: str) -> None:
    for name in fields(template):
        if name not in columns:
            known = ", ".join(columns)
            raise InputError(f"{what} {template!r} names {{{name}}}, which is not a column (columns: {known})")


def substitute(template: str, row: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return row[m.group(1)]
    return _FIELD.sub(repl, template)
