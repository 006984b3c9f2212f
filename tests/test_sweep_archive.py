"""`carryon sweep` acceptance with the REAL debian-python archive (`carryon pack` of
../shared/images/debian-python): fib over a 20-row table locally (--jobs 2) and as a Slurm job array
(the same table), a failing row, 20 collected /out/result.txt files at 4 at a time, interrupt + --resume."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED_IMAGES
from test_sweep import FIB, check_fib_results, read_results, sweep, write_csv
from test_sweep_slurm import slurm_session

slurm = pytest.fixture(scope="session")(slurm_session)
IMAGE = SHARED_IMAGES / "debian-python" / "debian-python.oci.tar"


@pytest.fixture(scope="session")
def py_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(py.run, environment with a private archive cache, already warm)."""
    if importlib.util.find_spec("packer.embed") is None:
        pytest.skip("packer.embed is absent: `carryon pack` cannot build self-extracting archives yet")
    if not IMAGE.exists():
        pytest.skip(f"{IMAGE} not present")
    d = tmp_path_factory.mktemp("pyrun")
    out = d / "py.run"
    env = dict(os.environ, PYTHONPATH=str(REPO), CARRYON_CACHE=str(d / "cache"))
    p = subprocess.run([sys.executable, "-m", "packer.cli", "pack", str(IMAGE), "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=1800)
    assert p.returncode == 0, f"carryon pack failed: {p.stderr}"
    p = subprocess.run([str(out), "/app/fib.py", "10"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0 and p.stdout == "fib(10) = 55\n", f"py.run does not run: {p.stderr}"
    return out, {"CARRYON_CACHE": env["CARRYON_CACHE"]}


def test_fib_table_local_jobs2(py_run, tmp_path):
    arc, env = py_run
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in range(20)])
    p = sweep(arc, "--params", "t.csv", "--jobs", "2", "--", "/app/fib.py", "{n}", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert "20 rows: 20 ok, 0 failed" in p.stderr
    check_fib_results(tmp_path / "t.sweep", list(range(20)))


def test_fib_table_slurm_wait_same_table(py_run, slurm, tmp_path):
    arc, env = py_run
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in range(20)])
    loc = sweep(arc, "--params", "t.csv", "-o", "local", "-j", "2", "--", "/app/fib.py", "{n}", cwd=tmp_path, env=env)
    slu = sweep(arc, "--params", "t.csv", "-o", "slurm", "--slurm", "--wait", "--", "/app/fib.py", "{n}",
                cwd=tmp_path, env=env)
    assert loc.returncode == 0 and slu.returncode == 0, slu.stderr
    a = check_fib_results(tmp_path / "local", list(range(20)))
    b = check_fib_results(tmp_path / "slurm", list(range(20)))
    keys = ("row", "n", "status", "exit_code", "outputs", "stderr_tail")
    assert [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]
    assert [Path(r["stdout"]).read_text() for r in a] == [Path(r["stdout"]).read_text() for r in b]


def test_invalid_row_fails_and_is_reported(py_run, tmp_path):
    arc, env = py_run
    ns: list[object] = [5, 6, "seven", 8]
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in ns])
    p = sweep(arc, "--params", "t.csv", "--jobs", "2", "--", "/app/fib.py", "{n}", cwd=tmp_path, env=env)
    assert p.returncode == 1
    assert "4 rows: 3 ok, 1 failed [2 (exit 1)]" in p.stderr, p.stderr
    res = check_fib_results(tmp_path / "t.sweep", ns, bad={2})
    assert "invalid literal for int()" in res[2]["stderr_tail"]


