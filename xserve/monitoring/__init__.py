"""Monitoring: live drift of traffic against each version's background (and metrics)."""
