"""Stage `synthesize`: train/validation/eval JSONL and data stats, from synthesis or from your own file.

python -m stages.synthesize          # reads params.yaml: data
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ecommerce_slm.catalog import Catalog, load_catalog
from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.compose import SLOT_NAMES, ComposeWriter, Slots, SlotSplit, load_slots, slot_texts, split_slots
from ecommerce_slm.files import RowFormatError, iter_rows, write_json, write_jsonl
from ecommerce_slm.generator import QuantityConfig, generate_rows, plan_specs, split_heldout
from ecommerce_slm.metaprompt import STYLE_IDS, MetapromptConfig, MetapromptWriter
from ecommerce_slm.noise import NOISE_TYPES, NOT_IN_ENGLISH, NoiseConfig, NoiseVocab
from ecommerce_slm.params import ParamError, Section, check, is_pos_int, is_rate
from ecommerce_slm.paths import (
    DATA_DETAILS,
    DATA_STATS,
    DEFAULT_CATALOG,
    EVAL_FILE,
    HANDWRITTEN_FILE,
    SLOTS_FILE,
    TRAIN_FILE,
    VALIDATION_FILE,
)
from ecommerce_slm.task import ACTIONS, InvalidRow, validate_row

OUTPUTS = {"train": TRAIN_FILE, "validation": VALIDATION_FILE, "eval": EVAL_FILE}


@dataclass
class DataConfig(Section):
    """`data:` where the training and eval data come from.

    source: empty to synthesise; else a JSONL or CSV file, or a `datasets.save_to_disk` folder,
            with fields text, action, product, quantity (language optional).
    eval_source: the same for the eval set; empty generates it with held-out slots.
    backend: `offline` (requests composed from independent slots, resources/slots.yaml, plus noise
             injectors) or `metaprompt` (an LLM writes the text).
    language_weights: how often each language comes in the training requests, e.g. {hr: 2, es: 1.5}
             (unlisted: 1; empty: an equal cycle, as in the paper). The eval set is never reweighted,
             so its per-language scores stay comparable across mixes.
    heldout_share: the share of frames, action expressions and product synonyms (metaprompt: styles)
             that training never sees; the eval set is written with them.
    eval_unseen_share: of the eval rows, the share that uses a held-out expression, and (independently)
             a held-out synonym where the product has one.
    """

    SECTION: ClassVar[str] = "data"
    source: str = ""
    eval_source: str = ""
    backend: str = "offline"
    catalog: str = DEFAULT_CATALOG
    languages: list = field(default_factory=lambda: ["en", "hr", "es"])
    language_weights: dict = field(default_factory=dict)  # training mix only; the eval set always cycles
    n_examples: int = 3000
    n_eval: int = 300
    validation_share: float = 0.1
    seed: int = 42
    eval_seed: int = 4242
    heldout_share: float = 0.2
    eval_unseen_share: float = 0.5
    on_invalid: str = "error"
    quantity: QuantityConfig = field(default_factory=QuantityConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    metaprompt: MetapromptConfig = field(default_factory=MetapromptConfig)

    def __post_init__(self):
        check(self.backend in ("offline", "metaprompt"), "backend", "offline or metaprompt", self.backend)
        check(
            len(self.languages) > 0 and all(isinstance(x, str) for x in self.languages),
            "languages",
            "a non-empty list of language codes",
            self.languages,
        )
        check(len(set(self.languages)) == len(self.languages), "languages", "no repeated language", self.languages)
        check(
            set(self.language_weights) <= set(self.languages),
            "language_weights",
            f"weights only for languages in data.languages {self.languages}",
            self.language_weights,
        )
        check(
            all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < math.inf
                for w in self.language_weights.values()
            ),
            "language_weights",
            "positive numbers, e.g. {hr: 2, es: 1.5}",
            self.language_weights,
        )
        check(is_pos_int(self.n_examples) and self.n_examples >= 2, "n_examples", "an integer >= 2", self.n_examples)
        check(is_pos_int(self.n_eval), "n_eval", "a positive integer", self.n_eval)
        check(
            is_rate(self.validation_share) and 0 < self.validation_share < 1,
            "validation_share",
            "a share in (0, 1)",
            self.validation_share,
        )
        check(self.seed != self.eval_seed, "eval_seed", "a seed different from data.seed", self.eval_seed)
        check(
            is_rate(self.heldout_share) and 0 < self.heldout_share < 1,
            "heldout_share",
            "a share in (0, 1)",
            self.heldout_share,
        )
        check(
            is_rate(self.eval_unseen_share) and self.eval_unseen_share > 0,
            "eval_unseen_share",
            "a share in (0, 1]",
            self.eval_unseen_share,
        )
        check(self.on_invalid in ("error", "drop"), "on_invalid", "error or drop", self.on_invalid)
        check(bool(self.catalog), "catalog", "a catalog file path", self.catalog)


class DataError(ProjectError, ValueError):
    pass


def load_rows(
    path: str, catalog: Catalog, on_invalid: str, languages: list[str] | None = None
) -> tuple[list[dict], list[str]]:
    """Validate every row of a user's file; stop at the first bad one, or drop and report them."""
    products = set(catalog.names)
    rows, dropped = [], []
    try:
        for where, row in iter_rows(path):
            try:
                rows.append(validate_row(row, products, languages))
            except InvalidRow as err:
                if on_invalid == "error":
                    raise DataError(f"{where}: {err} (set data.on_invalid: drop to skip bad rows)") from None
                dropped.append(f"{where}: {err}")
    except (FileNotFoundError, RowFormatError) as err:
        raise DataError(str(err)) from None
    if not rows:
        raise DataError(f"{path}: no valid rows")
    return rows, dropped


