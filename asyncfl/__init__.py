"""asyncfl: federated learning with clients of unequal speed, as Flower strategies and apps."""

from asyncfl.config import ConfigError

__version__ = "0.1.0"


def simulate(**run_config):
    """Run a whole federated run inline (see `asyncfl.runtime.inline.simulate`)."""
    from asyncfl.runtime.inline import simulate as run_inline

    return run_inline(**run_config)


__all__ = ["ConfigError", "__version__", "simulate"]
