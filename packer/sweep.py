"""`carryon sweep`: run an archive over a table of variables, locally (a pool of N runs) or as one Slurm
job array. Table reading: sweep_table; per-row scripts: sweep_plan; local pool: sweep_local; Slurm:
sweep_slurm; results table: sweep_results."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass, field

from packer.sources import sha256_path
from packer.sweep_local import run_pool
from packer.sweep_plan import (
    DEFAULT_GUEST_DIR,
    SweepSpec,
    meta_dir,
    plan_rows,
    render_script,
    script_plan_id,
    write_atomic,
)
from packer.sweep_progress import Progress
from packer.sweep_results import RowResult, row_done_ok, row_result, summary, write_results
from packer.sweep_slurm import find_sbatch, job_active, submit, task_log, wait_jobs
from packer.sweep_table import read_table
from runtime.errors import CarryonError, InputError

USAGE = f"""usage: carryon sweep ARCHIVE --params TABLE [OPTIONS] [--] ARG...
       carryon sweep --collect DIR [--json]

Runs ARCHIVE once per row of TABLE (CSV with a header line, or JSON lines). In ARG... and in the values
of --input/--output, {{column}} is replaced by the row's value ({{{{ and }}}} are literal braces); every
column is also set in the guest's environment, with CARRYON_ROW (the row id: 0, 1, ...) and
CARRYON_RUN_DIR. Each row gets a run directory DIR/<row>/, bound into the guest at --guest-dir; it is
the row's working directory (so relative names, e.g. an --input's, work), unless ARG... starts with a
--carryon-workdir archive option.

