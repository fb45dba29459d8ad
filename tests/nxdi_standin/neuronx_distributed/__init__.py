"""Stand-in for NxD core (test only)."""
