"""Worker processes of the tools (collect, check): they end with the process that started them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys


def die_with_parent() -> None:
    """A pool worker exits when its parent dies, even by SIGKILL (Linux: PR_SET_PDEATHSIG), instead of
    living on as an orphan that keeps a core and the pool's resource tracker busy. A pool initializer."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent.pid:  # the parent died before the request took effect
        os._exit(1)
