"""Optional parts of ember by capability: a plain install serves models; training and the rest are extras."""

import importlib

from ember.core.errors import EmberError


def require(module: str, extra: str, what: str):
    """Import `module`, or fail with the pip command that installs the extra carrying it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EmberError(f"{what} needs ember's optional part [{extra}] ({module} is not installed): "
                         f"pip install 'ember[{extra}]' (make setup installs every part)") from None
