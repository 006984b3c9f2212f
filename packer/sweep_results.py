"""`carryon sweep` results: read what each row's script left (DIR/rows/<id>/status, collected, stderr)
and write the results table DIR/results.csv (and DIR/results.json).

results.csv has one physical line per row (line breaks inside a field, e.g. the stderr tail, are written
as `\\n`); results.json holds every field verbatim."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field

from packer.sweep_plan import meta_dir, write_atomic

STDERR_TAIL_LINES = 5
FIXED = ["row", "status", "exit_code", "wall_time_s", "outputs", "missing", "stdout", "stderr", "stderr_tail"]


@dataclass
class RowResult:
    row: str
    vars: dict[str, str]
    status: str                   # "ok" | "failed" | "missing-output" | "not-run"
    exit_code: int | None = None
    wall_time_s: float | None = None
    outputs: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)   # declared outputs (guest patterns) that matched nothing
    stdout: str = ""
    stderr: str = ""
    stderr_tail: str = ""


def read_status(out_dir: str, row: str) -> dict[str, str] | None:
    try:
        with open(os.path.join(meta_dir(out_dir, row), "status"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    st = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return st if "rc" in st and "plan" in st else None


def row_done_ok(out_dir: str, row: str, plan_id: str) -> bool:
    st = read_status(out_dir, row)
    return st is not None and st.get("rc") == "0" and st.get("missing", "0") == "0" and st.get("plan") == plan_id


def _tail(path: str, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-n:])


def row_result(out_dir: str, row: str, values: dict[str, str], plan_id: str,
               fallback_log: str | None = None) -> RowResult:
    m = meta_dir(out_dir, row)
    st = read_status(out_dir, row)
    stdout, stderr = os.path.join(m, "stdout"), os.path.join(m, "stderr")
    if st is None or st.get("plan") != plan_id:
        tail = _tail(fallback_log, STDERR_TAIL_LINES) if fallback_log else ""
        return RowResult(row, values, "not-run", stderr_tail=tail)
    try:
        rc: int | None = int(st["rc"])
    except ValueError:
        rc = None
    try:
        wall = round(max(0.0, float(st["end"]) - float(st["start"])), 3)
    except (KeyError, ValueError):
        wall = None
    outputs, missing = _lines(os.path.join(m, "collected")), _lines(os.path.join(m, "missing"))
    status = "failed" if rc != 0 else "ok" if st.get("missing", "0") == "0" else "missing-output"
    return RowResult(row, values, status, rc, wall, outputs, missing, stdout, stderr,
                     "" if status == "ok" else _tail(stderr, STDERR_TAIL_LINES))


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line for line in f.read().splitlines() if line]
    except OSError:
        return []


def one_line(field: str) -> str:
    """A results.csv field on one physical line: line breaks written as the two characters \\n (\\r),
    so that every row is one line (`column -s, -t < results.csv`, grep, sort); results.json keeps them."""
    return field.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def write_results(out_dir: str, columns: list[str], results: list[RowResult], json_too: bool) -> str:
    names = {c: (f"var.{c}" if c in FIXED else c) for c in columns}
    path = os.path.join(out_dir, "results.csv")
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")  # Unix lines: column, grep, sort, wc -l
    w.writerow([one_line(c) for c in FIXED[:1] + [names[c] for c in columns] + FIXED[1:]])
    for r in results:
        w.writerow([one_line(str(v)) for v in [r.row] + [r.vars.get(c, "") for c in columns] + [
            r.status, "" if r.exit_code is None else r.exit_code,
            "" if r.wall_time_s is None else f"{r.wall_time_s:.3f}",
            ";".join(r.outputs), ";".join(r.missing), r.stdout, r.stderr, r.stderr_tail]])
    write_atomic(path, buf.getvalue())
    if json_too:
        doc = json.dumps([r.__dict__ for r in results], indent=1) + "\n"
        write_atomic(os.path.join(out_dir, "results.json"), doc)
    return path


def summary(results: list[RowResult]) -> str:
    ok = sum(r.status == "ok" for r in results)
    failed = [r for r in results if r.status in ("failed", "missing-output")]
    no_output = sum(r.status == "missing-output" for r in results)
    not_run = sum(r.status == "not-run" for r in results)
    s = f"{len(results)} rows: {ok} ok, {len(failed) - no_output} failed"
    if no_output:
        s += f", {no_output} missing an output"
    if not_run:
        s += f", {not_run} not run"
    if failed:
        shown = ", ".join(f"{r.row} (exit {r.exit_code})" if r.status == "failed"
                          else f"{r.row} (no {(r.missing or ['output'])[0]})" for r in failed[:5])
        s += f" [{shown}{', ...' if len(failed) > 5 else ''}]"
    return s
