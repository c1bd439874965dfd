"""What the worker's hot statements cost Postgres per call, in instructions: two versions.

    python bench/setup_cost.py --before ../before --after . [--calls 200]

Each of ``--before`` and ``--after`` is a checkout with its own ``.venv`` (as for
bench/statements.py). On a private cluster of the system's PostgreSQL, migrated once per
version by its own CLI, the postmaster is restarted under valgrind's callgrind (``apt-get
install valgrind``), and each case is run in a session of its own: its statement PREPAREd
as a worker prepares it (generic plan, worker session options), executed once, then
``--calls`` times; the same without the calls is subtracted, so what is left is the cost of
one call. Cases: the workflow claim with nothing to claim, the record with nothing to
write, the record of a task that schedules one activity (leased eagerly) and of one that
closes its run (both rolled back, BEGIN and ROLLBACK included).

Instruction counts do not drift with the machine (wall-clock time on a shared 2-core
machine drifts by a third between runs): a plan node's set-up, paid at every call whether
it has rows or not, shows here and in no EXPLAIN. What this found (2026-12-07) is in
bench/README.md ("Measurements behind design decisions").
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pgcluster  # noqa: E402
import psycopg  # noqa: E402
from statements import system_pg_bin  # noqa: E402

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PARAM = re.compile(r"%\((\w+)\)s")
# As cairn.worker.WORKER_CONNECTION_OPTIONS (without the idle-in-transaction cap).
OPTIONS = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off"
RUN_ID = str(uuid.UUID(int=1))


def statements(tree: Path) -> dict[str, str]:
    """A checkout's named statements, whole-line comments dropped (as cairn.store.sql)."""
    text = (tree / "src/cairn/store/queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    return {name: "\n".join(line for line in body.strip().splitlines() if not line.lstrip().startswith("--"))
            for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _task(close: bool) -> list[dict[str, Any]]:
    activity = {"seq": 3, "activity_type": "inc", "queue": "default", "input": [1], "eager": True,
                "options": {"start_to_close_timeout": 60, "schedule_to_close_timeout": 600,
                            "heartbeat_timeout": None}}
    last = ({"seq": 3, "type": "WorkflowCompleted", "data": {"result": 2}} if close else
            {"seq": 3, "type": "ActivityScheduled", "data": {"activity": "inc", "input": [1]}})
    return [{"run_id": RUN_ID, "workflow_id": "w", "workflow_type": "one_step", "workflow_queue": "default",
             "events": [{"seq": 2, "type": "WorkflowTaskStarted", "data": {"time": 0, "worker": "w"}}, last],
             "activities": [] if close else [activity], "close_status": "completed" if close else None,
             "failure": None}]


def cases() -> dict[str, tuple[str, dict[str, Any], bool]]:
    """name -> (statement, parameters, rolled back)."""
    empty = {"now": None, "tasks": "[]", "inbox_ids": [], "run_ids": [], "closing": [], "notify_queues": [],
             "namespace": "default", "worker": "w", "lease": 30.0}
    return {
        "claim (nothing ready)": ("claim_workflow_task", {"now": None, "queues": ["default"], "types": ["nothing"],
                                                          "namespace": "default", "limit": 64, "low": False}, False),
        "record (nothing to write)": ("record_workflow_tasks", empty, False),
        "record (schedules 1 activity)": ("record_workflow_tasks", {
            **empty, "tasks": json.dumps(_task(False)), "run_ids": [RUN_ID]}, True),
        "record (closes its run)": ("record_workflow_tasks", {
            **empty, "tasks": json.dumps(_task(True)), "run_ids": [RUN_ID], "closing": [RUN_ID]}, True),
    }


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        value = "{" + ",".join(str(v) for v in value) + "}"
    return "'" + str(value).replace("'", "''") + "'"


def session(dsn: str, out_dir: Path, sql: str, params: dict[str, Any], rollback: bool, calls: int) -> int:
    """Instructions of one session that prepares ``sql`` and runs it 1 + ``calls`` times."""
    names = list(dict.fromkeys(_PARAM.findall(sql)))
    for i, name in enumerate(names, 1):
        sql = sql.replace(f"%({name})s", f"${i}")
    execute = f"EXECUTE s({', '.join(_literal(params[n]) for n in names)})" if names else "EXECUTE s"
    with psycopg.connect(dsn, autocommit=True, options=OPTIONS) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"PREPARE s AS {sql}")
        for _ in range(1 + calls):
            if rollback:
                conn.execute("BEGIN")
            conn.execute(execute)
            if rollback:
                conn.execute("ROLLBACK")
    path = out_dir / f"cg.{pid}"
    for _ in range(1200):  # callgrind writes its file as the backend exits
        if path.exists() and (m := re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)):
            return int(m.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"no callgrind output for backend {pid}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--pg-bin", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing (apt-get install valgrind)")
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    cluster = pgcluster.Cluster(bin_dir=a.pg_bin or system_pg_bin(), extra={"autovacuum": "off"})
    cluster.start()
    server: subprocess.Popen[bytes] | None = None
    try:
        for version, tree in trees.items():
            dsn = cluster.create_db(version)
            subprocess.run([str(tree / ".venv/bin/cairn"), "--database-url", dsn, "db", "migrate"],
                           capture_output=True, check=True)
            with cluster.connect(version) as c:  # the run the records write to (rolled back)
                c.execute("INSERT INTO cairn.runs (run_id, workflow_id, workflow_type, queue) "
                          "VALUES (%s, 'w', 'one_step', 'default')", [RUN_ID])
                c.execute("INSERT INTO cairn.workflow_tasks (run_id, queue, workflow_type) "
                          "VALUES (%s, 'default', 'one_step')", [RUN_ID])
        cluster._run("pg_ctl", ["-D", str(cluster.pgdata), "-m", "fast", "-w", "stop"], timeout=60)
        out_dir = cluster.base_dir / "callgrind"
        out_dir.mkdir()
        if cluster.system_user:
            shutil.chown(out_dir, cluster.system_user)
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out_dir}/cg.%p",
             str(cluster.bin / "postgres"), "-D", str(cluster.pgdata)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(cluster.base_dir),
            **({"user": cluster.system_user} if cluster.system_user else {}))
        for _ in range(600):
            try:
                with cluster.connect() as c:
                    c.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                time.sleep(0.5)
        results: dict[str, dict[str, float]] = {}
        for version, tree in trees.items():
            texts = statements(tree)
            dsn = cluster.dsn(version)
            session(dsn, out_dir, "SELECT 1", {}, False, 0)  # the first session fills the caches
            for case, (name, params, rollback) in cases().items():
                if not a.json:
                    print(f"  {version}: {case} ...", file=sys.stderr, flush=True)
                base = session(dsn, out_dir, texts[name], params, rollback, 0)
                more = session(dsn, out_dir, texts[name], params, rollback, a.calls)
                results.setdefault(case, {})[version] = (more - base) / a.calls
        if a.json:
            print(json.dumps({"calls": a.calls, "instructions_per_call": results}))
            return
        print(f"\nInstructions per call (callgrind, {a.calls} calls; worker session options, generic plans)")
        print(f"{'case':34s} {'before':>12s} {'after':>12s} {'after/before':>13s}")
        for case, r in results.items():
            print(f"{case:34s} {r['before']:12,.0f} {r['after']:12,.0f} {r['after'] / r['before']:13.2f}")
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()
        if server is None:
            cluster.stop()
        else:
            shutil.rmtree(cluster.base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
