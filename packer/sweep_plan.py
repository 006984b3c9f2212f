"""`carryon sweep` row plans: what each row binds, stages, runs and collects, written out as one POSIX sh
script per row (`DIR/rows/<id>/run.sh`). The same script runs a row in the local pool, in a Slurm array
task (compute nodes need no Python) and by hand, so everything a row does is decided here: it runs with
its run directory as working directory (`--carryon-workdir` in the user's ARGs wins), and a declared
output that matched nothing fails it (exit 1 when the command exited 0; `missing=N` in its status file)
unless SweepSpec.allow_missing_output.

Layout of a sweep directory DIR:
  DIR/sweep.json            what was planned (table, rows, Slurm job ids)
  DIR/archive/NAME          the archive, copied once
  DIR/<id>/                 the row's run directory, bound into the guest (default /carryon-run)
  DIR/rows/<id>/run.sh      the row's script; stdout, stderr, status, collected, missing: what it left
  DIR/rows/<id>/in/, out/   staged inputs bound outside the run dir; per-row dirs bound at output dirs
  DIR/results.csv (.json)   the results table
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field

from packer.sweep_table import Table, check_template, substitute
from runtime import cache
from runtime.errors import InputError

DEFAULT_GUEST_DIR = "/carryon-run"
PLAN_PLACEHOLDER = "@@PLAN@@"
_GLOB = re.compile(r"[*?\[]")
_SAFE_BRACKET = re.compile(r"\[!?\^?[A-Za-z0-9._-]+\]")


@dataclass
class SweepSpec:
    archive: str                       # absolute path of the archive as run (the copy in DIR/archive/)
    archive_sha256: str
    args: list[str]                    # templates
    inputs: list[tuple[str, str | None]]   # (HOST, GUEST) templates
    outputs: list[tuple[str, str | None]]  # (GUEST, HOST) templates
    guest_dir: str
    out_dir: str                       # absolute
    cwd: str                           # where relative host paths are resolved
    table: Table
    allow_missing_output: bool = False  # a declared output that matched nothing does not fail the row
    state_per_row: bool = False        # keep each row's changes to the image in DIR/rows/N/state


@dataclass
class Stage:
    src: str                 # host path to copy
    dest: str                # host path created by the copy
    guest: str | None        # where dest is bound in the guest, when outside the run dir


@dataclass
class Collect:
    guest: str               # the guest pattern (for messages)
    base: str                # host directory holding what the guest wrote under the pattern's base
    rest: str                # pattern relative to base (may hold * ? [..])
    dest: str | None         # None: leave in place (under the run dir); else a host file or directory
    dest_is_dir: bool = True


@dataclass
class RowPlan:
    row: str
    vars: dict[str, str]
    run_dir: str
    meta_dir: str
    argv: list[str]                          # the archive's full command line
    stages: list[Stage] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    collects: list[Collect] = field(default_factory=list)


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` atomically; an error names `path`, never the temp file."""
    cache.write_atomic(path, text, mode)


def row_dir(out_dir: str, row: str) -> str:
    return os.path.join(out_dir, row)


def meta_dir(out_dir: str, row: str) -> str:
    return os.path.join(out_dir, "rows", row)


def _guest_abs(path: str, guest_dir: str) -> str:
    p = posixpath.normpath(posixpath.join(guest_dir, path))
    return "/" + p.lstrip("/")


def _under(path: str, top: str) -> str | None:
    """path relative to top if path is top or below it, else None."""
    if path == top:
        return ""
    if top == "/":
        return path[1:]
    if path.startswith(top + "/"):
        return path[len(top) + 1:]
    return None


def _split_glob(guest: str) -> tuple[str, str]:
    """(base dir without glob characters, rest of the pattern)."""
    parts = guest.split("/")[1:]
    for i, part in enumerate(parts):
        if _GLOB.search(part):
            return "/" + "/".join(parts[:i]), "/".join(parts[i:])
    return posixpath.dirname(guest), parts[-1]


def sh_glob(rest: str, what: str) -> str:
    """A sh word that globs like `rest` (quoted literals, bare * ? and simple [..])."""
    out, lit, i = [], "", 0
    while i < len(rest):
        c = rest[i]
        if c in "*?":
            out += [shlex.quote(lit) if lit else "", c]
            lit, i = "", i + 1
        elif c == "[":
            m = _SAFE_BRACKET.match(rest, i)
            if not m:
                raise InputError(f"{what}: only simple [...] classes (letters, digits, . _ -) are supported")
            out += [shlex.quote(lit) if lit else "", m.group(0)]
            lit, i = "", m.end()
        else:
            lit += c
            i += 1
    if lit:
        out.append(shlex.quote(lit))
    return "".join(out)


