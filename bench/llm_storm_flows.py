"""The LLM storm workload's workflow for cairn (``cairn worker -m llm_storm_flows``).

Default settings throughout: ``chat()`` with its default retry policy, timeouts and
throttle budget; the provider's breaker and limits come from the providers file named by
``CAIRN_LLM_PROVIDERS`` (written by bench/llm_storm_cairn.py: only ``rpm`` is set).
"""

from __future__ import annotations

from cairn import workflow
from cairn.llm import ChatRequest, chat

MODEL = "storm-chat"


def request(workflow_id: str, n: int) -> ChatRequest:
    """The n-th call of a workflow; the ``call <id>/<n>`` marker tells the provider calls apart."""
    return ChatRequest(model=MODEL, max_tokens=16, messages=[
        {"role": "user", "content": f"Summarise part {n} of the report in one line. call {workflow_id}/{n}"}])


@workflow.defn
async def storm(workflow_id: str, calls: int) -> int:
    """``calls`` sequential chat calls."""
    for n in range(1, calls + 1):
        await chat(request(workflow_id, n))
    return calls
