"""Stage 5: the channel-selection methods, registered peers with one interface (base.py): l1, thinet, nu, reap."""

# Each module registers its method on import; this order is the CLI's.
from . import l1, thinet, nu, reap  # noqa: F401, I001
from .base import DataMethod, SelectionMethod, all_methods, get, names

__all__ = ["DataMethod", "SelectionMethod", "all_methods", "get", "names"]
