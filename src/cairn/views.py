"""Read models over a history: pure functions from recorded events to what people read.

The one-line summaries of history tables (``cairn history``, the web view), the sagas of
a run rebuilt from their markers, and the LLM calls of a run with their tokens and cost.
Nothing here does I/O: the client, the CLI and the web view feed it events they read.
"""

from __future__ import annotations

import json
from typing import Any

from cairn.engine import history as h
from cairn.engine.history import Event

__all__ = ["describe_sagas", "llm_calls", "llm_result", "llm_summary", "llm_totals", "summarize"]

LLM_COMPLETION = "cairn.llm.completion"  # the ``type`` of a chat activity's recorded result


def summarize(e: Event) -> str:
    """A one-line human summary of an event's data, for history tables."""
    d = e.data
    if e.type == "WorkflowStarted":
        return f"{d.get('workflow_type')} input={json.dumps(d.get('input'))}"
    if e.type == "ActivityScheduled":
        role = "" if "saga" not in d else (
            f" (saga {d['saga']} compensation)" if "compensation" in d else f" (saga {d['saga']} step)")
        return f"{d.get('activity_type')} on {d.get('queue')}{role}"
    if e.type == "MarkerRecorded" and d.get("kind") == "saga":
        what = f"saga {d.get('saga', e.seq)} {d.get('event')}"
        if d.get("event") == "compensation_started":
            return f"{what}: {', '.join(map(str, d.get('compensations') or [])) or 'nothing to undo'}"
        return f"{what}: {d['status']}" if "status" in d else what
    if e.type == "MarkerRecorded" and d.get("kind") == h.PATCH_MARKER:
        return f"patch {d.get('patch_id')}" + (" (deprecated)" if d.get("deprecated") else "")
    if e.type == "MarkerRecorded" and d.get("kind") == h.LOCAL_ACTIVITY_MARKER:
        what = f"local activity {d.get('local_seq')} {d.get('activity_type')}"
        f = d.get("failure") or {}
        if "backoff" in d and not f:
            return f"{what} put off to a later task (the task's time for local activities ran out)"
        if "backoff" in d:
            return f"{what} attempt {d.get('attempts')} failed: {f.get('type')}: {f.get('message')}; " \
                   f"retry in {d['backoff']:g} s"
        if "failure" in d:
            return f"{what} failed: {f.get('type')}: {f.get('message')} (attempts {d.get('attempts')})"
        return f"{what} -> {json.dumps(d.get('result'))} (attempts {d.get('attempts')})"
    if e.type == "ActivityCancelled":
        return f"activity {d.get('activity_seq')} cancelled" + ("" if d.get("started") else " before it started")
    if e.type == "ActivityCompleted" and isinstance(d.get("result"), dict) \
            and d["result"].get("type") == LLM_COMPLETION:
        return f"activity {d.get('activity_seq')} -> {llm_summary(d['result'])} (attempt {d.get('attempt')})"
    if e.type == "ActivityCompleted":
        return f"activity {d.get('activity_seq')} -> {json.dumps(d.get('result'))} (attempt {d.get('attempt')})"
    if e.type == "ActivityFailed":
        f = d.get("failure") or {}
        attempts = d.get("attempts")
        return f"activity {d.get('activity_seq')}: {f.get('type')}: {f.get('message')} after {attempts} attempt(s)"
    if e.type == "TimerStarted":
        return f"{d.get('duration')} s, fires {d.get('fire_at')}"
    if e.type in ("TimerFired", "TimerCancelled"):
        return f"timer {d.get('timer_seq')}"
    if e.type == "WorkflowCompleted":
        return f"result={json.dumps(d.get('result'))}"
    if e.type == "WorkflowFailed":
        f = d.get("failure") or {}
        return f"{f.get('type')}: {f.get('message')}"
    if e.type == "ChildWorkflowScheduled":
        return f"{d.get('workflow_type')} as {d.get('workflow_id')} on {d.get('queue')}"
    if e.type in ("ChildWorkflowStarted", "ChildWorkflowCompleted", "ChildWorkflowFailed",
                  "ChildWorkflowStartFailed"):
        f = d.get("failure") or {}
        tail = (f" -> {json.dumps(d.get('result'))}" if e.type == "ChildWorkflowCompleted"
                else f": {f.get('type')}: {f.get('message')}" if f else f" run {d.get('run_id')}")
        return f"child {d.get('child_seq')} {d.get('workflow_id')}{tail}"
    if e.type == "WorkflowContinuedAsNew":
        return f"input={json.dumps(d.get('input'))}"
    if e.type == "WorkflowTaskStarted":
        return f"worker {d.get('worker')}"
    if e.type == h.SIGNAL_RECEIVED:
        return f"signal {d.get('name')} payload={json.dumps(d.get('payload'))}"
    if e.type == h.UPDATE_ACCEPTED:
        return f"update {d.get('name')} ({d.get('update_id')}) args={json.dumps(d.get('args'))}"
    if e.type == h.UPDATE_COMPLETED:
        f = d.get("failure")
        tail = f"{f.get('type')}: {f.get('message')}" if f else f"-> {json.dumps(d.get('result'))}"
        return f"update {d.get('update_id')} {tail}"
    return ", ".join(f"{k}={v}" for k, v in d.items())


