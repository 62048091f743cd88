"""MLflow: the deployments plugin, registry sync and model conversion."""
