"""One module per dvc.yaml stage, named as the stage: `python -m stages.NAME` is what dvc.yaml runs.

Each is a pure function plus a thin `main`, with the dataclass of its own params.yaml section beside
it; a stage never imports another stage (shared code is in ecommerce_slm, developer tools in tools).
Modules that moved out of stages/ answer with where they went.
"""

from __future__ import annotations

import importlib.abc
import sys

if sys.argv[:1] == ["-m"]:  # `python -m PACKAGE.NAME` is importing this package: before the module imports torch
    from ecommerce_slm.allocator import reexec_with_tcmalloc

    reexec_with_tcmalloc()

MOVED = {
    "stages.evaluate": "python -m stages.eval (eval@VARIANT, and --data/--out/--model for your own files), "
    "python -m stages.eval_gguf LEVEL or python -m stages.eval_api MODEL",
    "stages.prune": "python -m tools.prune",
    "stages.plots_page": "python -m tools.plots_page",
    "stages.browser_check": "python -m tools.browser_check",
    "stages.train_step_bench": "python -m tools.train_step_bench",
    "stages.config": "each stage's own module (TrainConfig in stages.train, ...) or ecommerce_slm",
}


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            raise ModuleNotFoundError(f"{name} has moved: use {MOVED[name]} (see README, 'Renamed')", name=name)
        return None


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
