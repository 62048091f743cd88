"""Model runtimes: one module per flavor, found by name through the registry."""

from xserve.runtimes.base import Runtime
from xserve.runtimes.registry import flavors, get_runtime, infer_flavor

__all__ = ["Runtime", "flavors", "get_runtime", "infer_flavor"]