def describe_sagas(events: list[Event]) -> list[dict[str, Any]]:
    """The sagas of a run, rebuilt from its history (saga markers, the activities tagged
    with a saga, their outcomes), in the order they started.

    Each saga: ``id``, ``status`` (running, completed, compensating, compensated,
    compensation_failed), its options, ``reason`` (why it compensated), ``steps`` and
    ``compensations`` (each with ``seq``, ``activity_type``, ``status``, and ``attempts``
    and ``failure`` once known).
    """
    sagas: dict[Any, dict[str, Any]] = {}
    activities: dict[Any, dict[str, Any]] = {}
    for e in events:
        d = e.data
        if e.type == h.MARKER_RECORDED and d.get("kind") == h.SAGA_MARKER:
            event = d.get("event")
            if event == "started":
                sagas[e.seq] = {
                    "id": e.seq, "status": "running", "parallel_compensation": d.get("parallel_compensation"),
                    "continue_on_error": d.get("continue_on_error"), "reason": None, "steps": [],
                    "compensations": [],
                }
                continue
            s = sagas.get(d.get("saga"))
            if s is None:
                continue
            if event == "completed":
                s["status"] = "completed"
            elif event == "compensation_started":
                s["status"] = "compensating"
                s["reason"] = d.get("reason")
                s["compensations"] = [{"seq": None, "activity_type": name, "status": "pending"}
                                      for name in d.get("compensations") or []]
            elif event == "compensation_ended":
                s["status"] = d.get("status")
                for c in s["compensations"]:
                    if c["status"] == "pending":
                        c["status"] = "skipped"
        elif e.type == h.ACTIVITY_SCHEDULED and d.get("saga") in sagas:
            s = sagas[d["saga"]]
            activity = {"seq": e.seq, "activity_type": d.get("activity_type"), "status": "scheduled"}
            index = d.get("compensation")
            if isinstance(index, int) and 0 <= index < len(s["compensations"]):
                s["compensations"][index] = activity
            else:
                s["steps"].append(activity)
            activities[e.seq] = activity
        elif e.type in (h.ACTIVITY_COMPLETED, h.ACTIVITY_FAILED, h.ACTIVITY_CANCEL_REQUESTED):
            entry = activities.get(d.get("activity_seq"))
            if entry is None:
                continue
            if e.type == h.ACTIVITY_CANCEL_REQUESTED:
                entry["status"] = "cancelled"
            elif e.type == h.ACTIVITY_COMPLETED:
                entry.update(status="completed", attempts=d.get("attempt"))
            else:
                f = d.get("failure") or {}
                entry.update(status="failed", attempts=d.get("attempts"),
                             failure={"type": f.get("type"), "message": f.get("message")})
    return list(sagas.values())


# ---------------------------------------------------------------- LLM calls


def llm_result(event: Event) -> dict[str, Any] | None:
    if event.type != h.ACTIVITY_COMPLETED:
        return None
    result = event.data.get("result")
    if isinstance(result, dict) and result.get("type") == "cairn.llm.completion":
        return result
    return None



def llm_summary(result: dict[str, Any]) -> str:
    """One line for a recorded LLM completion: model, tokens, cost, time to first token."""
    usage = result.get("usage") or {}
    parts = [f"llm {result.get('provider')}/{result.get('model')}"]
    if result.get("requested_model") and result.get("requested_model") != result.get("model"):
        parts.append(f"(asked {result['requested_model']})")
    if usage:
        parts.append(f"{usage.get('input_tokens')} in ({usage.get('cached_input_tokens', 0)} cached) / "
                     f"{usage.get('output_tokens')} out")
        cost = usage.get("cost_usd")
        parts.append(f"${cost:.6f}" if isinstance(cost, int | float) else "cost unknown")
    else:
        parts.append("usage unknown")
    if isinstance(result.get("ttft_seconds"), int | float):
        parts.append(f"ttft {result['ttft_seconds']:.3f} s")
    return " ".join(parts)


def llm_calls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The LLM calls of a run, from its recorded completions (``llm_completions`` rows)."""
    out = []
    for r in rows:
        res = (r["data"] or {}).get("result") or {}
        usage = res.get("usage") or {}
        out.append({"seq": r["data"].get("activity_seq"), "model": res.get("model"),
                    "requested_model": res.get("requested_model"), "provider": res.get("provider"),
                    "request_id": res.get("request_id"), "attempt": res.get("attempt"),
                    "input_tokens": usage.get("input_tokens"), "cached_input_tokens": usage.get("cached_input_tokens"),
                    "output_tokens": usage.get("output_tokens"), "cost_usd": usage.get("cost_usd"),
                    "ttft_seconds": res.get("ttft_seconds"), "duration_seconds": res.get("duration_seconds"),
                    "skipped": res.get("skipped") or []})
    return out


def llm_totals(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens and cost over a run's LLM calls (cost ``None`` if any call's is unknown)."""
    costs = [c["cost_usd"] for c in calls]
    return {"calls": len(calls),
            "input_tokens": sum(c["input_tokens"] or 0 for c in calls),
            "cached_input_tokens": sum(c["cached_input_tokens"] or 0 for c in calls),
            "output_tokens": sum(c["output_tokens"] or 0 for c in calls),
            "cost_usd": None if any(x is None for x in costs) else round(sum(costs), 9)}
