"""Stopping a child process, shared by the harness and cairn's runners (stdlib only)."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def terminate(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM ``proc``, give it ``grace`` seconds to exit, then SIGKILL; always reaps it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
