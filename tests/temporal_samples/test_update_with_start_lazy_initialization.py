"""samples-python message_passing/update_with_start/lazy_initialization, ported: two
update-with-start requests on one cart (the second item is unavailable: its update fails,
the cart lives on), a checkout signal, and the finalized order printed."""

from __future__ import annotations

import re

from . import update_with_start_lazy_initialization as sample


async def test_lazy_initialization_prints_what_the_sample_prints(client, start_worker, sql, capsys):
    await start_worker(workflows=[sample.ShoppingCartWorkflow], activities=[sample.get_price],
                       queues=[sample.TASK_QUEUE])
    await sample.main(client)
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["🛒", "subtotals were, [599, None]"]
    assert re.fullmatch(
        r"final order: FinalizedOrder\(id='cart-session-[0-9a-f-]{36}', "
        r"items=\[\(ShoppingCartItem\(sku='sku-123', quantity=1\), 599\)\], total=599\)", out[2]), out[2]
    assert len(out) == 3
    assert sql("SELECT count(*), min(status) FROM cairn.runs") == [(1, "completed")]
