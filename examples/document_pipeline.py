"""A document pipeline: upload -> chunk -> embed -> summarize (LLM) -> notify, for a batch
of 1,000 documents fanned out with a concurrency limit.

- The app uploads the batch (rows in ``documents``) and starts one ``process_batch`` run.
- ``process_batch`` runs one child workflow per document, at most ``concurrency`` at a
  time (a few "lanes" taking the next document: plain asyncio in workflow code).
- Each ``process_document`` child chunks the text, embeds the chunks (a deterministic
  hashing embedding: no model needed), summarizes with an LLM through ``cairn.llm.chat``,
  and notifies; every step is an idempotent activity keyed by its idempotency key.
- Kill a worker half-way (``kill -9``): another worker carries on from the histories, and
  every document is processed, and notified, exactly once.
- Progress: ``cairn query BATCH progress`` asks the run; the ``done`` search attribute is
  upserted every 50 documents (``cairn list --where 'done >= 500'``).

Run it: ``python examples/document_pipeline.py [--documents N]`` (embedded Postgres, or
``CAIRN_DATABASE_URL`` after ``cairn db migrate``), with a fake LLM provider in-process; or
run workers yourself: ``CAIRN_LLM_PROVIDERS=providers.toml cairn worker -m document_pipeline``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import re
import time
import uuid
from datetime import timedelta

import psycopg
from pydantic import BaseModel

from cairn import Client, QueryFailed, Worker, activity, workflow
from cairn.llm import ChatRequest, chat, configure_providers
from cairn.llm import fake as f

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (id text PRIMARY KEY, batch text NOT NULL, body text NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (doc_id text NOT NULL, n int NOT NULL, body text NOT NULL, PRIMARY KEY (doc_id, n));
CREATE TABLE IF NOT EXISTS embeddings (doc_id text NOT NULL, n int NOT NULL, vector float8[] NOT NULL,
                                       PRIMARY KEY (doc_id, n));
CREATE TABLE IF NOT EXISTS notifications (idempotency_key text PRIMARY KEY, doc_id text NOT NULL,
                                          summary text NOT NULL, at timestamptz NOT NULL DEFAULT now());
"""
MODEL = "gpt-4o-mini"
DIMENSIONS = 64
CHUNK_CHARS = 240
STEP = timedelta(seconds=60)
SENTENCES = ["Cairn keeps every workflow decision in Postgres.", "Workers claim tasks with SKIP LOCKED.",
             "A killed worker loses its leases, and another one carries on.", "Timers are rows, not sleeping threads.",
             "Each activity result is recorded exactly once.", "Replays rebuild state from history."]


class Batch(BaseModel):
    id: str
    documents: list[str]
    concurrency: int = 20


def app_db() -> str:
    return os.environ["CAIRN_DATABASE_URL"]


# ---------------------------------------------------------------- the steps (activities)


