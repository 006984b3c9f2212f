"""`carryon sweep --slurm`: submit the rows as one Slurm job array (task N runs DIR/rows/N/run.sh, plain
sh: compute nodes need neither Python nor carryon), and wait for it with squeue."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

from packer.sweep_plan import write_atomic
from runtime.errors import CarryonError, InputError


def find_sbatch() -> str:
    path = shutil.which("sbatch")
    if not path:
        raise InputError("sbatch not found on PATH (--slurm needs the Slurm client commands)")
    return path


def array_spec(rows: list[int]) -> str:
    """[0,1,2,5,7,8] -> '0-2,5,7-8'."""
    parts, i = [], 0
    rows = sorted(rows)
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
            j += 1
        parts.append(str(rows[i]) if i == j else f"{rows[i]}-{rows[j]}")
        i = j + 1
    return ",".join(parts)


def write_job_script(out_dir: str) -> str:
    path = os.path.join(out_dir, "slurm", "job.sh")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = os.path.join(out_dir, "rows")
    text = (
        "#!/bin/sh\n"
        "# carryon sweep job array: task N runs row N of the sweep (plain sh; no Python needed here).\n"
        ': "${SLURM_ARRAY_TASK_ID:?this script runs as a Slurm array task}"\n'
        f'exec /bin/sh {shlex.quote(rows)}/"$SLURM_ARRAY_TASK_ID"/run.sh\n'
    )
    write_atomic(path, text, 0o755)
    return path


def submit(sbatch: str, out_dir: str, rows: list[int], throttle: int | None, extra: list[str]) -> str:
    job = write_job_script(out_dir)
    spec = array_spec(rows) + (f"%{throttle}" if throttle else "")
    log = os.path.join(out_dir, "slurm", "%A_%a.out")
    cmd = [sbatch, "--parsable", "--job-name=carryon-sweep", f"--array={spec}", f"--output={log}",
           f"--chdir={out_dir}", *extra, job]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as e:
        raise CarryonError(f"cannot run sbatch: {e.strerror or e}") from None
    if p.returncode != 0:
        msg = " ".join(p.stderr.split()) or f"exit status {p.returncode}"
        raise CarryonError(f"sbatch refused the job array: {msg}")
    job_id = p.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise CarryonError(f"sbatch printed no job id: {p.stdout.strip()!r}")
    return job_id


def job_active(job_id: str) -> bool:
    """True while any task of the array is pending or running (squeue forgets finished jobs)."""
    squeue = shutil.which("squeue")
    if not squeue:
        return False
    try:
        p = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%T"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return True  # controller busy or unreachable: keep waiting
    if p.returncode != 0:
        # "Invalid job id specified": the job ended and was purged
        return "invalid job id" not in p.stderr.lower()
    return any(s.strip() for s in p.stdout.splitlines())


def wait_jobs(job_ids: list[str], poll, interval: float = 1.0) -> None:
    """Block until none of the jobs has a pending/running task; call poll() between checks."""
    while True:
        poll()
        if not any(job_active(j) for j in job_ids):
            poll()
            return
        time.sleep(interval)


def task_log(out_dir: str, job_id: str, row: str) -> str:
    return os.path.join(out_dir, "slurm", f"{job_id}_{row}.out")
