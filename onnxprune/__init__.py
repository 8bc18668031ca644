"""onnxprune: remove channels from ONNX CNNs and keep their accuracy without retraining."""

from .analysis.cost import Cost, cost_of
from .analysis.groups import Analysis, ChannelGroup, analyze
from .config import Method, PruneConfig
from .errors import OnnxPruneError
from .graph.io import load, save
from .passes.normalize import normalize
from .passes.surgery import prune_channels
from .prune import PruneResult, prune

__all__ = [
    "Analysis", "ChannelGroup", "Cost", "Method", "OnnxPruneError", "PruneConfig", "PruneResult",
    "analyze", "cost_of", "load", "normalize", "prune", "prune_channels", "save",
]
