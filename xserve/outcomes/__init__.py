"""Outcomes: what happened after a decision, recorded in the audit chain beside it, and
what they show: performance per version, concept drift, versions compared."""
