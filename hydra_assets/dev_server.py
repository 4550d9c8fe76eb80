"""`hydra dev`: the Dagster UI and daemon (`dg dev`) with the review app beside it, stopped together.

Both run as child processes with SIGINT back at its default: a shell that starts a command in the
background (`make run &`, a script, CI) makes it ignore SIGINT, and Dagster maps SIGTERM onto its
SIGINT handling, so a `dg dev` started from such a shell could be stopped by neither. Here Ctrl-C
or a SIGTERM to this process asks both children to stop (SIGINT, as a terminal would), waits for
them, and kills whatever is still running after ``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

STOP_TIMEOUT_S = 60


def _restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_dev(port: int, review_port: int) -> int:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "HYDRA_DAGSTER_URL": f"http://127.0.0.1:{port}",
        # dg compares the active virtual environment with the project's .venv
        "VIRTUAL_ENV": sys.prefix,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    children = [
        subprocess.Popen([str(bin_dir / "hydra"), "review", "--port", str(review_port)], env=env,
                         preexec_fn=_restore_sigint, start_new_session=True),
        subprocess.Popen([str(bin_dir / "dg"), "dev", "-p", str(port)], env=env,
                         preexec_fn=_restore_sigint, start_new_session=True),
    ]
    print(f"Dagster UI: http://127.0.0.1:{port}   review: http://127.0.0.1:{review_port}   (Ctrl-C stops both)", flush=True)
    while not stop.is_set() and all(child.poll() is None for child in children):
        stop.wait(0.5)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    codes = []
    for child in children:
        try:
            codes.append(child.wait(timeout=STOP_TIMEOUT_S))
        except subprocess.TimeoutExpired:
            child.kill()
            codes.append(child.wait())
    # stopped on request: a clean exit; a child that died by itself: its code
    return 0 if stop.is_set() else next((code for code in codes if code), 0)
