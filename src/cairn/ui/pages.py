"""HTML of the web view, rendered on the server from plain string templates.

Every value that comes from the database (workflow ids, types, payloads, error messages,
stacks, search attributes) passes through :func:`esc` (``html.escape`` with quotes) before
it reaches the page; only this module's fixed markup does not. The pages carry no script
at all, and the server's Content-Security-Policy forbids scripts, so an id such as
``<script>...`` shows as text and could not run even if an escape were missed.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from cairn.engine.history import Event
from cairn.ui.timeline import Bar, Timeline
from cairn.views import summarize

__all__ = ["esc", "list_page", "message_page", "run_page", "run_url", "workers_page"]

STATUS_ORDER = ("running", "completed", "failed", "cancelled", "terminated", "timed_out", "continued_as_new")
PAYLOAD_PREVIEW_CHARS = 80
RUN_REFRESH_SECONDS = 5  # an open run's page reloads itself this often

CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#ffffff; --panel:#f8f9fb;
  --ok:#2e9d5b; --bad:#d1433f; --run:#3b74d8; --wait:#b7791f; --comp:#8b5cf6; --llm:#0d9488;
  --child:#64748b; --cancel:#98a2b3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  background: var(--bg); margin: 0; }
header { padding: 10px 20px; border-bottom: 1px solid var(--line); display: flex; gap: 16px;
  align-items: baseline; }
header a.home { font-weight: 700; color: var(--fg); text-decoration: none; }
header .ro { color: var(--muted); font-size: 12px; }
main { padding: 16px 20px; max-width: 1400px; }
h1 { font-size: 20px; margin: 0 0 8px; word-break: break-all; }
h2 { font-size: 16px; margin: 24px 0 8px; }
a { color: var(--run); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; }
td.id { word-break: break-all; max-width: 380px; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { background: var(--panel); padding: 8px; border: 1px solid var(--line); overflow: auto;
  max-height: 420px; white-space: pre-wrap; word-break: break-word; margin: 4px 0; }
details summary { cursor: pointer; color: var(--muted); }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff;
  background: var(--child); }
.s-running, .s-scheduled { background: var(--run); } .s-completed, .s-fired, .s-live { background: var(--ok); }
.s-stale { background: var(--bad); } .s-stopped { background: var(--cancel); }
.s-failed, .s-terminated, .s-timed_out, .s-compensation_failed { background: var(--bad); }
.s-cancelled { background: var(--cancel); } .s-waiting, .s-retrying, .s-compensating { background: var(--wait); }
.s-compensated { background: var(--comp); } .s-continued_as_new { background: var(--child); }
.counts { display: flex; gap: 8px; flex-wrap: wrap; margin: 8px 0 12px; }
.counts a { text-decoration: none; border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px;
  color: var(--fg); }
.counts a.on { border-color: var(--run); background: #eef3fc; }
.counts b { margin-left: 4px; }
form.filters { display: flex; gap: 8px; flex-wrap: wrap; align-items: end; margin-bottom: 8px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
form.filters input, form.filters select { font: inherit; padding: 4px 6px; }
form.filters input[name=where] { width: 420px; }
.error { background: #fdecea; border: 1px solid var(--bad); padding: 8px 12px; color: #7a1c19;
  white-space: pre-wrap; }
.kv { display: grid; grid-template-columns: 140px 1fr; gap: 2px 12px; }
.kv dt { color: var(--muted); } .kv dd { margin: 0; word-break: break-all; }
.muted { color: var(--muted); }
#timeline { border: 1px solid var(--line); padding: 10px 12px; background: #fff; }
.tl-row { display: flex; align-items: center; height: 24px; }
.tl-label { width: 260px; flex: none; overflow: hidden; white-space: nowrap; text-overflow: ellipsis;
  font-size: 12px; padding-right: 8px; }
.tl-track { position: relative; flex: 1; height: 100%; border-left: 1px solid var(--line);
  background: repeating-linear-gradient(90deg, transparent 0, transparent calc(25% - 1px),
  var(--line) calc(25% - 1px), var(--line) 25%); }
.bar { position: absolute; top: 4px; height: 16px; min-width: 4px; border-radius: 3px;
  background: var(--ok); color: #fff; font-size: 11px; line-height: 16px; padding: 0 4px;
  white-space: nowrap; overflow: visible; }
.bar.k-compensation { background: var(--comp); } .bar.k-llm { background: var(--llm); }
.bar.k-timer { background: var(--wait); } .bar.k-child { background: var(--child); }
.bar.st-failed { background: var(--bad); } .bar.st-cancelled { background: var(--cancel); }
.bar.st-running, .bar.st-scheduled, .bar.st-retrying, .bar.st-waiting { opacity: .75;
  background-image: repeating-linear-gradient(45deg, rgba(255,255,255,.35) 0 6px, transparent 6px 12px); }
.bar.retried { box-shadow: inset 0 -3px 0 var(--wait); }
.note { position: absolute; top: 4px; line-height: 16px; font-size: 11px; color: var(--fg);
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.note.n-after { padding-left: 6px; } .note.n-before { padding-right: 6px; text-align: right; }
.note.n-inside { color: #fff; padding: 0 4px; }
.attempts { display: inline-block; background: var(--wait); color: #fff; border-radius: 8px;
  padding: 0 6px; font-size: 11px; margin-left: 4px; }
.mark { position: absolute; top: 5px; width: 12px; height: 12px; margin-left: -6px;
  transform: rotate(45deg); background: var(--run); }
.mark.m-signal { background: var(--llm); } .mark.m-saga { background: var(--comp); }
.mark.m-close { background: var(--fg); } .mark.m-cancel { background: var(--bad); }
.mark.m-marker { background: var(--child); }
.mark.m-now { transform: none; width: 2px; height: 16px; top: 4px; margin-left: -1px; background: var(--wait); }
.tl-axis { display: flex; margin-left: 260px; justify-content: space-between; color: var(--muted);
  font-size: 11px; }
.legend { font-size: 12px; color: var(--muted); margin-top: 6px; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; border-radius: 2px; }
"""


