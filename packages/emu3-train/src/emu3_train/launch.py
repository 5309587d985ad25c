"""Start N training processes on this machine with MindSpore's msrun.

    launch(2, ["train.py", "--config", "sft.yaml"])          # python train.py ... in 2 workers
    launch(8, ["-m", "emu3_cli", "train", "sft"])            # python -m ... (msrun runs `python`)

msrun starts a scheduler and N workers, each running `python <argv>` with its rank in the
environment (emu3_train.parallel.init() joins them); it starts the `python` found on PATH, so
the interpreter running this (its venv's bin) goes first on PATH. Worker logs go to
`log_dir/worker_<rank>.log`; on failure their last lines are printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

DEFAULT_LOG_DIR = "msrun_log"
TAIL_LINES = 40


def msrun_path() -> str:
    """msrun next to this interpreter (its venv), else on PATH."""
    here = Path(sys.executable).parent / "msrun"
    if here.exists():
        return str(here)
    found = shutil.which("msrun")
    if found is None:
        raise FileNotFoundError(f"msrun not found next to {sys.executable} nor on PATH (it comes with mindspore)")
    return found


def emu3_script() -> str:
    """The installed `emu3` command (a Python script), for msrun to run in each worker: msrun
    takes a script path, not `-m module`."""
    here = Path(sys.executable).parent / "emu3"
    found = str(here) if here.exists() else shutil.which("emu3")
    if found is None:
        raise FileNotFoundError(f"the emu3 command is not installed next to {sys.executable} nor on PATH")
    return found


def free_port() -> int:
    """A TCP port free on this machine now (msrun's scheduler listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_command(nproc: int, argv, master_port: int | None = None, log_dir=DEFAULT_LOG_DIR) -> list[str]:
    """The msrun command line that runs `python *argv` in `nproc` local workers (argv: a script
    and its arguments; msrun takes no `-m module`)."""
    if int(nproc) < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("argv is empty: give the script (or -m module) the workers run")
    port = free_port() if master_port is None else int(master_port)
    return [msrun_path(), f"--worker_num={int(nproc)}", f"--local_worker_num={int(nproc)}",
            f"--master_port={port}", f"--log_dir={log_dir}", "--join=True", *argv]


def worker_env(env=None) -> dict[str, str]:
    """The environment for msrun: this interpreter's bin first on PATH (msrun starts `python`)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def log_tails(log_dir, lines: int = TAIL_LINES) -> str:
    """The last lines of every worker's (and the scheduler's) log."""
    parts = []
    for path in sorted(Path(log_dir).glob("*.log")):
        text = path.read_text(errors="replace").splitlines()
        parts.append(f"==> {path} <==\n" + "\n".join(text[-lines:]))
    return "\n".join(parts) if parts else f"(no logs in {log_dir})"


def launch(nproc: int, argv, master_port: int | None = None, log_dir=DEFAULT_LOG_DIR, env=None,
           timeout: float | None = None, quiet: bool = False) -> int:
    """Run `python *argv` in `nproc` workers with msrun and wait; returns msrun's exit status.

    On failure prints the tail of the workers' logs to stderr. quiet: msrun's own output (which
    echoes the workers' logs) goes to log_dir/msrun.out instead of the console.
    """
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    cmd = msrun_command(nproc, argv, master_port, log_dir)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(Path(log_dir) / "msrun.out", "w")) if quiet else None
        # its own session, so that a timeout or Ctrl-C stops msrun's scheduler and workers together
        proc = subprocess.Popen(cmd, env=worker_env(env), stdout=out, stderr=subprocess.STDOUT if quiet else None,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = 124
            print(f"msrun timed out after {timeout} s", file=sys.stderr)
        except BaseException:
            _stop(proc)
            raise
    if rc != 0:
        print(f"msrun exited with {rc}; worker logs:\n{log_tails(log_dir)}", file=sys.stderr)
    return rc


def _stop(proc: subprocess.Popen) -> None:
    """Kill msrun's process group (msrun, its scheduler, its workers) and reap msrun."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
