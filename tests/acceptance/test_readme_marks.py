"""Every README example a test runs as typed still holds what that test relies on: the
marked blocks of each section (``<!-- TAG: ... -->``) keep these commands and lines, so a
dropped marker or a rewritten block cannot leave an example that no test runs. The
examples themselves run in ``test_readme_<section>.py``."""

from __future__ import annotations

import pytest

from support.readme import unmarked

TYPED = {
    "batches": (  # test_readme_batches.py
        "cat > shop.py", "cat > approve.py", "--dry-run", "cairn signal --where", "python approve.py",
        "cairn retry --where", "cairn reset --where", "cairn cancel --where", "cairn terminate --where",
        "cairn batch wait", "cairn batch list",
    ),
    "pauses": (  # test_readme_pauses.py
        "cat > payments.py", "cat > pause_demo.py", "cairn pause --activity-type", "cairn pause checkout-42",
        "cairn activity pause checkout-43 3", "cairn pause --queue payments", "cairn pauses  ",
        "cairn activity unpause", "cairn activity fail checkout-43 --seq 3", "cairn unpause --queue",
        "cairn unpause checkout-42", "python pause_demo.py",
    ),
    "retention": (  # test_readme_retention.py
        "cat > flows.py", "cat > purge_demo.py", "cairn namespace update --retention 30d", "cairn namespace describe",
        "cairn namespace list", "--older-than 7d --dry-run", "cairn purge --where 'Status = \"failed\"' --yes",
        "cairn archive show report-hol", "cairn replay h.json", "cairn replay archive/", "python purge_demo.py",
        "--retention forever --archive none",
    ),
    "workers": (  # test_readme_workers.py
        "cat > warehouse.py", "cat > list_workers.py", "cairn workers ", "cairn workers --json",
        "cairn workers --all --queue default", "cairn describe order-18", "python list_workers.py",
    ),
    "signals": (  # test_readme_signals.py
        "cat > approval.py", "cat > approve_spec.py", "python approve_spec.py", "cairn signal approve-readme comment",
        "cairn query approve-readme status",
    ),
    "searchattrs": (  # test_readme_search_attributes.py
        "cat > orders.py", "cat > orders_demo.py", "--input @order.json --search-attribute customer=acme",
        "cairn list --where", "python orders_demo.py", "cairn reset order-o-1 --to-seq 4", "cairn retry order-o-2",
        "cairn describe order-o-1",
    ),
    "sagas": (  # test_readme_sagas.py
        "cat > trips.py", "async with workflow.saga() as saga:", "python trips.py", "cairn describe trip-bob",
    ),
    "children": (  # test_readme_children.py
        "cat > family.py", "workflow.execute_child_workflow(payment", "workflow.continue_as_new(cursor)",
        'id_reuse_policy="allow_duplicate_failed_only"', "python family.py", "cairn list --where",
    ),
    "local": (  # test_readme_local_activities.py
        "cat > greet_local.py", "workflow.execute_local_activity(", "python greet_local.py", "cairn history greet-ada",
    ),
    "patched": (  # test_readme_patched.py
        "cat > orders_v1.py", "cat > orders.py", 'if workflow.patched("send-receipt"):', "python orders_v1.py",
        "cairn history order-o-1 --json > order-o-1.json", "cairn replay order-o-1.json -m orders",
    ),
    "client": (  # test_readme_client.py
        "cat > client_demo.py", 'id_conflict="fail"', "conn=conn)", "python client_demo.py", "cairn list",
    ),
    "priority": (  # test_readme_priority.py
        "cat > tenants.py", 'client.limits.set("customer-42", 2, kind="workflow")', "python tenants.py",
        "--priority 1 --fairness-key tenant-b --fairness-weight 2", "cairn describe export-9",
        "cairn limits list customer-42 --json", "cairn limits delete customer-42",
    ),
    "cancelling": (  # test_readme_cancelling.py
        "cat > crunch_demo.py", "if activity.is_cancelled():", 'cancellation_type="wait_cancellation_completed"',
        "python crunch_demo.py", "cairn history nightly-reindex",
    ),
}


@pytest.mark.parametrize("tag", sorted(TYPED))
def test_the_readme_marks_every_typed_example(tag: str) -> None:
    assert not unmarked(tag, TYPED[tag])
