"""Integrations with other tools; each needs its own optional extra (``xserve[mlflow]``)."""
