"""The staleness harness: the deterministic simulator, sweeps over settings, and reports."""
