-- Activity cancellation type wait_cancellation_completed: the workflow asked a running
-- attempt to stop and waits for it. The row stays (so the attempt's outcome can still be
-- recorded, fenced by its token) and the flag reaches the attempt through the next lease
-- renewal (renew_activity_leases returns it).
ALTER TABLE cairn.activity_tasks ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
