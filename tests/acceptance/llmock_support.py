"""LLMock (PyPI ``llmock``, a mock LLM server this team did not write) for the acceptance
tests: ``llmock serve`` on a free loopback port (the ``llmock_serve`` fixture) and its
journal, scenario and verdict endpoints (:class:`Mock`). Used by test_llm_third_party.py and
test_llm_third_party_agent.py; the tests skip when ``llmock`` cannot be imported (it is in
the dev extras), this module does not import it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cairn.llm.fake import call_key
from support import TIMEOUT, wait_for

LLMOCK = str(Path(sys.executable).parent / "llmock")
# With the workers fixture's 2 s lease, two busy cores let a worker's renewals fall 2 s
# behind and its calls were taken over and paid twice: no LLMock test needs a short lease
# (the agent test's kill waits for this one to lapse).
LEASE_SECONDS = 30.0


@dataclass
class Mock:
    root: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def requests(self) -> list[dict[str, Any]]:
        """The journal, oldest first, each with the call key of its body."""
        records = httpx.get(f"{self.root}/_llmock/requests", timeout=30).json()["requests"]
        return [{**r, "call": call_key(r.get("body"))} for r in records if r["path"] == "/v1/chat/completions"]

    def scenario(self, *behaviors: dict[str, Any]) -> None:
        r = httpx.post(f"{self.root}/_llmock/scenario", json={"behaviors": list(behaviors)}, timeout=10)
        assert r.status_code == 201, r.text

    def verdict(self) -> dict[str, Any]:
        return httpx.get(f"{self.root}/_llmock/verdict", timeout=30).json()  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def llmock_serve(tmp_path: Path) -> Iterator[Callable[..., Mock]]:
    """``llmock_serve(*flags)`` runs ``llmock serve`` on a free loopback port until teardown."""
    started: list[Mock] = []

    def start(*flags: str) -> Mock:
        port = free_port()
        log_path = tmp_path / f"llmock-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([LLMOCK, "serve", "--host", "127.0.0.1", "--port", str(port),
                                     "--log-level", "warning", "--tool-mode", "off", *flags],
                                    stdout=log, stderr=subprocess.STDOUT)
        mock = Mock(f"http://127.0.0.1:{port}", proc, log_path)
        started.append(mock)

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"llmock exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                return httpx.get(f"{mock.root}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for("llmock to serve", up, timeout=TIMEOUT)
        return mock

    yield start
    for mock in started:
        mock.proc.terminate()
        try:
            mock.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mock.proc.kill()
            mock.proc.wait(timeout=10)
