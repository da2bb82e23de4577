"""study: what to run — the spec and its validation, loading with includes, the trials, the recipes."""
