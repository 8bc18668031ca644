"""onnxprune: remove channels from ONNX CNNs and keep their accuracy without retraining."""

from .config import Method, PruneConfig
from .cost import Cost, cost_of
from .errors import OnnxPruneError
from .graph import load, save
from .groups import Analysis, ChannelGroup, analyze
from .normalize import normalize
from .prune import PruneResult, prune
from .surgery import prune_channels

__all__ = [
    "Analysis", "ChannelGroup", "Cost", "Method", "OnnxPruneError", "PruneConfig", "PruneResult",
    "analyze", "cost_of", "load", "normalize", "prune", "prune_channels", "save",
]