def test_outputs_20_rows_4_at_a_time(py_run, tmp_path):
    arc, env = py_run
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in range(20)])
    code = ("import os\nn = int(os.environ['n'])\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\n"
            "open('/out/result.txt', 'w').write('fib(%d) = %d\\n' % (n, a))\n")
    p = sweep(arc, "--params", "t.csv", "--jobs", "4", "--output", "/out/result.txt", "--", "-c", code,
              cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    res = read_results(tmp_path / "t.sweep")
    files = [r["outputs"] for r in res]
    assert len(set(files)) == 20 and all(files)
    for n, f in enumerate(files):
        assert Path(f).read_text() == f"fib({n}) = {FIB[n]}\n"


def test_interrupt_then_resume(py_run, tmp_path):
    arc, env = py_run
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in range(10)])
    args = [str(arc), "--params", "t.csv", "-j", "2", "--", "-c",
            "import sys, time; time.sleep(1); print('fib(%s) = %s' % (sys.argv[1], sys.argv[2]))", "{n}", "X"]
    proc = subprocess.Popen([sys.executable, "-m", "packer.cli", "sweep", *args], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    rows = tmp_path / "t.sweep" / "rows"
    deadline = time.monotonic() + 300
    while len(list(rows.glob("*/status"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    res = read_results(tmp_path / "t.sweep")
    done = {r["row"] for r in res if r["status"] == "ok"}
    assert 3 <= len(done) < 10 and all(r["status"] in ("ok", "not-run") for r in res), res
    time.sleep(1.5)  # nothing of the sweep keeps running after it exited: no row finishes later
    assert {p.parent.name for p in rows.glob("*/status")} == done
    stamps = {r: os.stat(rows / r / "status").st_mtime_ns for r in done}

    p = sweep(*args[:5], "--resume", *args[5:], cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert f"({10 - len(done)} run now, {len(done)} done before)" in p.stderr
    assert {r: os.stat(rows / r / "status").st_mtime_ns for r in done} == stamps
    for n, r in enumerate(read_results(tmp_path / "t.sweep")):
        assert r["status"] == "ok" and Path(r["stdout"]).read_text() == f"fib({n}) = X\n"


def test_row_runs_in_its_run_directory(py_run, tmp_path):
    """`--input seed.txt` lands in /carryon-run, the row's working directory: `open('seed.txt')` works."""
    arc, env = py_run
    (tmp_path / "seed.txt").write_text("seed\n")
    write_csv(tmp_path / "t.csv", ["n"], [[1], [2]])
    code = "import os; print(os.getcwd(), open('seed.txt').read().strip(), os.environ['n'])"
    p = sweep(arc, "--params", "t.csv", "--input", "seed.txt", "--", "-c", code, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    for i, r in enumerate(read_results(tmp_path / "t.sweep")):
        assert Path(r["stdout"]).read_text() == f"/carryon-run seed {i + 1}\n"


def test_rows_start_from_the_image_and_state_per_row_keeps_their_changes(py_run, tmp_path):
    """Every row starts from the image as packed (a row never sees another row's changes); with
    --state-per-row each row's changes stay in DIR/rows/<row>/state, and a rerun of the row sees them."""
    arc, env = py_run
    write_csv(tmp_path / "t.csv", ["n"], [[1], [2], [3]])
    script = "import os; print(sorted(os.listdir('/opt'))); open('/opt/row-{n}', 'w').write('{n}')"
    for extra, name in (([], "plain"), (["--state-per-row"], "kept")):
        p = sweep(arc, "--params", "t.csv", "-o", name, "--jobs", "1", *extra, "--", "-c", script,
                  cwd=tmp_path, env=env)
        assert p.returncode == 0, p.stderr
        outs = [(tmp_path / name / "rows" / str(r) / "stdout").read_text() for r in range(3)]
        assert outs == ["[]\n"] * 3, outs                  # no row saw another row's /opt/row-N
    for r in range(3):
        assert not (tmp_path / "plain" / "rows" / str(r) / "state").exists()
        state = tmp_path / "kept" / "rows" / str(r) / "state"
        # the ptrace rungs' upper dir, or the userns rung's overlayfs one (runtime/userns.py)
        upper = state / ("ns-upper" if (state / "ns-upper").is_dir() else "upper")
        kept = upper / "opt" / f"row-{r + 1}"
        assert kept.read_text() == str(r + 1)
    p = subprocess.run(["sh", str(tmp_path / "kept" / "rows" / "1" / "run.sh")], env=dict(os.environ, **env),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "kept" / "rows" / "1" / "stdout").read_text() == "['row-2']\n"
