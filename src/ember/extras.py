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

    bench/omp_wait.py on 2 cores with one other busy process: a 2-thread training step ran 1.9-2.0 steps/s with
    OpenMP's spinning waits (the waiting thread spins on the core its partner needs), 3.5-3.9 with passive ones; on
    a quiet machine 6.5-6.6 against 5.5-6.8 (within the runs' noise). A user's own OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