def _check_bind_path(p: str, what: str) -> None:
    if ":" in p or "\n" in p:
        raise InputError(f"{what}: {p!r} cannot be bound (':' and newlines are not allowed in bound paths)")


def check_templates(spec: SweepSpec) -> None:
    cols = spec.table.columns
    host: str | None            # the inputs' hosts are always given, the outputs' may not be
    guest: str | None
    for a in spec.args:
        check_template(a, cols, "argument")
    for host, guest in spec.inputs:
        check_template(host, cols, "--input")
        check_template(guest or "", cols, "--input")
    for guest, host in spec.outputs:
        check_template(guest, cols, "--output")
        check_template(host or "", cols, "--output")


def plan_row(spec: SweepSpec, index: int) -> RowPlan:
    row = str(index)
    values = spec.table.rows[index]
    run = row_dir(spec.out_dir, row)
    meta = meta_dir(spec.out_dir, row)
    gdir = spec.guest_dir
    plan = RowPlan(row, dict(values), run, meta, [])
    binds: list[tuple[str, str]] = [(run, gdir)]
    host_t: str | None          # the inputs' hosts are always given, the outputs' may not be
    dest: str | None

    for k, (host_t, guest_t) in enumerate(spec.inputs):
        what = f"row {row}: --input {host_t}"
        src = os.path.normpath(os.path.join(spec.cwd, substitute(host_t, values)))
        if not os.path.lexists(src):
            raise InputError(f"{what}: {src}: no such file or directory")
        guest = _guest_abs(substitute(guest_t, values) if guest_t else os.path.basename(src), gdir)
        rel = _under(guest, gdir)
        if rel == "":
            raise InputError(f"{what}: cannot stage onto the run directory {gdir} itself")
        if rel is not None:
            plan.stages.append(Stage(src, os.path.join(run, rel), None))
        else:
            _check_bind_path(guest, what)
            dest = os.path.join(meta, "in", str(k), posixpath.basename(guest) or "input")
            plan.stages.append(Stage(src, dest, guest))
            binds.append((dest, guest))

    # outputs: what lands under the run dir is already on the host; any other base directory gets a
    # per-row empty directory bound over it (shallowest bases first, deeper ones reuse it)
    parsed = []
    for guest_t, host_t in spec.outputs:
        what = f"--output {guest_t}"
        guest = _guest_abs(substitute(guest_t, values), gdir)
        base, rest = _split_glob(guest)
        sh_glob(rest, what)  # validates the pattern
        parsed.append((guest_t, host_t, guest, base, rest))
    scratch: list[tuple[str, str]] = []  # (guest base, host dir)
    for _, _, guest, base, _ in sorted(parsed, key=lambda p: p[3].count("/")):
        if _under(base, gdir) is not None or any(_under(base, g) is not None for g, _ in scratch):
            continue
        if base == "/":
            raise InputError(f"--output {guest}: outputs must be written below a directory (e.g. /out/...), "
                             "not directly in the guest's /")
        _check_bind_path(base, f"--output {guest}")
        host = os.path.join(meta, "out", str(len(scratch)))
        scratch.append((base, host))
        plan.scratch.append(host)
        binds.append((host, base))
    for _guest_t, host_t, guest, base, rest in parsed:
        rel = _under(base, gdir)
        if rel is not None:
            host_base, in_run = os.path.join(run, rel) if rel else run, True
        else:
            g, h = next((g, h) for g, h in scratch if _under(base, g) is not None)
            r = _under(base, g)
            host_base, in_run = os.path.join(h, r) if r else h, False
        if host_t:
            h = substitute(host_t, values)
            dest_is_dir = h.endswith("/") or bool(_GLOB.search(rest))
            dest = os.path.normpath(os.path.join(spec.cwd, h))
        elif in_run:
            dest, dest_is_dir = None, True
        else:
            dest, dest_is_dir = run, True
        plan.collects.append(Collect(guest, host_base, rest, dest, dest_is_dir))

    for host, _guest in binds:
        _check_bind_path(host, "sweep directory")
    argv = [spec.archive]
    argv += [f"--carryon-bind={h}:{g}" for h, g in binds]
    argv += [f"--carryon-env={k}={v}" for k, v in values.items()]
    argv += [f"--carryon-env=CARRYON_ROW={row}", f"--carryon-env=CARRYON_RUN_DIR={gdir}"]
    # the row runs in its run directory (a job's cwd), where relative --input names land; a
    # --carryon-workdir among the user's ARGs comes later and wins (the archive keeps the last one)
    argv += [f"--carryon-workdir={gdir}"]
    if spec.state_per_row:             # the row's changes to the image, kept beside its logs
        argv += [f"--carryon-state={os.path.join(meta, 'state')}"]
    argv += [substitute(a, values) for a in spec.args]
    plan.argv = argv
    return plan