def unique_texts(rows: list[dict]) -> list[dict]:
    """The first row of each distinct text (case-insensitive), in order."""
    seen, out = set(), []
    for row in rows:
        if row["text"].casefold() not in seen:
            seen.add(row["text"].casefold())
            out.append(row)
    return out


def metaprompt_styles(cfg: DataConfig) -> tuple[dict, dict]:
    """(train styles, held-out styles) per (language, action) for the LLM backend."""
    train, heldout = {}, {}
    for language in cfg.languages:
        for action in ACTIONS:
            train[(language, action)], heldout[(language, action)] = split_heldout(
                STYLE_IDS, cfg.heldout_share, cfg.seed
            )
    return train, heldout


def offline_writer(
    cfg: DataConfig, catalog: Catalog, slots: Slots, vocab: NoiseVocab
) -> tuple[SlotSplit, ComposeWriter, dict[tuple[str, str], list[str]]]:
    """The held-out split, the writer of training rows (training slots only) and the frames it draws from."""
    split = split_slots(slots, catalog, cfg.languages, cfg.heldout_share, cfg.seed)
    write = ComposeWriter(slots, catalog, split, cfg.noise.rates(), vocab)
    return split, write, write.styles(cfg.languages)


def training_rows(cfg: DataConfig, catalog: Catalog, write, styles: dict) -> tuple[list[dict], dict]:
    """`data.n_examples` generated training requests (seeded by `data.seed`) and the generator's counts."""
    rng = random.Random(cfg.seed)
    specs = plan_specs(cfg.languages, cfg.quantity, catalog, styles, rng, cfg.language_weights, training=True)
    return generate_rows(specs, write, cfg.n_examples, rng)


