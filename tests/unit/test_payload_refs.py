"""References to stored payloads (issue 18, item 2): what to_payload makes of a large value,
and that user data can neither forge a reference nor be taken for one."""

from __future__ import annotations

import json

import pytest

from cairn import InputValidationError, payloads
from cairn.engine.history import as_stored
from cairn.llm.chat import _by_reference

BIG = payloads.STORE_PAYLOAD_BYTES + 1


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test starts in a process that has made no reference."""
    monkeypatch.setattr(payloads, "_made", payloads._Made())


def test_small_payloads_are_inline_and_make_nothing():
    value = {"b": [1, 2.5, "x" * 100], "a": None}
    assert payloads.to_payload(value) == value
    assert not payloads.made()
    assert payloads.unref(value) is value  # no walk until a reference exists


def test_a_large_payload_becomes_a_reference_by_content():
    ref = payloads.to_payload({"text": "x" * BIG})
    assert list(ref) == [payloads.REF_KEY]
    assert len(ref[payloads.REF_KEY]) == 43
    assert payloads.made()
    assert payloads.to_payload({"text": "x" * BIG}) == ref  # the same content, the same reference
    assert payloads.to_payload({"text": "y" * BIG}) != ref
    # key order does not change the content's hash
    assert payloads.to_payload({"b": 1, "a": "z" * BIG}) == payloads.to_payload({"a": "z" * BIG, "b": 1})
    assert payloads.unref([ref]) == [{"text": "x" * BIG}]


def test_the_stored_value_has_the_jsonb_form():
    value = {"bb": 1e16, "a": -0.0, "ccc": "v" * BIG}
    ref = payloads.to_payload(value)
    [got] = payloads.unref([ref])
    assert got == as_stored(value)
    assert list(got) == list(as_stored(value)) == ["a", "bb", "ccc"]
    assert got["bb"] == 10**16
    assert isinstance(got["bb"], int)


@pytest.mark.parametrize("forged", [
    {payloads.REF_KEY: "A" * 43},                        # a hash this process did not make
    {payloads.REF_KEY: 42},                              # not a hash
    {payloads.REF_KEY: None, "x": 1},
    {"deep": [{"er": {payloads.REF_KEY: "B" * 43}}]},    # nested
])
def test_user_data_cannot_forge_a_reference(forged):
    with pytest.raises(InputValidationError, match="reserved"):
        payloads.to_payload(forged)


def test_a_real_reference_with_another_key_is_refused():
    ref = payloads.to_payload("x" * BIG)
    with pytest.raises(InputValidationError, match="reserved"):
        payloads.to_payload({**ref, "x": 1})
    assert payloads.to_payload([ref]) == [ref]  # passed on as made, it is kept


def test_keys_that_only_look_alike_are_user_data():
    value = {"cairn.payload": 1, "$cairn.payloads": 2, "$Cairn.payload": 3}
    assert payloads.to_payload(value) == value
    assert payloads.find_refs(value) == set()


def test_the_store_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(payloads, "STORE_PAYLOAD_BYTES", 0)
    value = "x" * BIG
    assert payloads.to_payload(value) == value
    assert not payloads.made()


def test_the_stored_limit_counts_the_whole_value(monkeypatch):
    monkeypatch.setattr(payloads, "MAX_STORED_PAYLOAD_BYTES", BIG * 2)
    payloads.to_payload("x" * BIG)
    with pytest.raises(InputValidationError, match="CAIRN_MAX_STORED_PAYLOAD_BYTES"):
        payloads.to_payload("x" * BIG * 3)


def test_history_limit_counts_references(monkeypatch):
    """The inline limit applies to what history holds: a reference, not the value."""
    monkeypatch.setattr(payloads, "MAX_PAYLOAD_BYTES", 4 * payloads.STORE_PAYLOAD_BYTES)
    assert payloads.ref_of(payloads.to_payload("x" * 8 * payloads.STORE_PAYLOAD_BYTES)) is not None


def test_chat_messages_are_recorded_by_reference():
    long = {"role": "user", "content": "q" * 1000}
    short = {"role": "user", "content": "hi"}
    call = {"request": {"model": "m", "messages": [long, short, long]}, "stream": True}
    out = _by_reference(call)
    first, kept, again = out["request"]["messages"]
    assert payloads.ref_of(first) is not None
    assert first == again
    assert kept == short
    assert out["stream"] is True
    assert call["request"]["messages"][0] is long
    assert len(json.dumps(out)) < 300
    assert payloads.unref(out)["request"]["messages"] == [long, short, long]


def test_chat_messages_inline_with_the_store_off(monkeypatch):
    monkeypatch.setattr(payloads, "STORE_PAYLOAD_BYTES", 0)
    call = {"request": {"model": "m", "messages": [{"role": "user", "content": "q" * 1000}]}}
    assert _by_reference(call) is call
