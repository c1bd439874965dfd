-- Reserved for another branch's migration 0019 (pause). This placeholder only keeps the
-- numbering without gaps on the retention branch: delete it when the real 0019 is merged.
SELECT 1;
