"""A namespace's retention and archive, and purges (Temporal's namespace retention and
history archival): :meth:`Client.get_namespace_handle` gives a :class:`NamespaceHandle`.

Everything is checked before anything is written (a retention of at least an hour, or
forever; a ``file://`` archive with an absolute path; the filter; the cutoff). A purge
removes closed runs only, in chunks that each archive (when asked) and delete in one
transaction (:mod:`cairn.store.retention`); its preview writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cairn.errors import ConfigurationError, InputValidationError
from cairn.store import archive as archives
from cairn.store import namespaces
from cairn.store import retention as store
from cairn.store.filters import parse_filter
from cairn.store.namespaces import NamespaceSettings
from cairn.store.retention import PurgePreview, PurgeProgress

if TYPE_CHECKING:
    from cairn.client.client import Client

__all__ = ["NamespaceHandle", "NamespaceSettings", "PurgeProgress", "PurgeSummary", "parse_retention"]

MIN_RETENTION = timedelta(hours=1)  # as the schema's CHECK: "0" must not purge every closed run at once
MAX_RETENTION = timedelta(days=36_500)
FOREVER = ("forever", "none", "off", "infinite")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "": 86_400}  # a bare number is days


def parse_retention(value: str | float | timedelta | None, what: str = "retention") -> timedelta | None:
    """A retention or an age: a timedelta, a number of days, or text (``"30d"``, ``"36h"``,
    ``"2w"``, ``"90"`` days; ``"forever"`` or None: no retention).

    Raises:
        InputValidationError: not a duration, or out of range.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in FOREVER):
        return None
    if isinstance(value, timedelta):
        td = value
    elif isinstance(value, bool):
        raise InputValidationError(f"{what}: want a duration such as 30d, 36h or 2w, not {value!r}")
    elif isinstance(value, int | float):
        td = timedelta(days=float(value))
    else:
        m = _DURATION.fullmatch(str(value).strip().lower())
        if m is None:
            raise InputValidationError(f"{what}: want a duration such as 30d, 36h, 2w or a number of days, "
                                       f"or 'forever'; not {str(value)[:40]!r}")
        td = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    if td > MAX_RETENTION:
        raise InputValidationError(f"{what}: at most {MAX_RETENTION.days} days")
    return td


def _check_retention(value: str | float | timedelta | None) -> timedelta | None:
    td = parse_retention(value)
    if td is not None and td < MIN_RETENTION:
        raise InputValidationError(f"retention: at least 1 hour (or 'forever'), not {td.total_seconds():g} s")
    return td


