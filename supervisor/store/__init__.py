"""The run's durable state: the SQLite ledger, the files rendered from it, the run lock."""
