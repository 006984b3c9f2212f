"""`carryon sweep`, local mode, against a stand-in archive (tables, substitution, staging, outputs,
failures, interrupt + resume, errors). The same scenarios with the real debian-python archive are in
test_sweep_archive.py; Slurm in test_sweep_slurm.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

FIB = {n: f for n, f in zip(range(40), [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987,
                                         1597, 2584, 4181, 6765, 10946, 17711, 28657, 46368, 75025])}

# A stand-in for a carryon archive: takes the archive's --carryon-* options at the start of its arguments
# (`--carryon-X VALUE` or `--carryon-X=VALUE`, the first other argument ends them), gives the command only
# the --carryon-env variables, and emulates the guest's file system by rewriting guest paths in every
# argument and in --carryon-workdir (binds, longest first; /app -> a fake rootfs; WorkingDir /app).
# Entrypoint: python3, like debian-python.
STANDIN = r'''#!/usr/bin/python3
import os, re, sys
ROOT = @ROOT@
LOG = @LOG@
args = sys.argv[1:]
binds, env, entry = [("/app", ROOT + "/app")], {"PATH": "/usr/bin:/bin"}, ["/usr/bin/python3"]
workdir = "/app"  # the image's WorkingDir
while args and args[0].startswith("--carryon-"):
    opt = args.pop(0)
    name, eq, val = opt.partition("=")
    if not eq:
        val = args.pop(0)
    if name == "--carryon-bind":
        host, guest = val.split(":")[:2]
        binds.append((guest, host))
    elif name == "--carryon-env":
        k, _, v = val.partition("=")
        env[k] = v
    elif name == "--carryon-entrypoint":
        entry = [val]
    elif name == "--carryon-workdir":
        workdir = val  # the last one wins, as in a real archive
    else:
        sys.exit("stand-in: unexpected option " + opt)
binds.sort(key=lambda b: -len(b[0]))
def host(s):
    for g, h in binds:
        s = re.sub(r"(?<![\w.-])" + re.escape(g) + r"(?=/|\b|$)", lambda m: h, s)
    return s
if LOG:
    with open(LOG, "a") as f:
        f.write(env.get("CARRYON_ROW", "?") + "\n")
os.chdir(host(workdir))
os.execve(entry[0], entry + [host(a) for a in args], env)
'''

FIB_PY = '''import os, sys, time
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
time.sleep(float(os.environ.get("SLEEP", "0")))
for a in sys.argv[1:]:
    n = int(a)
    print(f"fib({n}) = {fib(n)}")
'''


def make_standin(tmp: Path, log: Path | None = None) -> Path:
    root = tmp / "standin-root"
    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "app" / "fib.py").write_text(FIB_PY)
    exe = tmp / "standin.run"
    exe.write_text(STANDIN.replace("@ROOT@", repr(str(root))).replace("@LOG@", repr(str(log) if log else "")))
    exe.chmod(0o755)
    return exe


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_results(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def sweep(*args, cwd: Path, path: str | None = None, timeout: float = 600,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "packer.cli", "sweep", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_fib_results(out: Path, ns: list[object], bad: set[int] = frozenset()) -> list[dict[str, str]]:
    res = read_results(out)
    assert [r["row"] for r in res] == [str(i) for i in range(len(ns))]
    for i, (r, n) in enumerate(zip(res, ns)):
        assert r["n"] == str(n)
        if i in bad:
            assert r["status"] == "failed" and r["exit_code"] not in ("", "0"), r
            assert "ValueError" in r["stderr_tail"], r
        else:
            assert r["status"] == "ok" and r["exit_code"] == "0", r
            assert Path(r["stdout"]).read_text() == f"fib({n}) = {FIB[int(n)]}\n"
            assert r["stderr_tail"] == ""
            assert float(r["wall_time_s"]) >= 0
    return res


# ---- units: table, substitution, plans ---------------------------------------------------------------

def test_table_csv_jsonl_and_substitution(tmp_path):
    from packer.sweep_table import check_template, read_table, substitute
    from runtime.errors import InputError

    t = read_table(str(write_csv(tmp_path / "t.csv", ["n", "name"], [[1, "a b"], [2, "c,d"]])))
    assert t.columns == ["n", "name"] and t.rows == [{"n": "1", "name": "a b"}, {"n": "2", "name": "c,d"}]
    (tmp_path / "t.jsonl").write_text('{"n": 3, "x": null}\n\n{"n": 4, "x": true}\n')
    t = read_table(str(tmp_path / "t.jsonl"))
    assert t.rows == [{"n": "3", "x": ""}, {"n": "4", "x": "true"}]
    assert substitute("f{n}-{{x}}{name}", {"n": "7", "name": "q"}) == "f7-{x}q"
    with pytest.raises(InputError, match=r"\{m\}, which is not a column"):
        check_template("a{m}", ["n"], "argument")
    (tmp_path / "ragged.csv").write_text("a,b\n1\n")
    with pytest.raises(InputError, match="record 2 has 1 fields"):
        read_table(str(tmp_path / "ragged.csv"))
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="no rows"):
        read_table(str(tmp_path / "empty.csv"))
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"b": 2}\n')
    with pytest.raises(InputError, match="differ"):
        read_table(str(tmp_path / "bad.jsonl"))


def test_array_spec():
    from packer.sweep_slurm import array_spec
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert array_spec([3]) == "3"


def test_sh_glob_quotes_literals():
    from packer.sweep_plan import sh_glob
    assert sh_glob("a b*.txt", "x") == "'a b'*.txt"
    assert sh_glob("r[0-9]?", "x") == "r[0-9]?"


# ---- local sweeps with the stand-in ------------------------------------------------------------------

def test_local_fib_table_and_failing_row(tmp_path):
    arc = make_standin(tmp_path)
    ns: list[object] = list(range(20))
    ns[13] = "zz"
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in ns])
    p = sweep(arc, "--params", "t.csv", "--jobs", "2", "--json", "--", "/app/fib.py", "{n}", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert p.stdout == ""
    assert "20 rows: 19 ok, 1 failed [13 (exit 1)]" in p.stderr
    check_fib_results(tmp_path / "t.sweep", ns, bad={13})
    data = json.loads((tmp_path / "t.sweep" / "results.json").read_text())
    assert data[13]["exit_code"] == 1 and data[13]["vars"] == {"n": "zz"} and data[0]["status"] == "ok"
    # the archive is copied once, and one script per row
    assert len(list((tmp_path / "t.sweep" / "archive").iterdir())) == 1
    assert (tmp_path / "t.sweep" / "rows" / "19" / "run.sh").exists()


def test_all_ok_exit_zero_and_env_columns(tmp_path):
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "p.csv", ["a", "b"], [["x y", 1], ["z", 2]])
    code = "import os; print(os.environ['a'], os.environ['b'], os.environ['CARRYON_ROW'], os.getcwd() != '')"
    p = sweep(arc, "--params", "p.csv", "-o", "out", "-c", code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    res = read_results(tmp_path / "out")
    assert [Path(r["stdout"]).read_text() for r in res] == ["x y 1 0 True\n", "z 2 1 True\n"]


def test_guest_dir_option(tmp_path):
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[1], [2]])
    (tmp_path / "in.txt").write_text("in\n")
    code = ("import os; open('/work/row/o.txt', 'w').write(open('/work/row/in.txt').read() + "
            "os.environ['CARRYON_RUN_DIR'])")
    p = sweep(arc, "--params", "t.csv", "--guest-dir", "/work/row/", "--input", "in.txt", "--output", "o.txt", "--",
              "-c", code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for i, r in enumerate(read_results(tmp_path / "t.sweep")):
        assert r["outputs"] == str(tmp_path / "t.sweep" / str(i) / "o.txt")
        assert Path(r["outputs"]).read_text() == "in\n/work/row"


def test_outputs_twenty_rows_four_at_a_time(tmp_path):
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[n * 11] for n in range(20)])
    code = ("import os, time; time.sleep(0.2); os.makedirs('/out', exist_ok=True); "
            "open('/out/result.txt', 'w').write(os.environ['n'] + '\\n')")
    p = sweep(arc, "--params", "t.csv", "--jobs", "4", "--output", "/out/result.txt", "--",
              "-c", code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    res = read_results(tmp_path / "t.sweep")
    outs = [r["outputs"] for r in res]
    assert len(set(outs)) == 20
    for i in range(len(res)):
        assert outs[i] == str(tmp_path / "t.sweep" / str(i) / "result.txt")
        assert Path(outs[i]).read_text() == f"{i * 11}\n"


def test_inputs_outputs_globs_and_host_destinations(tmp_path):
    arc = make_standin(tmp_path)
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"in{i}.txt").write_text(f"payload {i}\n")
    (tmp_path / "shared.cfg").write_text("cfg\n")
    write_csv(tmp_path / "t.csv", ["i"], [[0], [1], [2]])
    code = ("import os, sys; d = open('/carryon-run/in.txt').read().split()[1]; "
            "c = open('/etc/app/shared.cfg').read().strip(); "
            "os.makedirs('/results/sub', exist_ok=True); "
            "[open('/results/sub/r%d.dat' % k, 'w').write(d + c) for k in range(2)]; "
            "open('/carryon-run/local.txt', 'w').write(d); "
            "open('/results/one.txt', 'w').write(d); sys.exit(int(d) == 2 and 3)")
    p = sweep(arc, "--params", "t.csv", "--input", "data/in{i}.txt:in.txt", "--input", "shared.cfg:/etc/app/shared.cfg",
              "--output", "/results/sub/*.dat:collected/{i}/", "--output", "local.txt",
              "--output", "/results/one.txt:one-{i}.txt", "--output", "/results/missing.txt",
              "--allow-missing-output", "--", "-c", code, cwd=tmp_path)
    assert p.returncode == 1 and "3 rows: 2 ok, 1 failed" in p.stderr, p.stderr
    res = read_results(tmp_path / "t.sweep")
    for i, r in enumerate(res):
        assert r["status"] == ("failed" if i == 2 else "ok")
        outs = r["outputs"].split(";")
        # collected also when the row fails
        assert outs == [str(tmp_path / f"collected/{i}/r0.dat"), str(tmp_path / f"collected/{i}/r1.dat"),
                        str(tmp_path / "t.sweep" / str(i) / "local.txt"), str(tmp_path / f"one-{i}.txt")]
        assert Path(outs[0]).read_text() == f"{i}cfg"
        assert Path(outs[3]).read_text() == f"{i}"
        assert "nothing matched" in Path(r["stderr"]).read_text()
        assert r["missing"] == "/results/missing.txt"  # allowed, but named
    assert res[2]["exit_code"] == "3"


def test_rows_do_not_see_each_other(tmp_path):
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in range(6)])
    code = ("import os, time; os.makedirs('/out', exist_ok=True); "
            "before = sorted(os.listdir('/out')) + sorted(os.listdir('/carryon-run')); "
            "open('/out/mine-' + os.environ['n'], 'w').write('x'); time.sleep(0.3); "
            "print(before, sorted(os.listdir('/out')))")
    p = sweep(arc, "--params", "t.csv", "-j", "3", "--output", "/out/*", "--", "-c", code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for i, r in enumerate(read_results(tmp_path / "t.sweep")):
        assert Path(r["stdout"]).read_text() == f"[] ['mine-{i}']\n"


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `carryon sweep ... &` in a script starts it


@pytest.mark.parametrize("how", ["SIGINT", "SIGINT-inherited-ignored", "SIGTERM"])
def test_resume_only_missing_rows(tmp_path, how):
    log = tmp_path / "runs.log"
    arc = make_standin(tmp_path, log)
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in range(12)])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [str(arc), "--params", "t.csv", "-j", "2", "--", "--carryon-env=SLEEP=0.4", "/app/fib.py", "{n}"]
    proc = subprocess.Popen([sys.executable, "-m", "packer.cli", "sweep"] + args, cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigint if how == "SIGINT-inherited-ignored" else None)
    rows = tmp_path / "t.sweep" / "rows"
    deadline = time.monotonic() + 60
    while len(list(rows.glob("*/status"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    sig = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    time.sleep(1)  # nothing of the sweep keeps running after it exited: no row finishes later
    assert "interrupted" in err and "Traceback" not in err
    res = read_results(tmp_path / "t.sweep")
    done = {r["row"] for r in res if r["status"] == "ok"}
    assert 4 <= len(done) < 12 and all(r["status"] in ("ok", "not-run") for r in res), res
    assert {p.parent.name for p in rows.glob("*/status")} == done
    stamps = {r: os.stat(rows / r / "status").st_mtime_ns for r in done}
    log.write_text("")

    p = sweep(*args[:5], "--resume", *args[5:], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"({12 - len(done)} run now, {len(done)} done before)" in p.stderr
    assert sorted(log.read_text().split(), key=int) == sorted(set(map(str, range(12))) - done, key=int)
    assert {r: os.stat(rows / r / "status").st_mtime_ns for r in done} == stamps
    check_fib_results(tmp_path / "t.sweep", list(range(12)))

    # without --resume an existing sweep is refused; with it and a changed command every row runs again
    p = sweep(*args, cwd=tmp_path)
    assert p.returncode != 0 and "add --resume" in p.stderr
    log.write_text("")
    p = sweep(*args[:5], "--resume", "--", "/app/fib.py", "{n}", cwd=tmp_path)
    assert p.returncode == 0 and "(12 run now, 0 done before)" in p.stderr, p.stderr
    assert len(log.read_text().split()) == 12


@pytest.mark.parametrize("case", ["missing-column", "unreadable-table", "no-sbatch", "bad-output", "no-archive"])
def test_errors_before_anything_runs(tmp_path, case):
    log = tmp_path / "runs.log"
    arc = make_standin(tmp_path, log)
    write_csv(tmp_path / "t.csv", ["n"], [[1], [2]])
    args: list[object] = [arc, "--params", "t.csv", "--", "/app/fib.py", "{n}"]
    path = None
    if case == "missing-column":
        args[-1] = "{m}"
        want = "{m}, which is not a column (columns: n)"
    elif case == "unreadable-table":
        args[2] = "nope.csv"
        want = "cannot read table nope.csv"
    elif case == "no-sbatch":
        args[1:1] = ["--slurm"]
        path = "/nonexistent"
        want = "sbatch not found"
    elif case == "bad-output":
        args[1:1] = ["--output", "/top.txt"]
        want = "below a directory"
    else:
        args[0] = tmp_path / "missing.run"
        want = "no such file"
    p = sweep(*args, cwd=tmp_path, path=path)
    assert p.returncode != 0
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and want in lines[0], p.stderr
    assert not (tmp_path / "t.sweep").exists() and not log.exists()


def test_row_script_runs_by_hand(tmp_path):
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[7], [8]])
    assert sweep(arc, "--params", "t.csv", "--", "/app/fib.py", "{n}", cwd=tmp_path).returncode == 0
    row = tmp_path / "t.sweep" / "rows" / "1"
    (row / "status").unlink()
    p = subprocess.run(["/bin/sh", str(row / "run.sh")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (row / "stdout").read_text() == "fib(8) = 21\n"
    assert "rc=0" in (row / "status").read_text()
    p = sweep("--collect", tmp_path / "t.sweep", cwd=tmp_path)
    assert p.returncode == 0 and "2 rows: 2 ok" in p.stderr


def test_progress_bar_only_on_a_terminal(tmp_path):
    import pty
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in range(3)])
    p = sweep(arc, "--params", "t.csv", "-o", "quiet", "--", "/app/fib.py", "{n}", cwd=tmp_path)
    assert p.returncode == 0 and len(p.stderr.splitlines()) == 1 and "\r" not in p.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "packer.cli", "sweep", str(arc), "--params", "t.csv", "-o", "tty",
                             "--", "/app/fib.py", "{n}"], cwd=tmp_path, stderr=slave, stdout=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(60) == 0
    os.close(master)
    assert b"\rsweep [" in seen and b"3/3" in seen


def test_write_errors_name_the_results_file_not_a_temp_file(tmp_path):
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[1]])
    assert sweep(arc, "--params", "t.csv", "--", "/app/fib.py", "{n}", cwd=tmp_path).returncode == 0
    out = tmp_path / "t.sweep"
    (out / "results.csv").unlink()
    (out / "results.csv").mkdir()      # in the way of the file the temporary one replaces
    p = sweep("--collect", out, cwd=tmp_path)
    assert p.returncode == 125, p.stderr
    assert p.stderr == f"carryon sweep: cannot write {out}/results.csv: Is a directory\n"


def test_results_csv_is_one_line_per_row(tmp_path):
    """README's `column -s, -t < t.sweep/results.csv` gives one table line per row, even when a row's
    stderr tail (or a value) spans lines; results.json keeps them verbatim."""
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[10], ["bad"], ["two\nlines"], [20]])
    p = sweep(arc, "--params", "t.csv", "--json", "--", "/app/fib.py", "{n}", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    out = tmp_path / "t.sweep"
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[1].startswith("0,10,ok,0,"), lines
    res = read_results(out)
    assert "Traceback" in res[1]["stderr_tail"] and "\\n" in res[1]["stderr_tail"]
    assert "\n" not in res[1]["stderr_tail"] and res[2]["n"] == "two\\nlines"
    data = json.loads((out / "results.json").read_text())
    assert data[1]["stderr_tail"].count("\n") >= 2 and data[2]["vars"]["n"] == "two\nlines"
    if shutil.which("column"):
        table = subprocess.run(["column", "-s,", "-t"], stdin=open(out / "results.csv"), capture_output=True,
                               text=True, check=True).stdout
        assert len(table.splitlines()) == 5, table


def test_row_runs_in_its_run_directory(tmp_path):
    """Relative names in the command find what --input staged; --carryon-workdir in ARGs overrides."""
    arc = make_standin(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "seed.txt").write_text("seed\n")
    write_csv(tmp_path / "t.csv", ["n"], [[1], [2]])
    code = "import os; print(open('seed.txt').read().strip(), os.environ['n']); open('here.txt', 'w').write('x')"
    p = sweep(arc, "--params", "t.csv", "--input", "data/seed.txt", "--output", "here.txt", "--", "-c", code,
              cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for i, r in enumerate(read_results(tmp_path / "t.sweep")):
        assert Path(r["stdout"]).read_text() == f"seed {i + 1}\n"
        assert r["outputs"] == str(tmp_path / "t.sweep" / str(i) / "here.txt")
    # the same row run by hand with run.sh (plain sh, as on a Slurm node) behaves the same
    row = tmp_path / "t.sweep" / "rows" / "1"
    assert subprocess.run(["/bin/sh", str(row / "run.sh")]).returncode == 0
    assert (row / "stdout").read_text() == "seed 2\n"
    # an explicit --carryon-workdir wins
    p = sweep(arc, "--params", "t.csv", "-o", "w2", "--", "--carryon-workdir", "/app", "-c",
              "import os; print(sorted(os.listdir('.')))", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert all(Path(r["stdout"]).read_text() == "['fib.py']\n" for r in read_results(tmp_path / "w2"))


def test_missing_declared_output_fails_the_row(tmp_path):
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[0], [1], [2]])
    code = "import os, sys; n = int(os.environ['n']); n != 1 and open('/out/r.txt', 'w').write('x'); sys.exit(n == 2)"
    args = ["--params", "t.csv", "--json", "--output", "/out/r.txt", "--", "-c", code]
    p = sweep(arc, *args, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "3 rows: 1 ok, 1 failed, 1 missing an output [1 (no /out/r.txt), 2 (exit 1)]" in p.stderr, p.stderr
    res = read_results(tmp_path / "t.sweep")
    assert [r["status"] for r in res] == ["ok", "missing-output", "failed"]
    assert res[1]["exit_code"] == "0" and res[1]["missing"] == "/out/r.txt" and res[0]["missing"] == ""
    assert "output /out/r.txt: nothing matched" in res[1]["stderr_tail"]
    assert json.loads((tmp_path / "t.sweep" / "results.json").read_text())[1]["missing"] == ["/out/r.txt"]
    # run.sh by hand says the same: exit 1 although the command exited 0
    row = tmp_path / "t.sweep" / "rows" / "1"
    assert subprocess.run(["/bin/sh", str(row / "run.sh")]).returncode == 1
    # --resume runs the missing-output row again; --allow-missing-output makes it a success
    p = sweep(arc, *args[:3], "--resume", *args[3:], cwd=tmp_path)
    assert p.returncode == 1 and "(2 run now, 1 done before)" in p.stderr, p.stderr
    p = sweep(arc, *args[:3], "-o", "allowed", "--allow-missing-output", *args[3:], cwd=tmp_path)
    assert p.returncode == 1 and "3 rows: 2 ok, 1 failed [2 (exit 1)]" in p.stderr, p.stderr
    assert read_results(tmp_path / "allowed")[1]["missing"] == "/out/r.txt"


def test_refused_slurm_submission_removes_the_new_sweep(tmp_path):
    """A fake sbatch that refuses: one line, exit 125, nothing left behind (a sweep copies the archive)."""
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[1], [2]])
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nosuch' >&2\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    path = f"{fake}:/usr/bin:/bin"
    args = [arc, "--params", "t.csv", "--slurm", "--", "/app/fib.py", "{n}"]
    p = sweep(*args, cwd=tmp_path, path=path)
    assert p.returncode == 125
    assert p.stderr == ("carryon sweep: sbatch refused the job array: sbatch: error: invalid partition specified: "
                        f"nosuch; removed {tmp_path}/t.sweep\n"), p.stderr
    assert not (tmp_path / "t.sweep").exists()
    # parents it created go too; a directory that existed (empty) stays, emptied
    p = sweep(*args[:3], "-o", "a/b/c.sweep", *args[3:], cwd=tmp_path, path=path)
    assert p.returncode == 125 and p.stderr.endswith(f"; removed {tmp_path}/a\n"), p.stderr
    assert not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    p = sweep(*args[:3], "-o", "empty", *args[3:], cwd=tmp_path, path=path)
    assert p.returncode == 125 and p.stderr.endswith(f"; emptied {tmp_path}/empty again\n"), p.stderr
    assert list((tmp_path / "empty").iterdir()) == []
