"""Observation: metrics, the activity log, GPU and system sampling, benchmark runs."""
