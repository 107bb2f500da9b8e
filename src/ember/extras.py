"""Optional parts of ember by capability: a plain install serves models; training and the rest are extras."""

import importlib
import os

from ember.core.errors import EmberError


def require(module: str, extra: str, what: str):
    """Import `module`, or fail with the pip command that installs the extra carrying it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EmberError(f"{what} needs ember's optional part [{extra}] ({module} is not installed): "
                         f"pip install 'ember[{extra}]' (make setup installs every part)") from None


def torch_threads_yield() -> None:
    """Make PyTorch's OpenMP threads sleep, not spin, while they wait: call before torch is first imported.

    On 2 cores with one other busy process, a 2-thread training step ran 18x slower than on a quiet machine and 5x
    slower than 1 thread (the waiting thread spins on the core its partner needs); passive waiting made it as fast as
    1 thread there, and cost nothing on a quiet machine (7.4 steps/s both ways; measured 2026-12-07 with 30 linear
    layers of 576, batch 256, forward and backward). A user's own OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
