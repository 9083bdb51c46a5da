"""tcmalloc under the stages that make models: the same numbers, a training step 16-29% cheaper in bf16 on AMX, 5-13% in float32 on AVX2.

A bf16 LoRA step allocates and frees thousands of tensors; under glibc's malloc the 650-step default spent
1.25-1.40 s a step here, under tcmalloc 0.97-1.05 s, with bit-identical losses and adapter
(docs/measurements.md "tcmalloc"). An allocator can only be swapped before the process starts, so a stage
run as `python -m stages.train` (and the other MODEL_MAKERS) executes itself once more with the library in
LD_PRELOAD, from the package's `__init__`, before torch is imported. Only where the library is installed
(`make install` installs Debian's libtcmalloc-minimal4 where it can) and on Linux; ECOMMERCE_SLM_ALLOCATOR
=system keeps glibc's, =tcmalloc makes a missing library an error instead of a note. Stages that measure speed (eval, bench, load_test) keep the allocator a user has.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

LIBRARY = "tcmalloc_minimal"
CHOICE = "ECOMMERCE_SLM_ALLOCATOR"  # auto (tcmalloc where installed) | tcmalloc (required) | system
MODEL_MAKERS = {
    "stages.prepare_base",
    "stages.train",
    "stages.merge",
    "stages.quantize_gptq",
    "tools.learning_curve",
    "tools.train_step_bench",
}
INSTALL_HINT = "apt-get install libtcmalloc-minimal4 (or your system's gperftools) makes a training step 5-29% cheaper"


def find_tcmalloc() -> str | None:
    """The library's file name as the dynamic loader knows it, or None where it is not installed."""
    return ctypes.util.find_library(LIBRARY) if sys.platform.startswith("linux") else None


def in_use() -> str:
    """'tcmalloc' when this process runs on it, else 'system' (read from the process's own memory map)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "tcmalloc" if f"lib{LIBRARY}" in maps else "system"


def module_run(orig_argv: list[str]) -> str | None:
    """MODULE of a `python [flags] -m MODULE ...` command line, else None."""
    return orig_argv[orig_argv.index("-m") + 1] if "-m" in orig_argv[:-1] else None


def preload_environment(orig_argv: list[str], environ: dict[str, str], library: str | None) -> dict[str, str] | None:
    """The environment to execute `orig_argv` again with, or None to go on as is.

    Only for `python -m MODULE` with MODULE in MODEL_MAKERS, not when chosen off, not twice.
    """
    module = module_run(orig_argv)
    choice = environ.get(CHOICE, "auto")
    if choice not in ("auto", "tcmalloc", "system"):
        raise SystemExit(f"environment variable {CHOICE}={choice!r}: expected auto, tcmalloc or system")
    if module not in MODEL_MAKERS or choice == "system":
        return None
    if library is None:
        if choice == "tcmalloc":
            raise SystemExit(f"{CHOICE}=tcmalloc: lib{LIBRARY} is not installed; {INSTALL_HINT}")
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if LIBRARY in preloaded:
        return None
    return {**environ, "LD_PRELOAD": f"{library} {preloaded}".strip()}


def reexec_with_tcmalloc() -> None:
    """Called by stages/__init__.py and tools/__init__.py while `python -m` imports them."""
    library = find_tcmalloc()
    environment = preload_environment(sys.orig_argv, dict(os.environ), library)
    if library is None and os.environ.get(CHOICE, "auto") == "auto" and module_run(sys.orig_argv) in MODEL_MAKERS:
        print(f"note: glibc's malloc: lib{LIBRARY} is not installed; {INSTALL_HINT}", file=sys.stderr)
    if environment is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
