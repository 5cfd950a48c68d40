"""How bytes move: the plan (pure), its preparation (the plan's I/O half), the engine that executes
it (write pipeline, O_DIRECT target, read-back, partition-table fix-ups) and what a run leaves
behind (receipts, the known-good ledger)."""
