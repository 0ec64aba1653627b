"""Dramatiq's command line, run as the child of ``soulspot-jobs worker`` that ends with it.

``python -m soulspot_jobs.operate.dramatiq_child ARGS`` is ``python -m dramatiq ARGS``, except
that on Linux the process first asks the kernel for SIGTERM when its parent dies: if the
``soulspot-jobs worker`` process is killed outright, Dramatiq still stops its worker processes
cleanly instead of running on unsupervised. (Asking in the child itself, rather than in a
``preexec_fn``, keeps the fork in the parent free of Python code while its threads run.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import runpy
import signal
import sys

#: Environment variable holding the pid of the process this one must not outlive.
PARENT_PID_ENV = "SOULSPOT_WORKER_PARENT_PID"
#: ``prctl`` option asking Linux to signal this process when its parent thread exits.
_PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    expected = os.environ.pop(PARENT_PID_ENV, "")
    if not sys.platform.startswith("linux") or not expected.isdigit():
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(expected):
        # The parent died before the request was made: nobody would send the signal now.
        sys.exit(0)


def _log_in_our_format() -> None:
    """Configure logging before Dramatiq does, so its own process's lines ("booting up",
    "Sending signal ...") come out in our format too (Dramatiq's ``basicConfig`` then finds a
    handler and changes nothing). A bad setting is left for the worker processes to report."""
    from soulspot_jobs.errors import ConfigurationError
    from soulspot_jobs.logging import configure_logging
    from soulspot_jobs.settings import load_settings

    with contextlib.suppress(ConfigurationError):
        configure_logging(load_settings())


if __name__ == "__main__":
    _end_with_parent()
    _log_in_our_format()
    runpy.run_module("dramatiq", run_name="__main__", alter_sys=True)
