"""common.Signature: argument validation against annotations; payload conversion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Never, NoReturn

import pytest
from pydantic import BaseModel

from cairn import Worker, activity, workflow
from cairn.errors import ConfigurationError, InputValidationError
from cairn.options import seconds
from cairn.payloads import Signature, to_payload


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


# ---------------------------------------------------------------- annotations pydantic has no schema for


@activity.defn
def never_completes(seconds: float) -> NoReturn:  # as Temporal's hello_cancellation sample
    raise AssertionError


@workflow.defn
async def runs_forever(n: int) -> Never:
    workflow.continue_as_new(n + 1)


class Plain:  # no pydantic schema: not a dataclass, not a model
    def __init__(self, x: int) -> None:
        self.x = x


async def takes_plain(thing: Plain, n: int) -> int:
    raise AssertionError


async def returns_plain() -> Plain:
    raise AssertionError


def test_noreturn_and_never_functions_import_and_register():
    # Decorating them (at import, above) used to raise PydanticSchemaGenerationError.
    for sig in (never_completes.__cairn_activity__.signature, runs_forever.__cairn_workflow__.signature):
        assert sig.returns is None
        assert sig.problems == []
        sig.check("x")
    assert runs_forever.__cairn_workflow__.signature.validate_args(["3"], "workflow w") == [3]
    worker = Worker("postgresql://unused", workflows=[runs_forever], activities=[never_completes])
    assert set(worker.workflows) == {"runs_forever"}
    assert "never_completes" in worker.activities


def test_a_never_returning_function_has_no_result_schema():
    # Nothing to validate a result against: whatever came back passes as it is.
    assert Signature(runs_forever).validate_result({"any": 1}, "workflow w") == {"any": 1}
    assert Signature(runs_forever).json_schema()["prefixItems"] == [{"type": "integer"}]


def test_an_annotation_without_a_schema_imports_and_fails_at_registration():
    sig = Signature(takes_plain)  # no exception at import
    assert len(sig.problems) == 1
    expected = (r"^workflow takes_plain \(takes_plain\): parameter 'thing' is annotated Plain, which cannot be "
                r"validated \(Unable to generate pydantic-core schema for .*Plain.*\): use a JSON type, a "
                r"dataclass or a pydantic model$")
    with pytest.raises(ConfigurationError, match=expected):
        Worker("postgresql://unused", workflows=[workflow.defn(takes_plain)])
    with pytest.raises(ConfigurationError, match="parameter 'thing' is annotated Plain"):
        sig.validate_args([{"x": 1}, 2], "workflow takes_plain")  # client.start(takes_plain, ...)
    with pytest.raises(ConfigurationError, match=r"^activity returns_plain .*the return type is annotated Plain"):
        Worker("postgresql://unused", activities=[activity.defn(returns_plain)])


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