options:
  --params TABLE         the table of variables (one run per row)
  -j, --jobs N           local runs at a time (default: CPU count); with --slurm: array tasks at a time
  -o, --out DIR          sweep directory (default: TABLE's name without extension + .sweep)
  --input HOST[:GUEST]   copy HOST into the row before the run; GUEST relative to the run dir
                         (default: the run dir, HOST's name); an absolute GUEST elsewhere is bound there
  --output GUEST[:HOST]  collect GUEST (globs allowed) after the run, also when it fails: into DIR/<row>/
                         by default, or to HOST (a directory if it ends with / or GUEST has a glob). A
                         GUEST outside the run dir is written into a per-row empty directory bound over
                         its directory (e.g. /out for /out/result.txt), so rows never share files.
                         A row whose GUEST matched nothing fails (status missing-output)
  --allow-missing-output a declared --output that matched nothing does not fail the row
  --guest-dir PATH       guest path of the row's run directory (default: {DEFAULT_GUEST_DIR})
  --state-per-row        keep each row's changes to the image in DIR/rows/<row>/state (every row
                         starts from the image as packed either way; --resume reruns keep them)
  --json                 also write DIR/results.json
  --resume               keep rows already recorded as successful in DIR, run the others
  --slurm                submit one Slurm job array instead (task N runs DIR/rows/N/run.sh)
  --sbatch ARG           pass ARG to sbatch (repeatable), e.g. --sbatch=--time=10 --sbatch=-pshort
  --wait                 with --slurm: wait for the array to end and write the results
  --collect DIR          write DIR's results table from what its rows left (after a --slurm sweep)

Results: DIR/results.csv, one line per row (row, variables, status: ok, failed, missing-output or
not-run, exit code, wall time, collected outputs, missing outputs, stdout and stderr files, last stderr
lines of failed rows with line breaks written as \\n); --json: DIR/results.json, the same verbatim.
A refused submission (--slurm) removes the sweep directory it created.

Exit status: 0 every row succeeded; 1 some row failed or did not run (a result: see results.csv);
125 the sweep itself could not run (bad usage, table or archive, I/O error, sbatch refused the job);
128+N stopped by signal N (Ctrl-C: 130; --resume runs the rest).
"""


class UsageError(InputError):
    """Bad usage of `carryon sweep` (exit 125, like every failure of carryon's own)."""


@dataclass
class Options:
    archive: str = ""
    params: str = ""
    jobs: int | None = None
    out: str = ""
    inputs: list[tuple[str, str | None]] = field(default_factory=list)
    outputs: list[tuple[str, str | None]] = field(default_factory=list)
    guest_dir: str = DEFAULT_GUEST_DIR
    json: bool = False
    resume: bool = False
    allow_missing_output: bool = False
    state_per_row: bool = False
    slurm: bool = False
    sbatch: list[str] = field(default_factory=list)
    wait: bool = False
    collect: str = ""
    args: list[str] = field(default_factory=list)


_VALUED = {"--params", "--jobs", "-j", "--out", "-o", "--input", "--output", "--guest-dir", "--sbatch",
           "--collect"}
_FLAGS = {"--json", "--resume", "--slurm", "--wait", "--allow-missing-output", "--state-per-row"}


def parse_args(argv: list[str]) -> Options | None:
    o = Options()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            o.args = argv[i + 1:]
            break
        if a in ("-h", "--help"):
            return None
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in _VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value")
                i += 1
                value = argv[i]
            _set(o, name, value)
        elif name in _FLAGS and not eq:
            setattr(o, name[2:].replace("-", "_"), True)
        elif a.startswith("-") and not o.archive and a != "-":
            raise UsageError(f"unknown option {a} (try: carryon sweep --help)")
        elif not o.archive and not o.collect:
            o.archive = a
        else:
            o.args = argv[i:]  # the first argument after ARCHIVE starts the command
            break
        i += 1
    return o


def _set(o: Options, name: str, value: str) -> None:
    if name == "--params":
        o.params = value
    elif name in ("--jobs", "-j"):
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"--jobs wants a positive number, not {value!r}")
        o.jobs = int(value)
    elif name in ("--out", "-o"):
        o.out = value
    elif name == "--input":
        host, sep, guest = value.rpartition(":") if ":" in value else (value, "", "")
        if not host:
            raise UsageError(f"--input wants HOST[:GUEST], not {value!r}")
        o.inputs.append((host, guest or None))
    elif name == "--output":
        guest, _, host = value.partition(":")
        if not guest:
            raise UsageError(f"--output wants GUEST[:HOST], not {value!r}")
        o.outputs.append((guest, host or None))
    elif name == "--guest-dir":
        if not value.startswith("/") or value.rstrip("/") == "" or ":" in value:
            raise UsageError(f"--guest-dir wants an absolute guest path below /, not {value!r}")
        o.guest_dir = "/" + value.strip("/")
    elif name == "--sbatch":
        o.sbatch.append(value)
    elif name == "--collect":
        o.collect = value


def _install_archive(src: str, dest: str, digest: str) -> None:
    """The archive is copied once into the sweep directory (compute nodes may not see the original)."""
    if os.path.isfile(dest) and os.path.getsize(dest) == os.path.getsize(src) and sha256_path(dest) == digest:
        return
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".tmp"
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except OSError as e:  # name the copy, not its temporary file
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CarryonError(f"cannot copy the archive to {dest}: {e.strerror or e}") from None


def _load_state(out_dir: str) -> dict | None:
    try:
        with open(os.path.join(out_dir, "sweep.json"), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InputError(f"{out_dir}/sweep.json is unreadable: {e}") from None


def _save_state(out_dir: str, state: dict) -> None:
    write_atomic(os.path.join(out_dir, "sweep.json"), json.dumps(state, indent=1) + "\n")


def _results(out_dir: str, state: dict) -> list[RowResult]:
    jobs = state.get("slurm_jobs", [])
    out = []
    for r in state["rows"]:
        log = None
        if jobs:  # a row that left no status: show the end of its Slurm task log instead
            log = task_log(out_dir, jobs[-1], r["row"])
        out.append(row_result(out_dir, r["row"], r["vars"], r["plan"], log))
    return out


def _finish(out_dir: str, state: dict, json_too: bool, note: str = "") -> int:
    results = _results(out_dir, state)
    path = write_results(out_dir, state["columns"], results, json_too)
    sys.stderr.write(f"carryon sweep: {summary(results)}{note}; results: {path}\n")
    return 0 if all(r.status == "ok" for r in results) else 1


def _first_missing(path: str) -> str | None:
    """The outermost directory of `path` (itself included) that does not exist yet, None if it exists."""
    top = None
    while not os.path.lexists(path):
        top, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return top


def _check_sweep_dir(out_dir: str) -> None:
    """The sweep directory holds what we execute (each row's run.sh, the archive's copy): refuse one
    that another user owns or that everyone can write (a planted `/tmp/t.sweep`, or a symlink to
    someone else's directory). Group-writable is the user's choice (a project directory)."""
    try:
        st = os.stat(out_dir)
    except OSError as e:
        raise InputError(f"{out_dir}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{out_dir} is not a directory; choose another --out")
    if st.st_uid != os.getuid():
        raise InputError(f"{out_dir} is owned by uid {st.st_uid}, not {os.getuid()}: another user's "
                         "directory is never used for a sweep; choose another --out")
    if st.st_mode & 0o002:
        raise InputError(f"{out_dir} is writable by everyone (mode {st.st_mode & 0o7777:04o}): "
                         "choose another --out or chmod o-w it")


def _remove_new_sweep(out_dir: str, created: str | None) -> str:
    """Undo a sweep directory this invocation made (`created`: what it created, from _first_missing;
    None: DIR existed empty, its contents go). Returns what was done, for the error line."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return f"removed {created}"
    for name in os.listdir(out_dir):
        p = os.path.join(out_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)
    return f"emptied {out_dir} again"


def _default_out(params: str) -> str:
    stem = os.path.basename(params.rstrip("/")) or "table"
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    return stem + ".sweep"


def collect(o: Options) -> int:
    out_dir = os.path.abspath(o.collect)
    state = _load_state(out_dir)
    if state is None:
        raise InputError(f"{out_dir} holds no sweep (no sweep.json)")
    active = [j for j in state.get("slurm_jobs", []) if job_active(j)]
    note = f" (Slurm job {', '.join(active)} still running)" if active else ""
    return _finish(out_dir, state, o.json or state.get("json", False), note)


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except OSError as e:  # disk full, permissions, ...: one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        raise CarryonError(f"{where}{e.strerror or e}") from None


def _main(argv: list[str]) -> int:
    o = parse_args(argv)
    if o is None:
        sys.stdout.write(USAGE)
        return 0
    if o.collect:
        if o.archive or o.params or o.args:
            raise UsageError("--collect DIR takes no archive, table or command")
        return collect(o)
    if not o.archive:
        raise UsageError("missing ARCHIVE (usage: carryon sweep ARCHIVE --params TABLE [--] ARG...)")
    if not o.params:
        raise UsageError("missing --params TABLE")
    if (o.wait or o.sbatch) and not o.slurm:
        raise UsageError("--wait and --sbatch go with --slurm")

    # everything that can be refused is refused before anything runs or is written
    table = read_table(o.params)
    archive = os.path.abspath(o.archive)
    if not os.path.isfile(archive):
        raise InputError(f"archive {o.archive}: no such file")
    if not os.access(archive, os.R_OK):
        raise InputError(f"archive {o.archive}: not readable")
    sbatch = find_sbatch() if o.slurm else ""
    out_dir = os.path.abspath(o.out or _default_out(o.params))
    if os.path.lexists(out_dir):
        _check_sweep_dir(out_dir)
    state = _load_state(out_dir) if os.path.isdir(out_dir) else None
    if state is not None and not o.resume:
        raise InputError(f"{out_dir} holds an earlier sweep: add --resume to continue it, or choose another --out")
    if state is None and os.path.isdir(out_dir) and os.listdir(out_dir):
        raise InputError(f"{out_dir} is not empty and holds no sweep; choose another --out")
    if state is not None:
        busy = [j for j in state.get("slurm_jobs", []) if job_active(j)]
        if busy:
            raise InputError(f"Slurm job {busy[0]} of this sweep is still running; wait for it or scancel it")

    digest = sha256_path(archive)
    spec = SweepSpec(os.path.join(out_dir, "archive", os.path.basename(archive)), digest, o.args,
                     o.inputs, o.outputs, o.guest_dir, out_dir, os.getcwd(), table,
                     allow_missing_output=o.allow_missing_output, state_per_row=o.state_per_row)
    plans = plan_rows(spec)

    # a sweep this invocation creates is removed again if it fails before any row ran or was submitted
    created = _first_missing(out_dir) if state is None else None
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {out_dir}: {e.strerror or e}") from None
    _check_sweep_dir(out_dir)      # again, now that it exists; refused before the try: never removed
    try:
        _install_archive(archive, spec.archive, digest)
        scripts: dict[str, str] = {}
        rows_state: list[dict] = []
        for p in plans:
            text = render_script(spec, p)
            os.makedirs(p.meta_dir, exist_ok=True)
            path = os.path.join(p.meta_dir, "run.sh")
            write_atomic(path, text, 0o755)
            scripts[p.row] = path
            rows_state.append({"row": p.row, "vars": p.vars, "plan": script_plan_id(text)})
        new_state = {"version": 1, "table": os.path.abspath(o.params), "columns": table.columns,
                     "archive": spec.archive, "rows": rows_state, "json": o.json,
                     "slurm_jobs": (state or {}).get("slurm_jobs", []) if o.slurm else []}
        _save_state(out_dir, new_state)

        todo = [r["row"] for r in rows_state
                if not (o.resume and row_done_ok(out_dir, r["row"], r["plan"]))]
        job_id = submit(sbatch, out_dir, [int(r) for r in todo], o.jobs, o.sbatch) if o.slurm and todo else ""
    except (CarryonError, OSError, KeyboardInterrupt) as e:
        if state is not None:  # an earlier sweep (--resume): keep it as it is
            raise
        undone = _remove_new_sweep(out_dir, created)
        if isinstance(e, KeyboardInterrupt):
            raise
        msg = str(e) if isinstance(e, CarryonError) else \
            f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
        raise CarryonError(f"{msg}; {undone}") from None
    skipped = len(rows_state) - len(todo)
    note = f" ({len(todo)} run now, {skipped} done before)" if o.resume else ""

    if o.slurm:
        if not todo:
            return _finish(out_dir, new_state, o.json, note)
        new_state["slurm_jobs"] = new_state["slurm_jobs"] + [job_id]
        _save_state(out_dir, new_state)
        if not o.wait:
            print(job_id)
            sys.stderr.write(f"carryon sweep: submitted job array {job_id} ({len(todo)} tasks); "
                             f"`carryon sweep --collect {out_dir}` writes the results once it ends\n")
            return 0
        progress = Progress(len(rows_state), skipped)
        plan_of = {x["row"]: x["plan"] for x in rows_state}

        def poll() -> None:
            states = [row_result(out_dir, r, {}, plan_of[r]).status for r in todo]
            progress.set_counts(states.count("ok"), len(states) - states.count("ok") - states.count("not-run"))

        try:
            wait_jobs([job_id], poll if progress.enabled else (lambda: None))
        except KeyboardInterrupt:
            progress.close()
            sys.stderr.write(f"carryon sweep: stopped waiting; job {job_id} keeps running "
                             f"(scancel {job_id} stops it; `carryon sweep --collect {out_dir}` collects)\n")
            _finish(out_dir, new_state, o.json, note)
            return 130
        progress.close()
        return _finish(out_dir, new_state, o.json, note)

    jobs = o.jobs or len(os.sched_getaffinity(0))
    progress = Progress(len(rows_state), skipped)
    outcome = run_pool({r: scripts[r] for r in todo}, jobs, progress)
    progress.close()
    for r in outcome.interrupted:  # a stopped row is not a result: --resume runs it again
        for name in ("status", "status.tmp"):
            try:
                os.unlink(os.path.join(meta_dir(out_dir, r), name))
            except FileNotFoundError:
                pass
    if outcome.signal:
        _finish(out_dir, new_state, o.json, note + " - interrupted; add --resume to run the rest")
        return 128 + outcome.signal
    return _finish(out_dir, new_state, o.json, note)
