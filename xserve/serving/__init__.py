"""Serving: request types, answers, the data plane, batching, shadow traffic, inputs and
the explain service, shared by every front-end (REST v1, V2, the CLI, jobs)."""
