"""Child programs (converter, quantizer, llama.cpp tools, server) that end with the stage that started them.

    subprocess.run(command, preexec_fn=ends_with_this_process())

Otherwise a stage killed with SIGKILL leaves its child running, still writing into a temporary output
that the stage's rerun has already removed (or, worse, moved into place).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def ends_with_this_process(sig: int = signal.SIGKILL, parent: int | None = None) -> Callable[[], None]:
    """A `preexec_fn`: the kernel sends the child `sig` when `parent` (this process by default) dies.

    The parent can die between fork and prctl; the kernel then never sends the signal, because the child
    already belongs to init. So the child compares its parent afterwards and ends itself: CI caught a
    converter orphaned in that window re-creating a temporary file the rerun had just removed.
    """
    parent = os.getpid() if parent is None else parent

    def in_child() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return in_child
