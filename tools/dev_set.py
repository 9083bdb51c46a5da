"""A development set: requests drawn like training rows, from another seed, for comparing two data recipes.

Validation rows come from each recipe's own training stream, so two recipes' validation scores are on
different rows. This writes one set both can be scored on: the training slots (never the held-out ones
the eval set uses), the natural quantity draw, and no text that is in any of the given training files.
Neither test set (data/eval.jsonl, data/handwritten.jsonl) is read or touched.

    python -m tools.dev_set --seed 777 --n 600 --exclude data/train.jsonl data/validation.jsonl --out /tmp/dev.jsonl
    python -m stages.eval --model models/merged --data /tmp/dev.jsonl --out /tmp/dev_merged.json
"""

from __future__ import annotations

import argparse
import random
import sys

from ecommerce_slm.catalog import load_catalog
from ecommerce_slm.compose import load_slots
from ecommerce_slm.files import iter_rows, write_jsonl
from ecommerce_slm.generator import generate_rows, plan_specs
from ecommerce_slm.noise import NoiseVocab
from stages.synthesize import DataConfig, offline_writer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True, help="not data.seed nor data.eval_seed")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--exclude", nargs="+", default=[], help=".jsonl files whose texts the set must not contain")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cfg = DataConfig.load()
    if args.seed in (cfg.seed, cfg.eval_seed):
        parser.error(f"--seed {args.seed} is data.seed or data.eval_seed: the set would repeat their rows")
    if cfg.backend != "offline" or cfg.source:
        parser.error(
            "draws from the offline generator's slots; params.yaml: data.backend must be offline and data.source empty"
        )
    catalog = load_catalog(cfg.catalog, cfg.languages)
    _, write, styles = offline_writer(cfg, catalog, load_slots(), NoiseVocab.load())
    exclude = {row["text"].casefold() for path in args.exclude for _, row in iter_rows(path)}
    rng = random.Random(args.seed)
    rows, counts = generate_rows(
        plan_specs(cfg.languages, cfg.quantity, catalog, styles, rng), write, args.n, rng, exclude
    )
    write_jsonl(args.out, rows)
    print(f"{args.out}: {len(rows)} rows, {counts['excluded']} drawn texts were in the excluded files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
