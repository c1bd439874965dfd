-- Placeholder: number 0012 is reserved by another branch of issue 15. This file only keeps
-- the numbering without gaps on this branch (0013); drop it when the two branches merge.
SELECT 1;
