"""The contract between products and engines: plans of stages, their state, task wrapping,
the ledger that makes bakes resumable, locks, progress and run records."""
