"""samples-python hello/hello_search_attributes.py, ported: the keyword list given at start,
then the one the workflow upserted after its two-second timer."""

from __future__ import annotations

from . import hello_search_attributes


async def test_hello_search_attributes_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_search_attributes.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "First search attribute values:  ['old-value']",
        "Second search attribute values:  ['new-value']",
    ]
    assert sql("SELECT search_attributes FROM cairn.runs WHERE workflow_id = 'hello-search-attributes-workflow-id'") \
        == [({"CustomKeywordField": ["new-value"]},)]
