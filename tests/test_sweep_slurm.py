"""`carryon sweep --slurm` against a real single-node Slurm (Debian's packages, started by
scripts/slurm-up for this test session, stopped by scripts/slurm-down afterwards), with the stand-in
archive of test_sweep.py. The real debian-python archive over Slurm is in test_sweep_archive.py."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO
from test_sweep import check_fib_results, make_standin, read_results, sweep, write_csv


def slurm_session():
    """Generator behind the `slurm` fixture (also used by test_sweep_archive.py)."""
    p = subprocess.run([str(REPO / "scripts" / "slurm-up")], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        if os.geteuid() != 0:
            pytest.skip(f"no Slurm running and a non-root user cannot start one: {p.stderr.strip()}")
        pytest.fail(f"scripts/slurm-up failed: {p.stdout}{p.stderr}")
    started = "started" in p.stdout
    yield
    if started:
        subprocess.run([str(REPO / "scripts" / "slurm-down")], capture_output=True, timeout=120)


slurm = pytest.fixture(scope="session")(slurm_session)


def wait_gone(job: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if p.returncode == 0 and not p.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} still queued after {timeout} s")


def test_slurm_wait_gives_the_local_table(slurm, tmp_path):
    arc = make_standin(tmp_path)
    ns: list[object] = list(range(20))
    ns[4] = "x4"
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in ns])
    loc = sweep(arc, "--params", "t.csv", "-o", "local", "-j", "2", "--", "/app/fib.py", "{n}", cwd=tmp_path)
    slu = sweep(arc, "--params", "t.csv", "-o", "slurm", "--slurm", "--wait", "--sbatch=--time=10",
                "--", "/app/fib.py", "{n}", cwd=tmp_path)
    assert loc.returncode == 1 and slu.returncode == 1, slu.stderr
    assert "20 rows: 19 ok, 1 failed [4 (exit 1)]" in slu.stderr
    a = check_fib_results(tmp_path / "local", ns, bad={4})
    b = check_fib_results(tmp_path / "slurm", ns, bad={4})
    keys = ("row", "n", "status", "exit_code", "stderr_tail")
    assert [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]
    # one job array: one script, one archive copy, task N ran row N
    assert len(list((tmp_path / "slurm" / "archive").iterdir())) == 1
    assert "SLURM_ARRAY_TASK_ID" in (tmp_path / "slurm" / "slurm" / "job.sh").read_text()


def test_slurm_submit_then_collect_and_resume(slurm, tmp_path):
    log = tmp_path / "runs.log"
    arc = make_standin(tmp_path, log)
    write_csv(tmp_path / "t.csv", ["n"], [[n] for n in range(6)])
    opts = [arc, "--params", "t.csv", "--slurm", "--output", "/out/r.txt", "-j", "2", "--sbatch=--job-name=sw-test"]
    cmd = ["--", "-c", "import os; os.makedirs('/out', exist_ok=True); open('/out/r.txt', 'w').write(os.environ['n'])"]
    p = sweep(*opts, *cmd, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip()
    assert job.isdigit() and "--collect" in p.stderr
    wait_gone(job)
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "JobName=sw-test" in show  # --sbatch passed through
    p = sweep("--collect", "t.sweep", "--json", cwd=tmp_path)
    assert p.returncode == 0 and "6 rows: 6 ok" in p.stderr, p.stderr
    res = read_results(tmp_path / "t.sweep")
    assert [Path(r["outputs"]).read_text() for r in res] == [str(n) for n in range(6)]
    assert (tmp_path / "t.sweep" / "results.json").exists()

    # lose two rows' results: --resume submits an array of just those
    for r in ("1", "4"):
        (tmp_path / "t.sweep" / "rows" / r / "status").unlink()
    log.write_text("")
    p = sweep(*opts, "--resume", "--wait", *cmd, cwd=tmp_path)
    assert p.returncode == 0 and "(2 run now, 4 done before)" in p.stderr, p.stderr
    assert sorted(log.read_text().split()) == ["1", "4"]


def test_slurm_refused_submission_is_one_line(slurm, tmp_path):
    arc = make_standin(tmp_path)
    write_csv(tmp_path / "t.csv", ["n"], [[1]])
    p = sweep(arc, "--params", "t.csv", "--slurm", "--sbatch=--partition=nosuchpartition", "--", "/app/fib.py",
              "{n}", cwd=tmp_path)
    assert p.returncode != 0
    assert len(p.stderr.splitlines()) == 1 and "sbatch refused" in p.stderr, p.stderr
