"""Exceptions raised by tfovss. Every message names the input and the problem."""


class TfovssError(Exception):
    """Base class of all tfovss errors."""


class ConfigError(TfovssError, ValueError):
    """An unknown method, option, preset or an invalid setting value."""


class InputError(TfovssError, ValueError):
    """An image (or other per-sample input) that cannot be processed."""


class WeightsError(TfovssError):
    """Weights that cannot be loaded: missing download, wrong architecture, unreadable file."""
