"""A development set: requests drawn like training rows, from another seed, for comparing two data recipes.

Validation rows come from each recipe's own training stream, so two recipes' validation scores are on
different rows. This writes one set both can be scored on: the training slots (never the held-out ones
the eval set uses), the natural quantity draw, and no text that is in any of the given training files.
Neither test set (data/eval.jsonl, data/handwritten.jsonl) is read or touched.

    python -m tools.dev_set --seed 777 --n 600 --exclude data/train.jsonl data/validation.jsonl --out /tmp/dev.jsonl
    python -m stages.eval --model models/merged --data /tmp/dev.jsonl --out /tmp/dev_merged.json

Such a set is drawn like training and so cannot see what a recipe does for words training lacks, which
is where the eval set's misses are. `--unseen-share S` builds the other kind: it holds out a second
seeded slice (S of each group of training frames, verbs and synonyms, never the eval set's slice) and
writes, besides the dev set built from it the way the eval set is built from its own slice, a training
file without it (`data.n_examples` rows or `--n-train`, `data.seed`). Recipes are then trained on that file and compared
on that set; no test set is read:

    python -m tools.dev_set --seed 778 --n 600 --unseen-share 0.2 --train-out /tmp/train_dev.jsonl --out /tmp/dev_unseen.jsonl
    dvc exp run --temp -n NAME -S data.source=/tmp/train_dev.jsonl [-S the recipe change] merge

`--plural-share S` draws quantities as training rows do, with S of the requests that name no number
written in the plural ("makni šampone"), a style the eval set never draws; `--style plural` keeps only
those rows:

    python -m tools.dev_set --seed 779 --n 300 --plural-share 1 --style plural --exclude ... --out /tmp/dev_plural.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys

from ecommerce_slm.catalog import load_catalog
from ecommerce_slm.compose import ComposeWriter, SlotSplit, load_slots, split_slots
from ecommerce_slm.files import iter_rows, write_jsonl
from ecommerce_slm.generator import QUANTITY_STYLES, generate_rows, plan_specs
from ecommerce_slm.noise import NoiseVocab
from stages.synthesize import DataConfig, offline_writer, training_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True, help="not data.seed nor data.eval_seed")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--exclude", nargs="+", default=[], help=".jsonl files whose texts the set must not contain")
    parser.add_argument("--out", required=True)
    parser.add_argument("--unseen-share", type=float, help="hold out this share of the training slots for the set")
    parser.add_argument("--train-out", help="with --unseen-share: the training rows without that slice (.jsonl)")
    parser.add_argument("--n-train", type=int, help="rows in --train-out (default: data.n_examples)")
    parser.add_argument("--plural-share", type=float, help="draw quantities as training does, this plural share")
    parser.add_argument("--style", choices=QUANTITY_STYLES, help="keep only rows of this quantity style")
    args = parser.parse_args(argv)
    cfg = DataConfig.load()
    if args.seed in (cfg.seed, cfg.eval_seed):
        parser.error(f"--seed {args.seed} is data.seed or data.eval_seed: the set would repeat their rows")
    if cfg.backend != "offline" or cfg.source:
        parser.error(
            "draws from the offline generator's slots; params.yaml: data.backend must be offline and data.source empty"
        )
    if (args.unseen_share is None) != (args.train_out is None):
        parser.error(
            "--unseen-share and --train-out go together: a set of unseen slots needs training data without them"
        )
    if args.unseen_share is not None and not 0 < args.unseen_share < 1:
        parser.error(f"--unseen-share: expected a share in (0, 1), got {args.unseen_share}")
    if args.n_train is not None and (args.train_out is None or args.n_train < 2):
        parser.error(f"--n-train: expected a row count >= 2 with --train-out, got {args.n_train}")
    if args.plural_share is not None and not 0 <= args.plural_share <= 1:
        parser.error(f"--plural-share: expected a share in [0, 1], got {args.plural_share}")
    catalog = load_catalog(cfg.catalog, cfg.languages)
    slots, vocab = load_slots(), NoiseVocab.load()
    eval_split, write, styles = offline_writer(cfg, catalog, slots, vocab)
    exclude = {row["text"].casefold() for path in args.exclude for _, row in iter_rows(path)}
    if args.unseen_share is not None:
        if args.n_train is not None:
            cfg = dataclasses.replace(cfg, n_examples=args.n_train)
        write, styles, train_rows = unseen_slice(cfg, catalog, slots, vocab, eval_split, args.unseen_share, args.seed)
        write_jsonl(args.train_out, train_rows)
        exclude |= {row["text"].casefold() for row in train_rows}
        print(f"{args.train_out}: {len(train_rows)} training rows without the slice")
    rng = random.Random(args.seed)
    like_training = args.plural_share is not None
    if like_training:
        cfg = dataclasses.replace(
            cfg, quantity=dataclasses.replace(cfg.quantity, training_plural_share=args.plural_share)
        )
    specs = plan_specs(cfg.languages, cfg.quantity, catalog, styles, rng, training=like_training)
    if args.style:
        specs = (spec for spec in specs if spec.quantity_style == args.style)
        write = in_style(write, args.style)
    rows, counts = generate_rows(specs, write, args.n, rng, exclude)
    write_jsonl(args.out, rows)
    print(f"{args.out}: {len(rows)} rows, {counts['excluded']} drawn texts were in the excluded files")
    return 0


def in_style(write, style: str):
    """The writer, rejecting a row whose text could not take the planned style: a Croatian subject ("treba
    mi {item_nom}") is written in the singular, so it is no plural row."""

    def written(spec, rng):
        text, reason, *meta = write(spec, rng)
        if meta and meta[0].get("quantity_style", style) != style:
            return None, f"written as {meta[0]['quantity_style']}"
        return (text, reason, *meta)

    return written


def unseen_slice(cfg: DataConfig, catalog, slots, vocab, eval_split: SlotSplit, share: float, seed: int):
    """(dev writer, its frames, training rows): a second held-out slice of the training slots, a writer that
    builds rows from it as the eval set's writer does from its own, and training rows that use neither."""
    dev = split_slots(slots, catalog, cfg.languages, share, seed, among=eval_split, purpose="dev")
    rates = cfg.noise.rates()
    both = {slot: eval_split.heldout[slot] | dev.heldout[slot] for slot in eval_split.heldout}
    train_write = ComposeWriter(slots, catalog, SlotSplit(both, eval_split.totals), rates, vocab)
    dev_write = ComposeWriter(
        slots,
        catalog,
        SlotSplit(dev.heldout, dev.totals, excluded=eval_split.heldout),
        rates,
        vocab,
        unseen_share=cfg.eval_unseen_share,
    )
    train_rows, _ = training_rows(cfg, catalog, train_write, train_write.styles(cfg.languages))
    return dev_write, dev_write.styles(cfg.languages), train_rows


if __name__ == "__main__":
    sys.exit(main())
