"""The one exception type users see: a message that names the problem."""


class OnnxPruneError(Exception):
    """Bad input, an impossible option or a model the tool cannot handle safely."""