def esc(value: Any) -> str:
    """Escapes any value for HTML text and (double-quoted) attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def run_url(workflow_id: str, run_id: str | None = None) -> str:
    """The run page's path; the id is percent-encoded whole (slashes included)."""
    path = "/runs/" + quote(workflow_id, safe="")
    return path + ("?" + urlencode({"run_id": run_id}) if run_id else "")


def workers_url(queue: str) -> str:
    """The workers page of one queue, stale and stopped workers included."""
    return "/workers?" + urlencode({"queue": queue, "all": 1})


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _status(status: Any) -> str:
    return f'<span class="status s-{esc(status)}">{esc(status)}</span>'


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False, sort_keys=True)


def payload(label: str, value: Any, *, open_: bool = False) -> str:
    """A payload as collapsed, escaped JSON with a one-line preview."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    preview = text if len(text) <= PAYLOAD_PREVIEW_CHARS else text[: PAYLOAD_PREVIEW_CHARS - 1] + "…"
    return (f'<details class="payload"{" open" if open_ else ""}><summary>{esc(label)} '
            f'<code>{esc(preview)}</code></summary><pre>{esc(_json(value))}</pre></details>')


def layout(title: str, body: str, *, refresh_seconds: int | None = None) -> str:
    """The page around ``body`` (already HTML); ``title`` is escaped here.

    ``refresh_seconds``: the browser reloads the page that often (a meta refresh: the
    pages carry no script).
    """
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{refresh}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} · Cairn</title><style>{CSS}</style></head><body>"
            f'<header><a class="home" href="/">Cairn</a><a href="/">Workflows</a><a href="/workers">Workers</a>'
            f'<span class="ro">read-only view</span></header>'
            f"<main>{body}</main></body></html>")


def message_page(title: str, message: str) -> str:
    """An error page (404, bad request): the message is escaped."""
    return layout(title, f'<h1>{esc(title)}</h1><p class="error">{esc(message)}</p>'
                         f'<p><a href="/">All workflows</a></p>')


# ---------------------------------------------------------------- the list


def list_page(rows: list[dict[str, Any]], counts: Mapping[str, int], *, status: str | None,
              workflow_type: str | None, where: str | None, limit: int, types: Iterable[str],
              error: str | None = None) -> str:
    """The workflow list: status counts (links that filter), the filter form, the runs."""
    total = sum(counts.values())
    base = {k: v for k, v in (("type", workflow_type), ("where", where)) if v}
    chips = [f'<a class="{"on" if status is None else ""}" href="/?{esc(urlencode(base))}" data-status="">'
             f'all<b>{total}</b></a>']
    for s in [*STATUS_ORDER, *sorted(set(counts) - set(STATUS_ORDER))]:
        if counts.get(s) or s == status:
            chips.append(f'<a class="{"on" if s == status else ""}" data-status="{esc(s)}" '
                         f'href="/?{esc(urlencode({**base, "status": s}))}">{esc(s)}<b>{counts.get(s, 0)}</b></a>')
    options = "".join(f'<option value="{esc(t)}">' for t in types)
    form = (
        '<form class="filters" method="get" action="/">'
        '<label>status<select name="status"><option value="">any</option>'
        + "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>' for s in STATUS_ORDER)
        + "</select></label>"
        f'<label>type<input name="type" list="types" value="{esc(workflow_type or "")}"></label>'
        f'<datalist id="types">{options}</datalist>'
        f'<label>where<input name="where" placeholder=\'customer = "acme" AND amount &gt; 10\' '
        f'value="{esc(where or "")}"></label>'
        f'<label>limit<input name="limit" type="number" min="1" value="{limit}" style="width:80px"></label>'
        '<button type="submit">Filter</button></form>'
    )
    body = ['<h1>Workflows</h1>', f'<div class="counts" id="counts">{"".join(chips)}</div>', form]
    if error:
        body.append(f'<p class="error" id="error">{esc(error)}</p>')
    if rows:
        trs = "".join(
            f'<tr class="run" data-status="{esc(r["status"])}"><td class="id">'
            f'<a href="{esc(run_url(r["workflow_id"], r["run_id"]))}">'
            f'{esc(r["workflow_id"])}</a></td><td>{esc(r["workflow_type"])}</td><td>{_status(r["status"])}</td>'
            f'<td>{esc(_when(r["created_at"]))}</td><td>{esc(_when(r["closed_at"]))}</td>'
            f'<td class="muted"><code>{esc(r["run_id"])}</code></td></tr>'
            for r in rows)
        body.append('<table id="runs"><thead><tr><th>Workflow id</th><th>Type</th><th>Status</th><th>Started</th>'
                    f"<th>Closed</th><th>Run id</th></tr></thead><tbody>{trs}</tbody></table>")
        if len(rows) >= limit:
            body.append(f'<p class="muted">showing the newest {limit}; raise the limit to see more.</p>')
    elif not error:
        body.append('<p class="muted" id="empty">No runs match.</p>')
    return layout("Workflows", "".join(body))


# ---------------------------------------------------------------- the workers


def workers_page(rows: list[Any], *, include_inactive: bool, queue: str | None) -> str:
    """The workers (``cairn workers``): identity, status, host:pid, queues, types, slots in
    use, version, started, last heartbeat. ``rows`` are :class:`~cairn.client.WorkerInfo`."""
    base = {"queue": queue} if queue else {}
    chips = (f'<div class="counts"><a class="{"" if include_inactive else "on"}" href="/workers?'
             f'{esc(urlencode(base))}">live</a><a class="{"on" if include_inactive else ""}" '
             f'href="/workers?{esc(urlencode({**base, "all": "1"}))}">all kept</a></div>')
    title = f"Workers of queue {queue}" if queue else "Workers"
    body = [f"<h1>{esc(title)}</h1>", chips]
    if not rows:
        body.append(f'<p class="muted" id="empty">No {"" if include_inactive else "live "}workers.</p>')
        return layout(title, "".join(body), refresh_seconds=RUN_REFRESH_SECONDS)
    trs = "".join(
        f'<tr class="worker" data-status="{esc(w.status)}"><td class="id">{esc(w.identity)}</td>'
        f"<td>{_status(w.status)}</td><td>{esc(w.host)}:{esc(w.pid)}</td><td>{esc(', '.join(w.queues))}</td>"
        f"<td>{esc(', '.join(w.workflow_types) or '-')}</td><td>{esc(', '.join(w.activity_types) or '-')}</td>"
        f"<td>{w.workflow_slots_used}/{w.workflow_slots}</td><td>{w.activity_slots_used}/{w.activity_slots}</td>"
        f"<td>{esc(w.version)}</td><td>{esc(_when(w.started_at))}</td>"
        f"<td>{w.heartbeat_age:.1f} s ago</td></tr>"
        for w in rows)
    body.append('<table id="workers"><thead><tr><th>Identity</th><th>Status</th><th>Host:pid</th><th>Queues</th>'
                "<th>Workflow types</th><th>Activity types</th><th>Workflow slots</th><th>Activity slots</th>"
                f"<th>Version</th><th>Started</th><th>Last heartbeat</th></tr></thead><tbody>{trs}</tbody></table>")
    return layout(title, "".join(body), refresh_seconds=RUN_REFRESH_SECONDS)


# ---------------------------------------------------------------- a run


# A note goes beside its bar on the side with more room, if that side has at least this
# much of the track (percent); otherwise inside the bar, which then spans most of the track.
NOTE_MIN_ROOM_PERCENT = 25.0


def note_box(left: float, right: float) -> tuple[str, float, float]:
    """Where a bar's note goes, in percent of the track: (``after``, ``before`` or
    ``inside``, its start, its end). The box never leaves the track, so a note never
    covers the row labels, however long it is (it is cut with an ellipsis)."""
    after, before = 100.0 - right, left
    if max(after, before) < NOTE_MIN_ROOM_PERCENT:
        return "inside", left, right
    return ("after", right, 100.0) if after >= before else ("before", 0.0, left)


def _note(side: str, start: float, end: float, text: str) -> str:
    return f'<span class="note n-{side}" style="left:{start:.3f}%;width:{end - start:.3f}%">{esc(text)}</span>'


def _bar(tl: Timeline, b: Bar) -> str:
    left = tl.offset(b.start)
    right = tl.offset(b.end or tl.end)
    width = max(right - left, 0.0)
    label = {"activity": "activity", "compensation": "compensation", "llm": "LLM", "timer": "timer",
             "child": "child"}[b.kind]
    retried = f'<span class="attempts">{b.attempts} attempts</span>' if b.retries else ""
    saga = f" (saga {b.saga})" if b.saga is not None else ""
    title = f"seq {b.seq} {label} {b.name}{saga}: {b.status}; {b.detail}"
    note = b.detail if b.kind in ("llm", "timer") or b.status in ("failed", "retrying") else ""
    return (
        f'<div class="tl-row bar-row" data-kind="{esc(b.kind)}" data-seq="{b.seq}" data-status="{esc(b.status)}"'
        f' data-attempts="{esc(b.attempts or "")}">'
        f'<div class="tl-label" title="{esc(title)}">{esc(b.seq)} · {esc(label)} <b>{esc(b.name)}</b>{retried}</div>'
        f'<div class="tl-track"><div class="bar k-{esc(b.kind)} st-{esc(b.status)}{" retried" if b.retries else ""}"'
        f' style="left:{left:.3f}%;width:{width:.3f}%" title="{esc(title)}"></div>'
        f"{_note(*note_box(left, right), b.status + (' · ' + note if note else ''))}</div></div>"
    )


def axis_labels(seconds: float, ticks: int = 5) -> list[str]:
    """The time axis' labels at 0, 1/4, ... of ``seconds``: in ms below a second, and with
    as many decimals as it takes to tell neighbours apart (one label for a span of 0)."""
    if seconds <= 0:
        return ["+0 s"]
    unit, scale = ("ms", 1000.0) if seconds < 1 else ("s", 1.0)
    values = [seconds * scale * i / (ticks - 1) for i in range(ticks)]
    for decimals in range(7):
        labels = [f"+{v:.{decimals}f} {unit}" for v in values]
        if len(set(labels)) == ticks:
            return labels
    return labels


def timeline_html(tl: Timeline) -> str:
    """The timeline: a lane of marks (start, signals, saga, close), then one row per bar."""
    marks = "".join(
        f'<div class="mark m-{esc(m.kind)}" data-kind="{esc(m.kind)}" style="left:{tl.offset(m.at):.3f}%" '
        f'title="{esc(m.label if m.kind == "now" else f"seq {m.seq}: {m.label}")}"></div>' for m in tl.marks)
    rows = [f'<div class="tl-row mark-row"><div class="tl-label muted">events</div>'
            f'<div class="tl-track">{marks}</div></div>']
    rows += [_bar(tl, b) for b in tl.bars]
    span = tl.seconds
    axis = "".join(f"<span>{esc(label)}</span>" for label in axis_labels(span))
    legend = "".join(f'<span style="background:var(--{var})"></span>{name}' for name, var in (
        ("activity", "ok"), ("failed", "bad"), ("compensation", "comp"), ("LLM", "llm"), ("timer", "wait"),
        ("child", "child")))
    return (f'<div id="timeline">{"".join(rows)}<div class="tl-axis">{axis}</div>'
            f'<div class="legend">{legend} · ◆ signals, saga steps, start and close · | now · '
            f"striped: still open (a waiting timer ends where it fires)</div></div>")


def _failure(failure: Mapping[str, Any], *, css_id: str = "") -> str:
    stack = failure.get("stack")
    ident = f' id="{esc(css_id)}"' if css_id else ""
    return (f'<div class="failure"{ident}><p class="error"><b>{esc(failure.get("type"))}</b>: '
            f'{esc(failure.get("message"))}</p>'
            + (f"<details><summary>stack</summary><pre>{esc(stack)}</pre></details>" if stack else "")
            + (payload("details", failure.get("details")) if failure.get("details") is not None else "")
            + "</div>")


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _usd(cost: Any) -> str:
    return f"${cost:.6f}" if isinstance(cost, int | float) else "unknown"


def _llm(d: Any) -> str:
    totals = d.llm_totals or {}
    cost = totals.get("cost_usd")
    head = (f'<p id="llm-totals">{totals.get("calls")} call(s): <b>{totals.get("input_tokens")}</b> input tokens '
            f'({totals.get("cached_input_tokens")} cached), <b>{totals.get("output_tokens")}</b> output tokens, '
            f'cost <b>{esc(_usd(cost))}</b></p>')
    rows = "".join(
        f'<tr class="llm-call"><td>{esc(c["seq"])}</td><td>{esc(c["provider"])}/{esc(c["model"])}</td>'
        f'<td>{esc(c["attempt"])}</td><td>{esc(c["input_tokens"])}</td><td>{esc(c["cached_input_tokens"])}</td>'
        f'<td>{esc(c["output_tokens"])}</td>'
        f'<td>{esc(_usd(c["cost_usd"]))}</td>'
        f'<td>{esc(_seconds(c["ttft_seconds"]))}</td>'
        f'<td class="skipped">{esc(_passed_over(c.get("skipped") or []))}</td></tr>' for c in d.llm_calls)
    return (f'<h2>LLM calls</h2>{head}<table id="llm"><thead><tr><th>Seq</th><th>Model</th><th>Attempt</th>'
            f"<th>Input</th><th>Cached</th><th>Output</th><th>Cost</th><th>TTFT s</th>"
            f"<th>Passed over (why the model that served did)</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _passed_over(skipped: list[dict[str, Any]]) -> str:
    """The models of the fallback chain passed over, with why ("" when the first served)."""
    return "; ".join(f"{s.get('model')}: {s.get('reason')}" for s in skipped)


def _sagas(sagas: list[dict[str, Any]]) -> str:
    out = ["<h2>Sagas</h2>"]
    for s in sagas:
        reason = s.get("reason") or {}
        rows = "".join(
            f'<tr class="saga-{role}" data-status="{esc(a.get("status"))}"><td>{role}</td><td>{esc(a.get("seq"))}</td>'
            f'<td>{esc(a.get("activity_type"))}</td><td>{_status(a.get("status"))}</td>'
            f'<td>{esc(a.get("attempts") or "")}</td><td>{esc((a.get("failure") or {}).get("message") or "")}</td></tr>'
            for role, key in (("step", "steps"), ("compensation", "compensations")) for a in s[key])
        out.append(
            f'<div class="saga" id="saga-{esc(s["id"])}"><p>saga {esc(s["id"])}: {_status(s["status"])}'
            + (f' because <b>{esc(reason.get("type"))}</b>: {esc(reason.get("message"))}' if reason else "")
            + f'</p><table><thead><tr><th>Role</th><th>Seq</th><th>Activity</th><th>Status</th><th>Attempts</th>'
              f"<th>Failure</th></tr></thead><tbody>{rows}</tbody></table></div>")
    return "".join(out)


def _history(events: list[Event]) -> str:
    rows = "".join(
        f'<tr class="event" data-type="{esc(e.type)}"><td>{e.seq}</td>'
        f'<td class="muted">{esc(e.at.astimezone().strftime("%H:%M:%S.%f")[:-3] if e.at else "")}</td>'
        f"<td>{esc(e.type)}</td><td>{payload(summarize(e)[:120], e.data)}</td></tr>" for e in events)
    return (f'<h2>History <span class="muted">({len(events)} events)</span></h2><table id="history"><thead><tr>'
            f"<th>Seq</th><th>Time</th><th>Event</th><th>Data</th></tr></thead><tbody>{rows}</tbody></table>")


def _activity_state(a: dict[str, Any]) -> str:
    """A pending activity's state cell: running, paused (why), held by its run's pause, or
    its next try."""
    if a["lease_owner"]:
        return "running"
    pause = a.get("pause") or {}
    if pause:
        why = pause.get("retry_state") if pause.get("reason") == "exhausted" else pause.get("note")
        return f"paused{': ' + esc(why) if why else ''}"
    if a.get("waiting_for_slot"):
        return f"waiting for a slot of {esc(a.get('concurrency_key'))}"
    return "held: the run is paused" if a.get("paused") else "next try " + esc(_when(a["available_at"]))


def run_page(d: Any, events: list[Event], tl: Timeline) -> str:
    """One run: summary, failure, payloads, timeline, LLM calls, sagas, children, history.

    ``d`` is the run's :class:`~cairn.client.RunDescription`.
    """
    first = events[0].data if events else {}
    last = events[-1] if events else None
    facts = [
        ("run", f"<code>{esc(d.run_id)}</code>"), ("type", esc(d.workflow_type)), ("queue", esc(d.queue)),
        ("status", _status(d.status)), ("started", esc(_when(d.created_at))), ("closed", esc(_when(d.closed_at))),
        ("history", f"{d.history_length} events"),
    ]
    if d.parent:
        facts.append(("parent", f'<a href="{esc(run_url(d.parent["workflow_id"], d.parent["run_id"]))}">'
                                f'{esc(d.parent["workflow_id"])}</a>'))
    if d.continued_from:
        facts.append(("continued from", f'<a href="{esc(run_url(d.workflow_id, d.continued_from))}">'
                                        f"{esc(d.continued_from)}</a>"))
    if d.continued_to:
        facts.append(("continued as", f'<a href="{esc(run_url(d.workflow_id, d.continued_to))}">'
                                      f"{esc(d.continued_to)}</a>"))
    if d.search_attributes:
        facts.append(("search attributes", f"<code>{esc(json.dumps(d.search_attributes, sort_keys=True))}</code>"))
    body = [f'<h1 id="workflow-id">{esc(d.workflow_id)}</h1>', _kv(facts)]
    if d.failure:
        body += ["<h2>Failure</h2>", _failure(d.failure, css_id="run-failure")]
    task = d.workflow_task or {}
    if task.get("failures"):
        body += [f"<h2>Workflow task failing ({esc(task['failures'])} attempts)</h2>",
                 _failure(task.get("last_error") or {}, css_id="task-failure")]
    if getattr(d, "paused", None):  # cairn pause: nothing of it runs until cairn unpause
        p = d.paused
        body.append(f'<h2 id="paused">Paused since {esc(p.get("at"))} by {esc(p.get("by"))}</h2>'
                    f'<p id="pause-note">{esc(p.get("note") or "")}</p>')
    if d.unserved:  # work no live worker serves on its queue
        items = "".join(f'<li>{esc(u["message"])} · <a href="{esc(workers_url(u["queue"]))}">'
                        f'workers of {esc(u["queue"])}</a></li>' for u in d.unserved)
        body.append(f'<h2>Waiting for a worker</h2><ul id="unserved">{items}</ul>')
    body.append('<h2>Payloads</h2><div id="payloads">')
    body.append(payload("input", first.get("input"), open_=True))
    if last is not None and last.type == "WorkflowCompleted":
        body.append(payload("result", last.data.get("result"), open_=True))
    if d.memo is not None:
        body.append(payload("memo", d.memo))
    body.append("</div>")
    body += ["<h2>Timeline</h2>", timeline_html(tl)]
    if d.pending_activities:
        rows = "".join(
            f'<tr><td>{esc(a["seq"])}</td><td>{esc(a["activity_type"])}</td><td>{esc(a["attempt"])}</td>'
            f'<td>{_activity_state(a)}</td>'
            f'<td>{esc((a["last_failure"] or {}).get("message") or "")}</td></tr>' for a in d.pending_activities)
        body.append('<h2>Pending activities</h2><table id="pending"><thead><tr><th>Seq</th><th>Activity</th>'
                    f"<th>Attempt</th><th>State</th><th>Last failure</th></tr></thead><tbody>{rows}</tbody></table>")
    if d.pending_timers:
        rows = "".join(f'<tr><td>{esc(t["seq"])}</td><td>{esc(_when(t["fire_at"]))}</td></tr>'
                       for t in d.pending_timers)
        body.append('<h2>Timers</h2><table id="timers"><thead><tr><th>Seq</th><th>Fires at</th></tr></thead>'
                    f"<tbody>{rows}</tbody></table>")
    if d.llm_calls:
        body.append(_llm(d))
    if d.sagas:
        body.append(_sagas(d.sagas))
    if d.children:
        rows = "".join(
            f'<tr><td>{esc(c["seq"])}</td><td class="id"><a href="{esc(run_url(c["workflow_id"], c.get("run_id")))}">'
            f'{esc(c["workflow_id"])}</a></td><td>{esc(c["workflow_type"])}</td><td>{_status(c["status"])}</td></tr>'
            for c in d.children)
        body.append('<h2>Children</h2><table id="children"><thead><tr><th>Seq</th><th>Workflow id</th><th>Type</th>'
                    f"<th>Status</th></tr></thead><tbody>{rows}</tbody></table>")
    failed = [e for e in events if e.type == "ActivityFailed"]
    if failed:
        body.append("<h2>Activity failures</h2>")
        body += [f'<p class="muted">activity seq {esc(e.data.get("activity_seq"))} after '
                 f'{esc(e.data.get("attempts"))} attempt(s)</p>' + _failure(e.data.get("failure") or {})
                 for e in failed]
    body.append(_history(events))
    # An open run changes under the reader: its page reloads itself until the run closes.
    refresh = RUN_REFRESH_SECONDS if d.status == "running" else None
    return layout(d.workflow_id, "".join(body), refresh_seconds=refresh)
