"""The versioned model repository: manifests, loading, discovery and hot reload."""
