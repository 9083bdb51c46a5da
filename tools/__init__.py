"""Developer tools, run by hand or by `make`: `python -m tools.NAME` (docs/architecture.md lists them)."""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m tools.NAME` is importing this package: before the tool imports torch
    from ecommerce_slm.allocator import reexec_with_tcmalloc

    reexec_with_tcmalloc()
