"""The web view's HTTP handlers without a browser: real runs, real database, real HTTP.

Escaping of everything user-controlled, 404s and 400s, the JSON API, the read-only pool,
the Host check, and ``cairn ui`` itself as a subprocess."""

from __future__ import annotations

import asyncio
import re
import sys
from urllib.parse import quote

import httpx
import psycopg
import pytest

from cairn.ui import connect_read_only

from .ui_support import EVIL_ID, LLM_COST, populate, reset_providers, ui_server


@pytest.fixture
async def runs(client, start_worker, fake_llm):
    try:
        yield await populate(client, start_worker, fake_llm)
    finally:
        reset_providers()


async def get(base: str, path: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=20) as http:
        return await http.get(path, **kwargs)


async def test_list_page_escapes_ids_and_counts_statuses(runs, db_url):
    async with ui_server(db_url) as base:
        page = await get(base, "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script
    assert "default-src 'none'" in page.headers["content-security-policy"]
    text = page.text
    assert "<script" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;/pay&amp;&lt;b&gt;" in text
    # The link to the run percent-encodes the whole id (the slash too).
    assert f'href="/runs/{quote(EVIL_ID, safe="")}?run_id=' in text.replace("&amp;", "&").replace("&#x27;", "'")
    counts = dict(re.findall(r'data-status="(\w*)" href="[^"]*">\w+<b>(\d+)</b>', text))
    assert counts == {"running": "1", "completed": "2", "failed": "2"}
    assert re.search(r'data-status="">all<b>5</b>', text)
    assert len(re.findall(r'<tr class="run"', text)) == 5


async def test_run_page_escapes_failure_and_payloads(runs, db_url):
    handle = runs["payment"]
    async with ui_server(db_url) as base:
        page = await get(base, f"/runs/{quote(EVIL_ID, safe='')}", params={"run_id": handle.run_id})
    assert page.status_code == 200, page.text
    text = page.text
    assert "<script" not in text
    assert "<img" not in text
    assert "card declined for 42 &lt;img src=x onerror=alert(1)&gt;" in text
    assert 'id="run-failure"' in text
    assert "Traceback (most recent call last)" in text  # the activity's stack, collapsed
    assert '<h1 id="workflow-id">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;/pay&amp;&lt;b&gt;</h1>' in text


async def test_not_found_and_bad_input(runs, db_url):
    async with ui_server(db_url) as base:
        missing = await get(base, "/runs/" + quote("<nope>", safe=""))
        api_missing = await get(base, "/api/runs/nope")
        bad_run_id = await get(base, "/runs/pipeline-1", params={"run_id": "<x>"})
        nowhere = await get(base, "/no/such/page")
        bad_filter = await get(base, "/", params={"where": 'customer = <script>'})
        api_bad_filter = await get(base, "/api/runs", params={"where": "amount >"})
        bad_status = await get(base, "/api/runs", params={"status": "sleeping"})
        bad_limit = await get(base, "/api/runs", params={"limit": "lots"})
        async with httpx.AsyncClient(base_url=base) as http:
            post = await http.post("/api/runs")
    assert missing.status_code == 404
    assert "&lt;nope&gt;" in missing.text
    assert "<nope>" not in missing.text
    assert api_missing.status_code == 404
    assert "nope" in api_missing.json()["error"]
    assert bad_run_id.status_code == 400
    assert "&lt;x&gt;" in bad_run_id.text
    assert nowhere.status_code == 404
    assert bad_filter.status_code == 400
    assert 'id="error"' in bad_filter.text
    assert "<script" not in bad_filter.text
    assert 'value="customer = &lt;script&gt;"' in bad_filter.text  # the form keeps the filter
    assert api_bad_filter.status_code == 400
    assert api_bad_filter.json()["error"]
    assert bad_status.status_code == 400
    assert "sleeping" in bad_status.json()["error"]
    assert bad_limit.status_code == 400
    assert post.status_code == 405  # read-only: GET only


async def test_json_api(runs, db_url):
    async with ui_server(db_url) as base:
        listing = (await get(base, "/api/runs")).json()
        failed = (await get(base, "/api/runs", params={"status": "failed"})).json()
        typed = (await get(base, "/api/runs", params={"where": 'WorkflowType = "ui_trip"'})).json()
        llm = (await get(base, "/api/runs/summary-1")).json()
        trip = (await get(base, "/api/runs/trip-lisbon")).json()
    assert listing["counts"] == {"running": 1, "completed": 2, "failed": 2}
    assert len(listing["runs"]) == 5
    assert sorted(r["workflow_id"] for r in failed["runs"]) == sorted([EVIL_ID, "trip-lisbon"])
    assert [r["workflow_id"] for r in typed["runs"]] == ["trip-lisbon"]
    assert typed["counts"] == {"failed": 1}
    assert llm["description"]["llm_totals"]["output_tokens"] == 50
    assert f"${llm['description']['llm_totals']['cost_usd']:.6f}" == LLM_COST
    assert [b["kind"] for b in llm["timeline"]["bars"]] == ["llm"]
    kinds = [b["kind"] for b in trip["timeline"]["bars"]]
    assert kinds == ["activity", "activity", "activity", "compensation", "compensation"]
    assert trip["description"]["sagas"][0]["status"] == "compensated"


async def test_an_open_runs_page_refreshes_itself_until_it_closes(runs, db_url, client):
    """The defect: the page of a running run never refreshed. The timer that run waits on
    ends its bar at its fire time, with a "now" mark before it."""
    refresh = re.compile(r'<meta http-equiv="refresh" content="(\d+)">')
    async with ui_server(db_url) as base:
        waiting = (await get(base, "/runs/waiting-1")).text
        closed = (await get(base, "/runs/pipeline-1")).text
        listing = (await get(base, "/")).text
        timeline = (await get(base, "/api/runs/waiting-1")).json()["timeline"]
        await client.get_handle("waiting-1").terminate("closed by the test")
        terminated = (await get(base, "/runs/waiting-1")).text
    assert [int(x) for x in refresh.findall(waiting)] == [5]
    assert refresh.findall(closed) == []
    assert refresh.findall(terminated) == []
    assert refresh.findall(listing) == []
    (timer,) = [b for b in timeline["bars"] if b["kind"] == "timer"]
    assert timer["status"] == "waiting"
    assert timer["end"] == timeline["end"], "the timeline reaches the fire time"
    assert [m["kind"] for m in timeline["marks"]].count("now") == 1


async def test_pool_is_read_only(db_url):
    client = await connect_read_only(db_url)
    try:
        async with client.pool.connection() as c:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await c.execute("DELETE FROM cairn.runs")
    finally:
        await client.close()


async def test_refuses_foreign_host_header(runs, db_url):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host.
    async with ui_server(db_url) as base:
        foreign = await get(base, "/api/runs", headers={"Host": "evil.example"})
        local = await get(base, "/api/runs", headers={"Host": "localhost:1234"})
    assert foreign.status_code == 403
    assert local.status_code == 200


async def test_cairn_ui_command_serves_and_stops(runs, db_url):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from cairn.cli import main; main()", "--database-url", db_url,
        "ui", "--port", "0", "--no-open", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert match, line
        page = await get(match.group(1), "/", params={"status": "running"})
        assert page.status_code == 200
        assert "waiting-1" in page.text
        assert "pipeline-1" not in page.text
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err  # SIGTERM stops it cleanly


def test_cairn_ui_refuses_bad_port():
    from click.testing import CliRunner

    from cairn.cli import main

    result = CliRunner().invoke(main, ["ui", "--port", "70000"])
    assert result.exit_code == 2
    assert "70000" in result.output