class _Keep:
    """An argument not given: the setting keeps its value."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()
Duration = str | float | timedelta | None


@dataclass
class PurgeSummary:
    """What a purge did (or, for a dry run, would do).

    Attributes:
        runs: runs removed (a dry run: that would be).
        by_status: the runs to remove per status, as the preview counted them before the purge.
        open: runs the filter matched that are open: never purged.
        young: closed runs the filter matched that closed after the cutoff.
        held: closed runs kept because their parent is open or a running batch has yet to act on them.
        events: events removed.
        files: archive files written.
    """

    namespace: str
    filter: str | None
    cutoff: datetime
    dry_run: bool
    runs: int
    by_status: dict[str, int]
    open: int
    young: int
    held: int
    events: int = 0
    chunks: int = 0
    seconds: float = 0.0
    archive: str | None = None
    files: list[str] | None = None
    sample: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class NamespaceHandle:
    """A namespace's settings (retention, archive) and purges.

    Attributes:
        namespace: the namespace.
    """

    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"NamespaceHandle(namespace={self.namespace!r})"

    async def describe(self) -> NamespaceSettings:
        """Its retention (None: forever) and archive URI (None: none)."""
        return await self.client._read(lambda c: namespaces.get_settings(c, self.namespace))

    async def list_all(self) -> list[NamespaceSettings]:
        """Every namespace with runs or settings, with its retention and archive."""
        return await self.client._read(namespaces.list_settings)

    async def update(self, *, retention: Duration | _Keep = KEEP, archive: str | _Keep | None = KEEP
                     ) -> NamespaceSettings:
        """Sets the retention (a timedelta, days, ``"30d"``; None or ``"forever"``: keep
        closed runs forever) and/or the archive (``file:///dir``; None: no archive); an
        argument not given keeps its value. Workers remove closed runs past the retention,
        archiving each first when an archive is set.

        Raises:
            InputValidationError: a retention under an hour, or an archive that is not an
                absolute ``file://`` path; nothing was written.
        """
        set_retention, set_archive = not isinstance(retention, _Keep), not isinstance(archive, _Keep)
        if not (set_retention or set_archive):
            raise InputValidationError("update what? give retention= and/or archive=")
        td = None if isinstance(retention, _Keep) else _check_retention(retention)
        uri = None if isinstance(archive, _Keep) or archive is None else archives.check_uri(archive)
        return await self.client._write(
            lambda c: namespaces.set_settings(c, self.namespace, retention=td, set_retention=set_retention,
                                              archive_uri=uri, set_archive=set_archive),
            what=f"updating namespace {self.namespace!r}", check="see `cairn namespace describe`")

    async def purge(self, *, where: str | None = None, older_than: Duration = None,
                    archive: str | Path | bool = True, dry_run: bool = False, busy: float = store.BUSY_OPERATOR,
                    chunk_size: int = store.CHUNK_SIZE, on_progress: store.OnChunk | None = None) -> PurgeSummary:
        """Removes the closed runs ``where`` matches (every closed run without it) that
        closed more than ``older_than`` ago (any time without it), with everything of
        theirs; open runs are never purged.

        Args:
            archive: True: the namespace's archive, if it has one; a directory or
                ``file://`` URI: archive there; False: do not archive.
            dry_run: count what would be purged; write nothing.
            busy: the fraction of time spent purging (it pauses in between, so the
                workflows running meanwhile keep the rest of the database).
            on_progress: called after each chunk with the progress so far.

        Raises:
            InputValidationError: a bad filter, age, archive or chunk size; nothing was written.
            ConfigurationError: the archive could not be written (the runs of that chunk stay).
        """
        flt = parse_filter(where) if where is not None else store.ALL_RUNS
        age = parse_retention(older_than, "older_than")
        if not 1 <= chunk_size <= 10_000:
            raise InputValidationError("chunk_size: from 1 to 10000 runs per transaction")
        if not 0.0 < busy <= 1.0:
            raise InputValidationError("busy: a fraction of time above 0, at most 1")
        directory = await self._archive_dir(archive)
        preview: PurgePreview = await self.client._read(
            lambda c: store.preview(c, self.namespace, flt, older_than=age))
        summary = PurgeSummary(self.namespace, where, preview.cutoff, dry_run, preview.matched, preview.purge,
                               preview.open, preview.young, preview.held,
                               archive=None if directory is None else str(directory))
        if dry_run:
            summary.sample = [{"workflow_id": w, "run_id": r, "status": s, "closed_at": c}
                              for w, r, s, c in preview.sample]
            return summary
        try:
            done = await store.purge_in(self.client.pool, self.namespace, flt=flt, cutoff=preview.cutoff,
                                        archive_dir=directory, chunk_size=chunk_size, busy=busy,
                                        on_chunk=on_progress)
        except OSError as exc:
            raise ConfigurationError(f"cannot write the archive in {directory}: {exc}; the runs of the chunk "
                                     "being archived were kept (chunks done before it stay purged)") from None
        summary.runs, summary.events, summary.chunks, summary.seconds, summary.files = (
            done.runs, done.events, done.chunks, done.seconds, done.files)
        return summary

    async def _archive_dir(self, archive_to: str | Path | bool) -> Path | None:
        if archive_to is False:
            return None
        if archive_to is True:
            uri = (await self.describe()).archive_uri
            return None if uri is None else archives.path_of(uri)
        return archives.path_of(str(archive_to))
