"""Real public test data fetched with pip at test time (filled by the readers work)."""
