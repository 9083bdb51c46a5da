"""Exact match against the number of training requests seen: one training run, scored along the way.

    python -m tools.learning_curve --at 60,120,240,480 --out docs/learning_curve.json

Trains with the `train:` params (max_steps set to the last --at step) into a scratch folder (nothing
under models/ is touched) and, at each --at step, decodes the first `train.score_examples` validation
rows greedily and scores them as every eval does. Scoring pauses training: `train_seconds` counts the
training steps only. The learning rate schedule spans the whole run, so an intermediate point has not
been annealed the way a run that stops there would be: it is a lower bound for that many steps.
Validation rows only (drawn like training rows): no test set is read, so nothing is chosen by one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ecommerce_slm.cli import stage_main
from ecommerce_slm.files import read_jsonl, write_json
from ecommerce_slm.params import ParamError
from ecommerce_slm.paths import BASE_DIR, TRAIN_FILE, VALIDATION_FILE
from stages.train import TrainConfig, validation_scores
from tools.train_step_bench import train_in_scratch


def parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        steps = []
    if not steps or steps[0] < 1:
        raise ParamError(f"--at: expected positive step numbers separated by commas, got {text!r}")
    return steps


def curve(
    cfg: TrainConfig,
    at: list[int],
    base_dir: Path = BASE_DIR,
    train_file: Path = TRAIN_FILE,
    validation_file: Path = VALIDATION_FILE,
) -> list[dict]:
    from transformers import TrainerCallback

    rows = read_jsonl(validation_file)
    if not rows or cfg.score_examples < 1:
        raise ParamError(f"{validation_file}: no validation rows to score (or train.score_examples is 0)")
    points: list[dict] = []

    class Scorer(TrainerCallback):
        def __init__(self):
            self.paused = 0.0
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step not in at:
                return
            pause = time.perf_counter()
            scores = validation_scores(model, base_dir, rows, cfg)
            model.train()
            points.append(
                {
                    "step": state.global_step,
                    "requests_seen": state.global_step * cfg.batch_size * cfg.gradient_accumulation,
                    "train_seconds": round(pause - self.started - self.paused, 1),
                    **scores,
                }
            )
            print(f"learning_curve: step {state.global_step}: {scores['validation_exact_match']}", flush=True)
            self.paused += time.perf_counter() - pause

    cfg = dataclasses.replace(cfg, max_steps=max(at), save_steps=max(at))
    # scored by the callback, not again at the end
    train_in_scratch(dataclasses.replace(cfg, score_examples=0), [Scorer()], base_dir, train_file, validation_file)
    return points


@stage_main("learning_curve")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--at", default="60,120,240,480", help="steps at which to score, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("docs/learning_curve.json"))
    args = parser.parse_args(argv)
    cfg = TrainConfig.load()
    points = curve(cfg, parse_steps(args.at))
    write_json(args.out, {"params": dataclasses.asdict(cfg), "points": points})
    return " ".join(f"{p['requests_seen']}:{p['validation_exact_match']}" for p in points) + f" -> {args.out}"


if __name__ == "__main__":
    sys.exit(main())
