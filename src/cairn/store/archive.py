"""The archive of purged runs: files, one JSON line per run, written before the runs are
deleted (:mod:`cairn.store.retention`) and read back by ``cairn replay``,
``cairn archive show`` and :func:`cairn.testing.replay_history`.

Layout: ``<root>/<namespace>/<yyyy-mm-dd>/<run id>.jsonl``. One file per purge chunk (up to
a few hundred runs), in the day (UTC) its first run closed, named by that first run's id.
Each line is one run: its row (ids, type, queue, status, times, links, search attributes,
memo, failure) and its events, the shape ``cairn history --json`` prints, so a line is a
history file ``cairn replay`` accepts. Why a file per chunk and not per run: a run is
durable on disk only after an ``fsync``, and one per chunk (plus one of the directory)
costs what one per run would cost 500 times over; a million runs are two thousand files,
not a million. Finding a run: its close day narrows it to that day's directory, and every
line begins with ``{"workflow_id" : ...`` (a ``grep`` finds it, as :func:`find` does).

Crash safety: a chunk's file is written to a temporary name, ``fsync``-ed, renamed into
place and its directory ``fsync``-ed, all before the transaction that deletes the runs
commits. A process killed in between leaves the file and the runs; the next pass locks the
same runs again, in the same order, so its chunk begins with the same run and *replaces*
the file (rename is atomic): nothing is lost, and a file never lists a run twice. A file
is named by a run that still existed when it was written, so a committed chunk's file is
never replaced. (A chunk taken again by another purge, with another filter, may end
differently: runs of the old file that the new one lacks were not deleted, and are archived
again with the chunk that deletes them. A run may then appear in two files, identical: a
closed run does not change. Readers take the first.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from cairn.errors import InputValidationError

__all__ = ["ArchivedRun", "check_uri", "find", "is_json_lines", "path_of", "read_runs", "write_chunk"]

SUFFIX = ".jsonl"
MAX_LINE_BYTES = 1 << 30  # one archived run, as `cairn replay` reads a history file


@dataclass(frozen=True, slots=True)
class ArchivedRun:
    """One archived run: where it is, and its document (the ``cairn history --json`` shape)."""

    path: Path
    document: dict[str, Any]

    @property
    def workflow_id(self) -> str:
        return str(self.document.get("workflow_id"))

    @property
    def run_id(self) -> str:
        return str(self.document.get("run_id"))


def check_uri(uri: str) -> str:
    """An archive location as stored: ``file:///abs/dir`` (an absolute path is taken as one).

    Raises:
        InputValidationError: another scheme, a host, or a relative path.
    """
    text = uri.strip()
    if text.startswith("/"):
        text = "file://" + quote(text)
    parsed = urlparse(text)
    if parsed.scheme != "file":
        raise InputValidationError(f"archive {uri!r}: only file:// archives are supported (file:///var/cairn/archive)")
    if parsed.netloc not in ("", "localhost"):
        raise InputValidationError(f"archive {uri!r}: a file:// URI names no host (file:///dir)")
    path = unquote(parsed.path)
    if not path.startswith("/") or "\x00" in path:
        raise InputValidationError(f"archive {uri!r}: the path must be absolute")
    return "file://" + quote(os.path.normpath(path))


def path_of(uri: str) -> Path:
    """The directory of a checked archive URI (:func:`check_uri`)."""
    return Path(unquote(urlparse(check_uri(uri)).path))


def _namespace_dir(root: Path, namespace: str) -> Path:
    return root / quote(namespace, safe="")


def write_chunk(root: Path, namespace: str, first_run_id: str, first_closed_at: datetime, lines: list[str]) -> Path:
    """Writes one chunk's runs (``lines``, one JSON document each) durably; returns the file.

    The file is complete and on disk (``fsync`` of it and of its directory) when this
    returns; a file of the same chunk written before is replaced whole.
    """
    day = first_closed_at.astimezone(UTC).strftime("%Y-%m-%d")
    directory = _namespace_dir(root, namespace) / day
    _make_dirs(directory)
    path = directory / f"{first_run_id}{SUFFIX}"
    tmp = directory / f".{first_run_id}{SUFFIX}.{os.getpid()}.tmp"
    data = "".join(line.replace("\n", " ") + "\n" for line in lines).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(directory)
    return path


def _make_dirs(directory: Path) -> None:
    """Creates missing directories, each made durable in its parent."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o750)
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_runs(path: str | os.PathLike[str], *, run_id: str | None = None,
              workflow_id: str | None = None) -> Iterator[ArchivedRun]:
    """The runs of an archive file (or of a ``cairn history --json`` file), optionally only
    those of a run id or a workflow id; each run once.

    Raises:
        InputValidationError: the file cannot be read, or a line is not a run's history.
    """
    p = Path(path)
    try:
        f = p.open("rb")
    except OSError as exc:
        raise InputValidationError(f"cannot read {p}: {exc}") from None
    seen: set[str] = set()
    # A cheap test before parsing: the id as it appears in the line, unless JSON escapes it.
    needle = None if workflow_id is None or any(c in workflow_id for c in '"\\') or not workflow_id.isprintable() \
        else workflow_id.encode()
    with f:
        first = f.readline(MAX_LINE_BYTES + 1)
        f.seek(0)
        # JSON lines, or one (indented) `cairn history --json` document, read whole.
        lines: Any = f if _is_json_line(first) else [f.read(MAX_LINE_BYTES + 1)]
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE_BYTES:
                raise InputValidationError(f"{p}: line {number} is over {MAX_LINE_BYTES} bytes")
            if run_id is not None and run_id.encode() not in raw:
                continue
            if needle is not None and needle not in raw:
                continue
            doc = _document(p, number, raw)
            if (run_id is not None and doc.get("run_id") != run_id) or \
                    (workflow_id is not None and doc.get("workflow_id") != workflow_id):
                continue
            key = str(doc.get("run_id"))
            if key in seen:
                continue
            seen.add(key)
            yield ArchivedRun(p, doc)


def _is_json_line(line: bytes) -> bool:
    """Whether a file's first line is a whole JSON object (JSON lines), not the ``{`` that
    opens an indented document."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def is_json_lines(path: str | os.PathLike[str]) -> bool:
    """Whether a file is JSON lines (an archive file, or one line of one), not one
    indented document such as ``cairn history --json`` writes; False if unreadable."""
    try:
        with open(path, "rb") as f:
            return _is_json_line(f.readline(MAX_LINE_BYTES + 1))
    except OSError:
        return False


def _document(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InputValidationError(f"{path} is not a history file (line {number} is not JSON: {exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise InputValidationError(f"{path} is not a history file (line {number}: want the output of "
                                   "`cairn history --json`, or an archive's line)")
    return doc


def find(root: Path, namespace: str, workflow_id: str, *, run_id: str | None = None,
         days: tuple[str, str] | None = None) -> Iterator[ArchivedRun]:
    """The archived runs of a workflow id (of one run id) in a namespace's archive, oldest
    close day first; ``days`` (first, last, as ``yyyy-mm-dd``) limits the days read."""
    base = _namespace_dir(root, namespace)
    if not base.is_dir():
        return
    seen: set[str] = set()
    for day in sorted(d for d in os.listdir(base) if len(d) == 10 and (base / d).is_dir()):
        if days is not None and not days[0] <= day <= days[1]:
            continue
        for name in sorted(n for n in os.listdir(base / day) if n.endswith(SUFFIX) and not n.startswith(".")):
            for run in read_runs(base / day / name, run_id=run_id, workflow_id=workflow_id):
                if run.run_id not in seen:
                    seen.add(run.run_id)
                    yield run
