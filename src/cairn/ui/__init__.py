"""The web view (``cairn ui``): a read-only page of runs, their timelines, payloads,
failures and LLM costs, served by aiohttp on localhost.

- :mod:`cairn.ui.timeline`: a run's timeline rebuilt from its history (pure).
- :mod:`cairn.ui.pages`: the HTML, from escaped string templates (no script).
- :mod:`cairn.ui.server`: routes, the JSON API, the read-only client, ``serve``.
"""

from __future__ import annotations

from cairn.ui.server import DEFAULT_HOST, DEFAULT_PORT, connect_read_only, create_app, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "connect_read_only", "create_app", "serve"]
