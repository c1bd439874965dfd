"""`cairn list` a page at a time: it says how many runs there are and how to get the next
page (a keyset token, stable while runs are started), and `--json` has one shape with or
without `--where`. Runs are started without a worker: listing only reads them."""

from __future__ import annotations

import asyncio
import json
import re

from cairn import Client, workflow
from support import bad_input, cairn, ok

LISTING_KEYS = {"runs", "total", "next_page_token"}


@workflow.defn
async def paged(n: int) -> int:
    return n


async def _start(db_url: str, ids: list[str]) -> None:
    client = await Client.connect(db_url)
    try:
        for workflow_id in ids:
            await client.start(paged, 1, id=workflow_id, search_attributes={"batch": "p"})
    finally:
        await client.close()


def _ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:] if line.startswith("run-")]


def _footer(out: str) -> str:
    return out.rstrip().splitlines()[-1]


def _token(footer: str) -> str:
    m = re.fullmatch(r".* \(next page: --page-token (\S+)\)", footer)
    assert m, footer
    return m[1]


def test_list_says_it_stops_at_50_and_pages_on(db_url):
    """The defect: `cairn list` stopped at 50 rows without saying so."""
    names = [f"run-{i:02}" for i in range(52)]
    asyncio.run(_start(db_url, names))
    newest_first = names[::-1]

    first = ok(cairn(db_url, "list"))
    assert _ids(first) == newest_first[:50]
    footer = _footer(first)
    assert footer.startswith("50 of 52 runs (next page: --page-token ")
    second = ok(cairn(db_url, "list", "--page-token", _token(footer)))
    assert _ids(second) == newest_first[50:]
    assert _footer(second) == "51-52 of 52 runs"


def test_pages_stay_put_while_runs_start(db_url):
    names = [f"run-{i}" for i in range(7)]
    asyncio.run(_start(db_url, names))
    newest_first = names[::-1]
    first = ok(cairn(db_url, "list", "--limit", "3"))
    assert _ids(first) == newest_first[:3]
    token = _token(_footer(first))
    asyncio.run(_start(db_url, ["run-new"]))  # a newer run: it goes before page 1, shifts nothing
    second = ok(cairn(db_url, "list", "--limit", "3", "--page-token", token))
    assert _ids(second) == newest_first[3:6]
    assert _footer(second).startswith("5-7 of 8 runs (next page: --page-token ")
    third = ok(cairn(db_url, "list", "--limit", "3", "--page-token", _token(_footer(second))))
    assert _ids(third) == newest_first[6:]
    assert _footer(third) == "8 of 8 runs"
    # Everything fits on one page: no footer, as before.
    assert _ids(ok(cairn(db_url, "list"))) == ["run-new", *newest_first]
    assert not _footer(ok(cairn(db_url, "list"))).endswith("runs")


def test_list_json_has_one_shape_with_or_without_where(db_url):
    """The defect: a bare list of rows, which carried search attributes only with --where."""
    asyncio.run(_start(db_url, ["run-a", "run-b", "run-c"]))
    plain = json.loads(ok(cairn(db_url, "list", "--json", "--limit", "2")))
    filtered = json.loads(ok(cairn(db_url, "list", "--json", "--limit", "2", "--where", 'batch = "p"')))
    for listing in (plain, filtered):
        assert set(listing) == LISTING_KEYS
        assert [r["workflow_id"] for r in listing["runs"]] == ["run-c", "run-b"]
        assert listing["total"] == 3
        assert listing["next_page_token"] == listing["runs"][-1]["run_id"]
    assert [set(r) for r in plain["runs"]] == [set(r) for r in filtered["runs"]]
    assert plain["runs"][0]["search_attributes"] == {"batch": "p"}
    rest = json.loads(ok(cairn(db_url, "list", "--json", "--limit", "2", "--page-token", plain["next_page_token"])))
    assert ([r["workflow_id"] for r in rest["runs"]], rest["total"], rest["next_page_token"]) == (["run-a"], 3, None)
    empty = json.loads(ok(cairn(db_url, "list", "--json", "--where", 'batch = "none"')))
    assert empty == {"runs": [], "total": 0, "next_page_token": None}


def test_a_bad_page_token_is_bad_input(db_url):
    bad_input(cairn(db_url, "list", "--page-token", "'; DROP TABLE cairn.runs; --"), "page token")
