"""Ports of Temporal's official Python samples (temporalio/samples-python) to Cairn.

A port changes the API (imports from ``cairn``, ``Client.connect(url)`` and
``Worker(url, queues=[...])`` for Temporal's connection config and ``task_queue=``,
``client.start``/``client.execute`` for ``start_workflow``/``execute_workflow``), never the
logic: the samples' classes, handlers and code stay as written. Each module's docstring
lists its API changes; each test asserts what the sample prints, and what the database
shows.

Ported (31): hello/ hello_activity, hello_activity_async, hello_activity_method,
hello_activity_choice, hello_activity_retry, hello_activity_heartbeat,
hello_async_activity_completion, hello_cancellation, hello_child_workflow,
hello_continue_as_new, hello_cron (as a schedule, below), hello_exception,
hello_local_activity, hello_parallel_activity, hello_query, hello_search_attributes,
hello_signal, hello_update; message_passing/ introduction, safe_message_handlers,
waiting_for_handlers, waiting_for_handlers_and_compensation,
update_with_start/lazy_initialization; patching/ (the four versions, every history against
every version); polling/ frequent, infrequent, periodic_sequence; replay/; schedules/ (all
nine scripts); sleep_for_days/ (with its own test, under the time-skipping environment);
updatable_timer/.

Not ported, or not as written:

- hello_cron: Cairn has no ``cron_schedule=`` on a start (Temporal's cron workflows, which
  Temporal itself now steers users away from, toward schedules). The port runs the same
  workflow on a schedule with the same cron expression; each minute's run gets its own
  workflow id (``<id>-<slot>``) instead of being the next run of one id.
- hello_patch: covered by patching/ (the same ``patched``/``deprecate_patch`` steps, with
  every history replayed against every version); its deprecated class also registers a
  misspelled type name.
- hello_activity_multiprocess: it runs sync activities in a process pool through the
  worker's ``activity_executor``; a Cairn worker runs plain ``def`` activities in its own
  thread pool and takes no executor (run more worker processes instead).
- hello_mtls, hello_change_log_level, the encryption/codec, OpenTelemetry, Sentry and
  Nexus samples: they configure Temporal's server connection, data converter or SDK
  plumbing, which Cairn has no counterpart of (Cairn's TLS is the Postgres URL's
  ``sslmode``; its tracing is described in README "Tracing, metrics and logs").
"""