def plan_rows(spec: SweepSpec) -> list[RowPlan]:
    check_templates(spec)
    plans = [plan_row(spec, i) for i in range(len(spec.table.rows))]
    # explicit output destinations must differ between rows, or rows would overwrite each other
    for k, (guest_t, host_t) in enumerate(spec.outputs):
        if not host_t:
            continue
        seen: dict[str, str] = {}
        for p in plans:
            dest = p.collects[k].dest or ""
            if dest in seen:
                raise InputError(f"--output {guest_t}:{host_t} sends rows {seen[dest]} and {p.row} to the same "
                                 f"{dest}; put a {{column}} in the host path")
            seen[dest] = p.row
    return plans


_PRELUDE = r"""set -u
now() { t=$(date +%s.%N 2>/dev/null); case $t in ''|*N*) t=$(date +%s) ;; esac; echo "$t"; }
finish() {  # finish RC START END: record the row; exit RC, or 1 if RC is 0 but a required output is missing
    { echo "rc=$1"; echo "start=$2"; echo "end=$3"; echo "missing=$MISSING"; echo "plan=$PLAN"; } \
        >"$M/status.tmp" && mv -f "$M/status.tmp" "$M/status"
    if [ "$1" -eq 0 ] && [ "$MISSING" -gt 0 ]; then exit 1; fi
    exit "$1"
}
note() { echo "carryon sweep: row $ROW: $*" >>"$M/stderr"; }
missing() {  # missing PATTERN: a declared output matched nothing (fails the row unless allowed)
    note "output $1: nothing matched"
    echo "$1" >>"$M/missing"
    [ "$ALLOW_MISSING" = 1 ] || MISSING=$((MISSING + 1))
}
grab() {  # grab SRC DEST: copy one collected output to DEST (unless it is already there) and list it
    if [ "$1" != "$2" ]; then
        mkdir -p "${2%/*}" && rm -rf "$2" && cp -RP "$1" "$2" || { note "cannot collect $1 into $2"; return; }
    fi
    echo "$2" >>"$M/collected"
}
"""


def render_script(spec: SweepSpec, plan: RowPlan) -> str:
    q = shlex.quote
    L = [
        "#!/bin/sh",
        f"# carryon sweep: row {plan.row} of {spec.table.path}. Generated; run it by hand with",
        f"#   sh {q(os.path.join(plan.meta_dir, 'run.sh'))}",
        "# It stages the inputs, runs the archive and collects the outputs; its exit status is the row's",
        "# (the command's, or 1 when the command succeeded but a declared --output matched nothing).",
        f"# archive sha256: {spec.archive_sha256}",
        f"PLAN={PLAN_PLACEHOLDER}",
        f"ROW={q(plan.row)}",
        f"W={q(plan.run_dir)}",
        f"M={q(plan.meta_dir)}",
        f"ALLOW_MISSING={1 if spec.allow_missing_output else 0}",
        "MISSING=0",
        _PRELUDE,
        'rm -f "$M/status" "$M/collected" "$M/missing"',
        'rm -rf "$W" "$M/in" "$M/out"',
        ': >"$M/stdout"; : >"$M/stderr"',
        't0=$(now)',
    ]
    mkdirs = ['"$W"'] + [q(d) for d in plan.scratch]
    L.append(f'mkdir -p {" ".join(mkdirs)} || {{ note "cannot create the run directory"; finish 125 "$t0" "$(now)"; }}')
    for s in plan.stages:
        L.append(f"mkdir -p {q(os.path.dirname(s.dest))} && cp -RH {q(s.src)} {q(s.dest)} ||")
        L.append(f'    {{ note {q("cannot stage " + s.src)}; finish 125 "$t0" "$(now)"; }}')
    L.append('t0=$(now)')
    L.append(" ".join(q(a) for a in plan.argv) + ' </dev/null >>"$M/stdout" 2>>"$M/stderr"')
    L.append('rc=$?')
    L.append('t1=$(now)')
    for c in plan.collects:
        src = f'{q(c.base)}/{sh_glob(c.rest, c.guest)}'
        miss = q(c.guest)
        if c.dest is None:
            target = '"$f"'
        elif c.dest_is_dir:
            target = q(c.dest) + '/"${f##*/}"'
        else:
            target = q(c.dest)
        L.append(f"n=0; for f in {src}; do")
        L.append('    [ -e "$f" ] || [ -L "$f" ] || continue')
        L.append(f'    n=$((n + 1)); grab "$f" {target}')
        L.append(f"done; [ $n -gt 0 ] || missing {miss}")
    L.append('finish "$rc" "$t0" "$t1"')
    text = "\n".join(L) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return text.replace(PLAN_PLACEHOLDER, digest, 1)


def script_plan_id(text: str) -> str:
    m = re.search(r"^PLAN=(\S+)$", text, re.M)
    return m.group(1) if m else ""
