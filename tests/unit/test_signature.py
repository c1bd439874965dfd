"""common.Signature: argument validation against annotations; payload conversion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from cairn.common import Signature, seconds, to_payload
from cairn.errors import InputValidationError


class Customer(BaseModel):
    name: str
    age: int


@dataclass
class Order:
    id: int
    items: list[str]


async def typed(customer: Customer, order: Order, count: int, note: str = "none") -> Customer:
    raise AssertionError


async def primitives(a: int, b: float, c: bool, d: str, e: list[int], f: dict[str, int] | None) -> int:
    raise AssertionError


async def untyped(a, b=2):  # type: ignore[no-untyped-def]
    raise AssertionError


async def nothing() -> None:
    raise AssertionError


def test_pydantic_model_argument_is_validated_from_json():
    sig = Signature(typed)
    out = sig.validate_args([{"name": "Ada", "age": "36"}, {"id": 1, "items": ["x"]}, 3], "workflow w")
    assert out[0] == Customer(name="Ada", age=36)
    assert isinstance(out[0], Customer)


def test_dataclass_argument_is_validated_from_json():
    out = Signature(typed).validate_args([{"name": "Ada", "age": 36}, {"id": "5", "items": []}, 3], "w")
    assert out[1] == Order(id=5, items=[])
    assert isinstance(out[1], Order)


def test_model_instances_are_accepted_as_they_are():
    c, o = Customer(name="Bo", age=1), Order(2, ["a"])
    assert Signature(typed).validate_args([c, o, 1, "n"], "w") == [c, o, 1, "n"]


def test_primitives_are_validated_and_coerced():
    out = Signature(primitives).validate_args([1, 2, True, "s", [1, "2"], None], "activity p")
    assert out == [1, 2.0, True, "s", [1, 2], None]
    assert isinstance(out[1], float)


@pytest.mark.parametrize(("args", "message"), [
    ([{"name": "Ada"}, {"id": 1, "items": []}, 3], "workflow w: argument 'customer' is invalid: age: Field required"),
    ([{"name": "Ada", "age": 1}, {"id": "x", "items": []}, 3], "workflow w: argument 'order' is invalid: id: "),
    ([{"name": "Ada", "age": 1}, {"id": 1, "items": []}, "many"], "workflow w: argument 'count' is invalid: "),
])
def test_invalid_argument_names_the_parameter_and_the_field(args, message):
    with pytest.raises(InputValidationError) as info:
        Signature(typed).validate_args(args, "workflow w")
    assert str(info.value).startswith(message)


def test_nested_list_error_names_the_index():
    with pytest.raises(InputValidationError, match=r"argument 'e' is invalid: 1: Input should be a valid integer"):
        Signature(primitives).validate_args([1, 2.0, True, "s", [1, "two"], None], "activity p")


@pytest.mark.parametrize(("fn", "args", "message"), [
    (typed, [], "workflow w takes 3 to 4 argument(s), got 0"),
    (typed, [1, 2, 3, 4, 5], "workflow w takes 3 to 4 argument(s), got 5"),
    (primitives, [1], "workflow w takes 6 argument(s), got 1"),
    (nothing, [1], "workflow w takes 0 argument(s), got 1"),
    (untyped, [], "workflow w takes 1 to 2 argument(s), got 0"),
])
def test_wrong_argument_count_is_a_clear_input_validation_error(fn, args, message):
    with pytest.raises(InputValidationError) as info:
        Signature(fn).validate_args(args, "workflow w")
    assert str(info.value) == message


def test_defaults_are_left_to_the_function():
    sig = Signature(typed)
    assert (sig.names, sig.required) == (["customer", "order", "count", "note"], 3)
    assert len(sig.validate_args([{"name": "a", "age": 1}, {"id": 1, "items": []}, 1], "w")) == 3


def test_unannotated_parameters_accept_anything():
    obj = object()
    assert Signature(untyped).validate_args([obj, "x"], "w") == [obj, "x"]


def test_result_is_validated_into_the_return_type():
    sig = Signature(typed)
    assert sig.validate_result({"name": "Cy", "age": "4"}, "activity a") == Customer(name="Cy", age=4)
    with pytest.raises(InputValidationError, match=r"^activity a: result is invalid: age: "):
        sig.validate_result({"name": "Cy", "age": "old"}, "activity a")


@pytest.mark.parametrize("fn_src", [
    "async def f(*args): pass",
    "async def f(a, *, key): pass",
    "async def f(**kw): pass",
])
def test_only_positional_parameters_are_supported(fn_src):
    ns: dict[str, Any] = {}
    exec(fn_src, ns)
    with pytest.raises(TypeError, match="only positional parameters are supported"):
        Signature(ns["f"])


def test_json_schema_describes_the_argument_list():
    schema = Signature(typed).json_schema()
    assert schema["type"] == "array"
    assert (schema["minItems"], schema["maxItems"]) == (3, 4)
    assert schema["prefixItems"][2] == {"type": "integer"}
    assert schema["prefixItems"][0]["properties"]["age"] == {"title": "Age", "type": "integer"}


def test_to_payload_converts_models_dataclasses_and_datetimes():
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert to_payload([Customer(name="a", age=1), Order(1, ["x"]), when, timedelta(seconds=90)]) == [
        {"name": "a", "age": 1}, {"id": 1, "items": ["x"]}, "2024-01-02T03:04:05Z", "PT1M30S"]


def test_to_payload_refuses_what_json_cannot_hold():
    with pytest.raises(InputValidationError, match="value of type object is not JSON-serialisable"):
        to_payload(object())


def test_seconds_accepts_timedelta_and_numbers_and_refuses_non_positive():
    assert seconds(timedelta(minutes=2)) == 120.0
    assert seconds(3) == 3.0
    assert seconds(None) is None
    for bad in (0, -1.0, timedelta(0)):
        with pytest.raises(InputValidationError, match="timeouts must be positive"):
            seconds(bad)