def synthesize(
    cfg: DataConfig, catalog: Catalog, vocab: NoiseVocab | None = None, client=None
) -> tuple[dict[str, list[dict]], dict]:
    """Produce the three splits and their stats from params alone (deterministic for a seed)."""
    slots = load_slots()
    vocab = vocab or NoiseVocab.load()
    missing = [lang for lang in cfg.languages if lang not in slots.frames]
    if missing:
        raise ParamError(f"params.yaml: data.languages: no slots for {missing} in {SLOTS_FILE}")
    rates = cfg.noise.rates()
    split = None
    if cfg.backend == "offline":
        split, write, train_styles = offline_writer(cfg, catalog, slots, vocab)
        write_eval = ComposeWriter(slots, catalog, split, rates, vocab, unseen_share=cfg.eval_unseen_share)
        heldout_styles = write_eval.styles(cfg.languages)
    else:
        write = write_eval = MetapromptWriter(cfg.metaprompt, catalog, slot_texts(slots), rates, vocab, client=client)
        train_styles, heldout_styles = metaprompt_styles(cfg)

    stats: dict = {"backend": cfg.backend if not cfg.source else "source", "dropped_rows": 0}
    if cfg.source:
        if cfg.eval_source and Path(cfg.eval_source).resolve() == Path(cfg.source).resolve():
            raise DataError(
                f"params.yaml: data.eval_source: {cfg.eval_source} is data.source itself; every eval "
                'text would be in train (set it to a held-out file, or "" to generate the eval set)'
            )
        loaded, dropped = load_rows(cfg.source, catalog, cfg.on_invalid, cfg.languages)
        rows = unique_texts(loaded)  # a text in both train and validation would score its own memory
        if len(rows) < 2:
            raise DataError(f"{cfg.source}: {len(rows)} distinct request(s); train and validation need at least 2")
        stats["dropped_rows"] = len(dropped)
        stats["dropped_examples"] = dropped[:20]
        random.Random(cfg.seed).shuffle(rows)
        counts = {"drawn": len(loaded), "duplicates": len(loaded) - len(rows), "excluded": 0, "rejected": 0}
    else:
        rows, counts = training_rows(cfg, catalog, write, train_styles)
    n_val = max(1, round(len(rows) * cfg.validation_share))
    splits = {"train": rows[n_val:], "validation": rows[:n_val]}

    seen = {r["text"].casefold() for r in rows}
    if cfg.eval_source:
        splits["eval"], dropped = load_rows(cfg.eval_source, catalog, cfg.on_invalid)
        stats["dropped_rows"] += len(dropped)
        eval_counts = {}
        leaked = sum(r["text"].casefold() in seen for r in splits["eval"])
        if leaked:
            print(
                f"synthesize: warning: {leaked} of {len(splits['eval'])} rows of {cfg.eval_source} are also in the "
                "training data; their exact match measures memory, not generalization",
                file=sys.stderr,
            )
    else:
        rng = random.Random(cfg.eval_seed)
        splits["eval"], eval_counts = generate_rows(
            plan_specs(cfg.languages, cfg.quantity, catalog, heldout_styles, rng),
            write_eval,
            cfg.n_eval,
            rng,
            exclude=seen,
        )
    stats.update(dataset_stats(splits, counts, eval_counts, train_styles, heldout_styles))
    if split is not None and not cfg.source:
        stats["heldout"].update(slot_stats(splits, split))
    if HANDWRITTEN_FILE.exists():  # the hand-written test set is never read to make data: only checked against it
        handwritten = {row["text"].casefold() for _, row in iter_rows(HANDWRITTEN_FILE)}
        stats["heldout"]["handwritten_texts_in_train"] = len(handwritten & seen)
    if isinstance(write, MetapromptWriter):
        stats["metaprompt"] = write.stats()
    return splits, stats