@activity.defn
async def chunk_document(doc_id: str) -> list[str]:
    """Splits the document into chunks of up to CHUNK_CHARS characters, at sentence ends."""
    async with await psycopg.AsyncConnection.connect(app_db(), autocommit=True) as conn:
        row = await (await conn.execute("SELECT body FROM documents WHERE id = %s", (doc_id,))).fetchone()
        assert row is not None, f"no document {doc_id}"
        pieces: list[str] = []
        for sentence in re.split(r"(?<=\.)\s+", row[0]):
            if pieces and len(pieces[-1]) + len(sentence) < CHUNK_CHARS:
                pieces[-1] += " " + sentence
            else:
                pieces.append(sentence)
        async with conn.cursor() as cur:
            await cur.executemany("INSERT INTO chunks VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                                  [(doc_id, n, body) for n, body in enumerate(pieces)])
    return pieces


def embed(text: str) -> list[float]:
    """A deterministic hashing embedding: each word adds +-1 to one of DIMENSIONS slots."""
    vector = [0.0] * DIMENSIONS
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[digest[0] % DIMENSIONS] += 1.0 if digest[1] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@activity.defn
async def embed_chunks(doc_id: str, chunks: list[str]) -> int:
    async with await psycopg.AsyncConnection.connect(app_db(), autocommit=True) as conn, conn.cursor() as cur:
        await cur.executemany("INSERT INTO embeddings VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                              [(doc_id, n, embed(c)) for n, c in enumerate(chunks)])
    return len(chunks)


@activity.defn
async def notify(doc_id: str, summary: str) -> None:
    """Tells the document's owner; the idempotency key makes a retried notice a no-op."""
    async with await psycopg.AsyncConnection.connect(app_db(), autocommit=True) as conn:
        await conn.execute("INSERT INTO notifications (idempotency_key, doc_id, summary) VALUES (%s, %s, %s) "
                           "ON CONFLICT DO NOTHING", (activity.info().idempotency_key, doc_id, summary))


# ---------------------------------------------------------------- the workflows


@workflow.defn
async def process_document(doc_id: str) -> str:
    chunks = await workflow.execute_activity(chunk_document, doc_id, start_to_close_timeout=STEP)
    await workflow.execute_activity(embed_chunks, doc_id, chunks, start_to_close_timeout=STEP)
    reply = await chat(ChatRequest(model=MODEL, max_tokens=60, messages=[
        {"role": "user", "content": "Summarize in one sentence:\n" + "\n".join(chunks)}]))
    await workflow.execute_activity(notify, doc_id, reply.text, start_to_close_timeout=STEP)
    return reply.text


@workflow.defn
async def process_batch(batch: Batch) -> dict[str, int]:
    todo = list(batch.documents)
    progress = {"total": len(todo), "done": 0, "running": 0}
    workflow.set_query_handler("progress", lambda: progress)

    async def lane() -> None:  # takes the next document until none is left
        while todo:
            doc_id = todo.pop(0)
            progress["running"] += 1
            await workflow.execute_child_workflow(process_document, doc_id, id=f"{batch.id}/{doc_id}")
            progress["running"] -= 1
            progress["done"] += 1
            if progress["done"] % 50 == 0 or progress["done"] == progress["total"]:
                workflow.upsert_search_attributes({"done": progress["done"]})

    await asyncio.gather(*(lane() for _ in range(batch.concurrency)))
    return progress


# ---------------------------------------------------------------- the app


async def upload(conn: psycopg.AsyncConnection, batch_id: str, count: int) -> list[str]:
    """Stores ``count`` generated documents; returns their ids."""
    docs = [(f"{batch_id}-d{i:04}", batch_id,
             " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3 + i % 5))) for i in range(count)]
    async with conn.cursor() as cur:
        await cur.executemany("INSERT INTO documents VALUES (%s, %s, %s)", docs)
    return [d[0] for d in docs]


async def main(documents: int) -> None:
    with f.running_fake() as fake:
        fake.script([], default=f.ok("A short summary.", input_tokens=120, output_tokens=6))
        configure_providers([fake.provider_config(models=[MODEL])])
        async with await Client.connect() as client:
            os.environ.setdefault("CAIRN_DATABASE_URL", client.url)  # where the activities find the app's tables
            async with await psycopg.AsyncConnection.connect(client.url, autocommit=True) as conn:
                await conn.execute(SCHEMA)
                batch_id = f"batch-{uuid.uuid4().hex[:6]}"
                batch = Batch(id=batch_id, documents=await upload(conn, batch_id, documents))
            async with Worker(client.url, workflows=[process_batch, process_document],
                              activities=[chunk_document, embed_chunks, notify], workflow_concurrency=8):
                started = time.monotonic()
                handle = await client.start(process_batch, batch, id=batch_id)
                print(f"started {batch_id}: watch it with `cairn query {batch_id} progress`")
                while (await handle.describe()).status == "running":
                    await asyncio.sleep(2)
                    with contextlib.suppress(QueryFailed):  # before its first task the run has no handler
                        print(f"  {await handle.query('progress')}", flush=True)
                print(f"{await handle.result()} in {time.monotonic() - started:.1f} s; "
                      f"{len(fake.requests())} model calls")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the document pipeline example")
    parser.add_argument("--documents", type=int, default=1000)
    asyncio.run(main(parser.parse_args().documents))
