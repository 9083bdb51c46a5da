"""How long one training step takes with the `train:` params, and with variations of them.

    python -m tools.train_step_bench --steps 12 --out docs/train_steps.json \
        --variant default --variant dropout=lora_dropout=0.05 --variant plain=quantization=none

Each variant trains `--steps` steps from scratch into a scratch folder (nothing under models/ is
touched) and records the time of every step. Reported: the median and range of the steps after the
first two (which pay for allocation, warm-up and compiling), the first step alone, and the thread count;
JSON, not a test, because step time on a shared 2-core VM moves by a third between hours.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ecommerce_slm.allocator import in_use as allocator_in_use
from ecommerce_slm.cli import stage_main
from ecommerce_slm.files import write_json
from ecommerce_slm.machine import cpu_info
from ecommerce_slm.params import ParamError
from ecommerce_slm.paths import BASE_DIR, TRAIN_FILE
from stages.train import TrainConfig, train

SKIPPED_STEPS = 2


def parse_variant(text: str, base: TrainConfig) -> tuple[str, TrainConfig]:
    """'name=key=value,key=value' (or 'default') -> (name, config). Values are YAML, as with `dvc exp run -S`
    (so `target_modules=[q_proj,v_proj]` is a list); keys and values are checked by TrainConfig itself."""
    name, _, assignments = text.partition("=")
    overrides = {}
    for item in filter(None, re.split(r",(?=\w+=)", assignments)):  # commas inside [a,b] stay with the value
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamError(f"--variant {text}: expected name=key=value[,key=value], got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return name, TrainConfig.from_dict({**dataclasses.asdict(base), **overrides}, path=f"--variant {name}")


def step_times(cfg: TrainConfig, steps: int, base_dir: Path = BASE_DIR, train_file: Path = TRAIN_FILE) -> list[float]:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter() - self.begin)

    clock = Clock()
    cfg = dataclasses.replace(cfg, max_steps=steps, save_steps=steps, eval_steps=steps)
    train_in_scratch(cfg, [clock], base_dir, train_file)
    return clock.ends


def train_in_scratch(
    cfg: TrainConfig, callbacks: list, base_dir: Path, train_file: Path, validation_file: Path | None = None
) -> dict:
    """A training run whose adapter and checkpoints go to a temporary folder: models/ is never touched."""
    with tempfile.TemporaryDirectory() as scratch:
        return train(
            cfg,
            base_dir=base_dir,
            train_file=train_file,
            validation_file=validation_file,
            adapter_dir=Path(scratch, "adapter"),
            checkpoint_dir=Path(scratch, "ckpt"),
            live_dir=None,
            callbacks=callbacks,
        )


def step_time_summary(times: list[float]) -> dict:
    kept = times[SKIPPED_STEPS:] or times
    return {
        "median_seconds_per_step": round(statistics.median(kept), 3),
        "min": round(min(kept), 3),
        "max": round(max(kept), 3),
        "steps_timed": len(kept),
        "first_step_seconds": round(times[0], 3),  # allocation and warm-up, and compiling (train.compile_layers)
    }


@stage_main("train_step_bench")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--variant", action="append", default=[], help="name=key=value[,key=value]; 'default' alone")
    parser.add_argument("--out", type=Path, default=Path("docs/train_steps.json"))
    args = parser.parse_args(argv)
    if args.steps <= SKIPPED_STEPS:
        raise ParamError(f"--steps: expected more than {SKIPPED_STEPS}, got {args.steps}")
    base = TrainConfig.load()
    variants = [parse_variant(v, base) for v in args.variant or ["default"]]
    results, cpu = {}, cpu_info()
    for name, cfg in variants:
        results[name] = {
            **step_time_summary(step_times(cfg, args.steps)),
            "threads": cfg.threads,
            "allocator": allocator_in_use(),
            "batch_size": cfg.batch_size,
            "quantization": cfg.quantization,
            "cpu": cpu["model"],
            "cpu_flags": cpu["flags"],  # s/step compares only between runs on the same instruction sets
        }
        print(f"train_step_bench: {name}: {results[name]['median_seconds_per_step']} s/step", flush=True)
    write_json(args.out, results)
    return f"{len(results)} variants -> {args.out}"


if __name__ == "__main__":
    sys.exit(main())
