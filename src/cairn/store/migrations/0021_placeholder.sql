-- Placeholder for the payload store helper's 0021 (local testing only; not committed).
SELECT 1;
