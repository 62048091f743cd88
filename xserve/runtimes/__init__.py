"""Model runtimes: one module per flavor, registered by name."""

from xserve.runtimes.base import Runtime
from xserve.runtimes.registry import flavors, get_runtime, infer_flavor, register

__all__ = ["Runtime", "flavors", "get_runtime", "infer_flavor", "register"]
