"""examples/document_pipeline.py end to end: a batch fanned out over child workflows with a
concurrency limit, a worker killed (kill -9) half-way and another one finishing, every
document notified exactly once, progress read through the CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import document_pipeline as ex
import psycopg
import pytest
from acceptance_support import cairn_cli

from cairn import Client
from cairn.llm import fake as f
from support import WorkerProc, clean_env, query, spawn_worker, wait_for

pytestmark = pytest.mark.acceptance
DOCUMENTS = 200  # the example's default is 1,000; 200 keep the suite fast on 2 cores
EXAMPLES = Path(ex.__file__).resolve().parent


@pytest.fixture
def pipeline_workers(db_url, fake_llm, tmp_path):
    """``start(name)``: a ``cairn worker -m document_pipeline`` subprocess on the test database,
    with the fake provider as its LLM provider (CAIRN_LLM_PROVIDERS). Killed at teardown."""
    providers = tmp_path / "providers.toml"
    providers.write_text(f'[[providers]]\nname = "fake"\nbase_url = "{fake_llm.url}"\nmodels = ["{ex.MODEL}"]\n')
    started: list[WorkerProc] = []

    def start(name: str) -> WorkerProc:
        worker = spawn_worker(name, db_url, "document_pipeline", cwd=EXAMPLES, log_path=tmp_path / f"worker-{name}.log",
                              options=["--lease-seconds", "2", "--poll-interval", "0.2"],
                              extra=["--workflow-concurrency", "8"],
                              env=clean_env(CAIRN_DATABASE_URL=db_url, CAIRN_LLM_PROVIDERS=str(providers)))
        started.append(worker)
        worker.wait_started()
        return worker

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(timeout=60)


def test_a_batch_survives_a_worker_kill_and_notifies_every_document_once(db_url, fake_llm, pipeline_workers):
    fake_llm.script([], default=f.ok("A short summary.", input_tokens=120, output_tokens=6))
    query(db_url, ex.SCHEMA)

    async def start_batch() -> list[str]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            docs = await ex.upload(conn, "b1", DOCUMENTS)
        async with await Client.connect(db_url) as client:
            await client.start(ex.process_batch, ex.Batch(id="b1", documents=docs, concurrency=10), id="b1")
        return docs

    a = pipeline_workers("a")
    docs = asyncio.run(start_batch())

    def notified() -> int:
        return int(query(db_url, "SELECT count(*) FROM notifications")[0][0])

    wait_for("half the batch", lambda: notified() >= DOCUMENTS // 2, procs=(a,))
    progress = cairn_cli("query", "b1", "progress", "--json", db_url=db_url)
    assert progress.code == 0, progress.err
    seen = json.loads(progress.out)["answer"]
    assert seen["total"] == DOCUMENTS
    assert 0 < seen["done"] < DOCUMENTS
    assert 0 < seen["running"] <= 10, "at most `concurrency` documents in flight"
    a.kill9()
    killed_at = notified()
    assert killed_at < DOCUMENTS, "the kill came half-way"

    b = pipeline_workers("b")
    wait_for("the batch to complete", lambda: query(db_url, "SELECT status FROM cairn.runs WHERE workflow_id = 'b1'")
             == [("completed",)], timeout=90, procs=(a, b))

    final = json.loads(cairn_cli("query", "b1", "progress", "--json", db_url=db_url).out)["answer"]
    assert final == {"total": DOCUMENTS, "done": DOCUMENTS, "running": 0}
    listed = cairn_cli("list", "--where", f"done = {DOCUMENTS}", "--json", db_url=db_url)
    assert [r["workflow_id"] for r in json.loads(listed.out)["runs"]] == ["b1"], "the done search attribute is current"
    # Every document: one completed child run, one notification, all chunks embedded.
    assert query(db_url, "SELECT doc_id, count(*) FROM notifications GROUP BY doc_id HAVING count(*) <> 1") == []
    assert sorted(d for (d,) in query(db_url, "SELECT doc_id FROM notifications")) == docs
    runs = query(db_url, "SELECT workflow_id, status FROM cairn.runs WHERE workflow_id LIKE 'b1/%'")
    assert len(runs) == DOCUMENTS
    assert {s for _, s in runs} == {"completed"}
    assert query(db_url, "SELECT count(*) FROM chunks c LEFT JOIN embeddings e USING (doc_id, n) "
                         "WHERE e.vector IS NULL") == [(0,)]
    # One recorded outcome per activity in every history, though attempts were cut by the kill.
    assert query(db_url, """
        SELECT count(*) FROM cairn.history s WHERE s.type = 'ActivityScheduled' AND (
            SELECT count(*) FROM cairn.history o WHERE o.run_id = s.run_id
              AND o.type IN ('ActivityCompleted', 'ActivityFailed') AND (o.data ->> 'activity_seq')::int = s.seq) <> 1
        """) == [(0,)]
    assert len(fake_llm.requests()) >= DOCUMENTS
    assert b.log().count(" running ") >= 1