def dataset_stats(
    splits: dict[str, list[dict]], counts: dict, eval_counts: dict, train_styles: dict, heldout_styles: dict
) -> dict:
    train = splits["train"]
    # distinct per language: the offline backend lists a language's frames once per action
    n_train_styles = len({(language, s) for (language, _), v in train_styles.items() for s in v})
    n_heldout = len({(language, s) for (language, _), v in heldout_styles.items() for s in v})
    heldout_ids = {s for v in heldout_styles.values() for s in v}
    quantities = Counter(r["quantity"] for r in train)
    train_texts = {r["text"].casefold() for r in train + splits["validation"]}

    def share(rows, pred):
        return round(sum(map(pred, rows)) / len(rows), 4) if rows else 0.0

    noise = {}
    for kind in NOISE_TYPES:
        eligible = [r for r in train if kind not in NOT_IN_ENGLISH or r.get("language") != "en"]
        noise[kind] = share(eligible, lambda r, k=kind: k in r.get("noise", []))
    return {
        "rows": {name: len(rows) for name, rows in splits.items()},
        "languages": {
            name: dict(sorted(Counter(r.get("language", "unknown") for r in rows).items()))
            for name, rows in splits.items()
        },
        "actions": {name: dict(sorted(Counter(r["action"] for r in rows).items())) for name, rows in splits.items()},
        "products": dict(sorted(Counter(r["product"] for r in train).items())),
        "n_products": len({r["product"] for r in train}),
        "product_rows_min": min(Counter(r["product"] for r in train).values(), default=0),
        "product_rows_max": max(Counter(r["product"] for r in train).values(), default=0),
        "quantity": {
            "share_1_to_3": share(train, lambda r: r["quantity"] <= 3),
            "max": max(quantities, default=0),
            "mean": round(sum(q * c for q, c in quantities.items()) / max(1, len(train)), 3),
            "styles": dict(sorted(Counter(r.get("quantity_style", "unknown") for r in train).items())),
            # per language: how many of the quantities 1..max the training stream writes in words at least once
            "words_covered": {
                language: len(
                    {
                        r["quantity"]
                        for r in train + splits["validation"]
                        if r.get("quantity_style") == "words" and r.get("language") == language
                    }
                )
                for language in sorted({r.get("language", "unknown") for r in train})
            },
        },
        "noise_rates": noise,
        "any_noise_rate": share(train, lambda r: bool(r.get("noise"))),
        "duplicate_rate": round(counts["duplicates"] / counts["drawn"], 4) if counts.get("drawn") else 0.0,
        "rejected": counts.get("rejected", 0) + eval_counts.get("rejected", 0),
        "heldout": {
            "styles_total": n_train_styles + n_heldout,
            "styles_heldout": n_heldout,
            "heldout_share": round(n_heldout / (n_train_styles + n_heldout), 4),
            "eval_rows_from_heldout": share(splits["eval"], lambda r: r.get("style") in heldout_ids),
            "train_rows_from_heldout": share(train + splits["validation"], lambda r: r.get("style") in heldout_ids),
            "eval_texts_in_train": sum(r["text"].casefold() in train_texts for r in splits["eval"]),
        },
    }


def slot_stats(splits: dict[str, list[dict]], split) -> dict:
    """Held-out share per slot, how many training rows use a held-out slot (must be 0), and how many eval
    rows use an expression or a synonym training never saw."""
    trained = splits["train"] + splits["validation"]
    used = {
        "frame": lambda r: r.get("style"),
        "expression": lambda r: r.get("expression"),
        "synonym": lambda r: r.get("product_form"),
    }
    return {
        "slots": split.shares(),
        "train_rows_with_heldout_slot": sum(any(used[s](r) in split.heldout[s] for s in SLOT_NAMES) for r in trained),
        "eval_rows_unseen": {
            slot: sum(slot in r.get("unseen", []) for r in splits["eval"]) for slot in ("expression", "synonym")
        },
    }


def compact_stats(stats: dict) -> dict:
    """The stats without the per-split and per-product breakdowns."""
    compact = {k: v for k, v in stats.items() if k not in ("languages", "actions", "products", "dropped_examples")}
    compact["languages"] = stats["languages"]["train"]
    compact["actions"] = stats["actions"]["train"]
    return compact


@stage_main("synthesize")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    cfg = DataConfig.load()
    catalog = load_catalog(cfg.catalog, cfg.languages)
    splits, stats = synthesize(cfg, catalog)
    for name, path in OUTPUTS.items():
        write_jsonl(path, splits[name])
    write_json(DATA_DETAILS, stats)
    write_json(DATA_STATS, compact_stats(stats))
    return (
        f"{stats['rows']} rows, languages {stats['languages']['train']}, "
        f"duplicate rate {stats['duplicate_rate']}, held-out share {stats['heldout']['heldout_share']}"
    )


if __name__ == "__main__":
    sys.exit(main())
