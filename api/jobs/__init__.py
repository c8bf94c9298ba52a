"""Jobs: routes, schemas, following a job to its end, withdrawing refused jobs."""
