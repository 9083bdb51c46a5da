"""Evaluating one variant: how accurate it is, where it fails, and whether schema-constrained decoding
fixes it. Run by the stages eval@VARIANT, eval_gguf@LEVEL and eval_api@MODEL, and by hand:

    python -m stages.eval --variant Q4_K_M --data my_requests.jsonl --out my_metrics.json
    python -m stages.eval --model path/to/folder-or.gguf --data my_requests.jsonl --out my_metrics.json

Your file needs text, action, product, quantity per row (language optional; JSONL, CSV or a datasets
folder). Settings come from params.yaml `eval:` (API baselines also `eval_api:`). Writes beside --out:
NAME.json (compact metrics: strict and lenient exact match, JSON validity, time, per decoding mode, and
KL divergence from the merged model), NAME.details.json (per field, language, action) and
NAME.errors.jsonl (every wrong prediction: input, expected, raw output, parsed, failed fields).
The details hold scikit-learn's per-field classification reports and the action and product confusion
matrices. The pipeline's eval stages also score data/handwritten.jsonl (requests written by hand, not by
the generator) with the same loaded model, into metrics/handwritten/.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from ecommerce_slm.catalog import load_catalog
from ecommerce_slm.cli import ProjectError
from ecommerce_slm.divergence import SavedReference, add_kl
from ecommerce_slm.endpoint import resolve_endpoint
from ecommerce_slm.engines import ApiEngine, LlamaCppEngine, LlamaServerEngine, TransformersEngine
from ecommerce_slm.files import RowFormatError, iter_rows, read_jsonl, write_json, write_jsonl
from ecommerce_slm.params import Section, check, is_pos_int
from ecommerce_slm.paths import (
    DEFAULT_CATALOG,
    EVAL_DIR,
    EVAL_FILE,
    HANDWRITTEN_DIR,
    HANDWRITTEN_FILE,
    KL_REFERENCE_DIR,
    TRAIN_FILE,
)
from ecommerce_slm.scoring import accuracy_summary, diagnostics, score_one
from ecommerce_slm.task import (
    ANSWER_FIELDS,
    DECODING_MODES,
    InvalidRow,
    answer_schema,
    few_shot_messages,
    is_schema_answer,
    prompt_messages,
    validate_row,
)
from ecommerce_slm.variants import REFERENCE_DIR, Variant


@dataclass
class EvalConfig(Section):
    """`eval:` exact-match accuracy of every variant on the eval split, free and schema-constrained.

    Read by the eval, eval_gguf and eval_api stages.
    """

    SECTION: ClassVar[str] = "eval"
    decoding: list = field(default_factory=lambda: list(DECODING_MODES))  # each mode is measured and reported
    # json_schema decoding restricts product to this catalog's names; "" allows any string
    catalog: str = DEFAULT_CATALOG
    max_new_tokens: int = 48
    batch_size: int = 64  # generated at once by transformers (merged, 300 rows: 16 -> 45 s, 64 -> 31 s)
    threads: int = 2
    # GGUF files: llama-server with `parallel` slots decoding at once (continuous batching), or the
    # llama-cpp-python binding one request at a time (what the server's answers are checked against)
    gguf_engine: str = "server"
    parallel: int = 16  # 16 slots: 300 rows in 32 s against 36 s with 8 (2 cores, Q4_K_M; 24 gain little more)
    limit: int = 0  # evaluate only the first N rows; 0: all
    few_shot: int = 6  # worked examples in the prompt of the untuned base and the API baselines
    few_shot_seed: int = 7
    kl_examples: int = 32  # eval requests (prompt + true answer) on which KL from the merged model is measured
    # GGUF levels: llama-perplexity's KL from the F16 file over this many eval requests and answers (plain
    # text), in chunks of perplexity_context tokens; a cross-check of the KL above with llama.cpp's own tool
    perplexity_rows: int = 100
    perplexity_context: int = 256
    # json_schema mode decodes again only the rows whose free answer the grammar would change; the rest
    # keep the free answer, the tokens greedy decoding under the grammar picks too (`decode`)
    schema_reuses_free: bool = True

    def __post_init__(self):
        check(
            len(self.decoding) > 0
            and all(m in DECODING_MODES for m in self.decoding)
            and len(set(self.decoding)) == len(self.decoding),
            "decoding",
            f"a list of modes from {list(DECODING_MODES)}",
            self.decoding,
        )
        check(self.gguf_engine in GGUF_ENGINES, "gguf_engine", f"one of {list(GGUF_ENGINES)}", self.gguf_engine)
        for name in ("max_new_tokens", "batch_size", "threads", "few_shot", "parallel"):
            check(is_pos_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        check(is_pos_int(self.perplexity_context), "perplexity_context", "a positive integer", self.perplexity_context)
        for name in ("limit", "kl_examples", "perplexity_rows"):
            check(getattr(self, name) >= 0, name, "an integer >= 0", getattr(self, name))
        check(isinstance(self.schema_reuses_free, bool), "schema_reuses_free", "true or false", self.schema_reuses_free)


GGUF_ENGINES = ("server", "binding")


class ApiSettings(Protocol):
    """What an API engine needs (the eval_api stage's EvalApiConfig)."""

    base_url: str
    api_key_env: str
    timeout_seconds: float
    max_attempts: int
    schema_format: str


class EvalError(ProjectError, RuntimeError):
    pass


def load_rows(path: str | Path, products: set[str] | None, limit: int = 0) -> list[dict]:
    rows = []
    try:
        for where, row in iter_rows(path):
            try:
                rows.append(validate_row(row, products))
            except InvalidRow as err:
                raise EvalError(f"{where}: {err}") from None
    except (FileNotFoundError, RowFormatError) as err:
        raise EvalError(str(err)) from None
    if not rows:
        raise EvalError(f"{path}: no rows")
    return rows[:limit] if limit else rows


def catalog_products(catalog: str) -> list[str] | None:
    if not catalog:
        return None
    return load_catalog(catalog, [], key="eval.catalog").names


def pick_few_shot(train_rows: list[dict], n: int, seed: int) -> list[dict]:
    """n examples spread over languages and actions (round robin over the groups), seeded."""
    rng = random.Random(seed)
    groups: dict[tuple, list[dict]] = {}
    for row in train_rows:
        groups.setdefault((row.get("language"), row["action"]), []).append(row)
    keys = sorted(groups, key=str)
    rng.shuffle(keys)
    picked = []
    while len(picked) < min(n, len(train_rows)):
        for key in keys:
            if groups[key] and len(picked) < n:
                picked.append(groups[key].pop(rng.randrange(len(groups[key]))))
    return picked


def conversations(rows: list[dict], examples: list[dict] | None) -> list[list[dict]]:
    if examples:
        return [few_shot_messages(r["text"], examples) for r in rows]
    return [prompt_messages(r["text"]) for r in rows]


def decode(
    engine, chats: list[list[dict]], schema: dict | None, free: list[str] | None = None
) -> tuple[list[str], set[int]]:
    """Greedy answers to chats, under `schema` if given; (answers, the rows whose answer was taken from `free`).

    Given the same chats' free answers, rows whose free answer is a complete schema answer keep it and only
    the others are decoded again. Greedy decoding under a grammar takes the best token the grammar allows;
    when the grammar accepts the whole free answer, the best token was allowed at every step, so the
    constrained answer is the same tokens. llama.cpp's sampler works the same way (it tries the
    unconstrained token first). A tuned model's free answers are nearly all schema answers, so this
    halves an eval; the one thing it skips is a second run of batched kernels that are not
    batch-invariant, which can flip near-ties either way.
    """
    kept = {}
    if schema is not None and free is not None and engine.greedy_under_grammar:
        kept = {i: answer for i, answer in enumerate(free) if is_schema_answer(answer, schema)}
    todo = [i for i in range(len(chats)) if i not in kept]
    answers = kept | dict(zip(todo, engine.generate([chats[i] for i in todo], schema), strict=True))
    return [answers[i] for i in range(len(chats))], set(kept)


def score_mode(
    engine, rows: list[dict], chats: list[list[dict]], schema: dict | None, mode: str, free: list[str] | None = None
) -> tuple[dict, dict, list[dict], list[str]]:
    """(compact metrics, details, errors, raw answers) of one decoding mode; `free`: see `decode`."""
    start = time.perf_counter()
    raw, kept = decode(engine, chats, schema, free)
    seconds = time.perf_counter() - start
    scores = [score_one(out, {f: r[f] for f in ANSWER_FIELDS}) for out, r in zip(raw, rows, strict=True)]
    details = accuracy_summary(rows, scores)
    details["diagnostics"] = diagnostics(rows, scores)
    compact = {k: details[k] for k in ("exact_match", "lenient_match", "json_valid")}
    compact.update(seconds=round(seconds, 1), requests_per_second=round(len(rows) / seconds, 2))
    if schema is not None:
        compact["free_answers_kept"] = len(kept)
    errors = [
        {
            "mode": mode,
            "engine": engine.kind,
            "text": r["text"],
            "language": r.get("language"),
            "expected": {f: r[f] for f in ANSWER_FIELDS},
            "raw": out,
            "parsed": s["parsed"],
            "parse_error": s["parse_error"],
            "failed_fields": s["failed_fields"],
            "unseen": r.get("unseen"),
            **({"free_answer_kept": i in kept} if schema is not None else {}),
        }
        for i, (r, out, s) in enumerate(zip(rows, raw, scores, strict=True))
        if not s["exact"]
    ]
    return compact, details, errors, raw


def open_engine(variant: Variant, cfg: EvalConfig, api: ApiSettings | None = None):
    if variant.engine == "transformers":
        return TransformersEngine(variant.location, cfg.threads, cfg.max_new_tokens, cfg.batch_size)
    if variant.engine == "llama_cpp" and cfg.gguf_engine == "server":
        return LlamaServerEngine(variant.location, cfg.threads, cfg.max_new_tokens, cfg.parallel)
    if variant.engine == "llama_cpp":
        return LlamaCppEngine(variant.location, cfg.threads, cfg.max_new_tokens)
    if api is None:
        raise EvalError(
            f"{variant.name}: API variants are evaluated by the eval_api stage (python -m stages.eval_api MODEL)"
        )
    return ApiEngine(
        variant.location,
        resolve_endpoint(api.base_url, api.api_key_env),
        api.timeout_seconds,
        api.max_attempts,
        cfg.max_new_tokens,
        api.schema_format,
    )


def score_rows(
    engine, variant: Variant, rows: list[dict], cfg: EvalConfig, examples: list[dict] | None = None
) -> tuple[dict, dict, list[dict]]:
    """Every decoding mode of cfg on rows with an open engine; (metrics without KL, details, errors)."""
    schema = answer_schema(catalog_products(cfg.catalog))
    chats = conversations(rows, examples if variant.few_shot else None)
    metrics = {"variant": variant.name, "engine": engine.kind, "n": len(rows)}
    details, errors = {"variant": variant.name}, []
    free = None
    for mode in sorted(cfg.decoding, key=DECODING_MODES.index):  # free first: json_schema may keep its answers
        reuse = free if cfg.schema_reuses_free else None
        mode_schema = schema if mode == "json_schema" else None
        compact, details[mode], wrong, raw = score_mode(engine, rows, chats, mode_schema, mode, reuse)
        free = raw if mode == "free" else free
        metrics[mode] = compact
        errors += wrong
    return metrics, details, errors


def evaluate(
    variant: Variant,
    rows: list[dict],
    cfg: EvalConfig,
    examples: list[dict] | None = None,
    reference_dir: Path | None = None,
    api: ApiSettings | None = None,
    engine=None,
    saved: SavedReference | None = None,
) -> tuple[dict, dict, list[dict]]:
    """Run every decoding mode of cfg on rows, and KL from the reference; (metrics, details, errors).

    Opens (and closes) the variant unless an open `engine` is given (the pipeline scores two sets with
    one load and times that load itself).
    """
    if engine is None:
        start = time.perf_counter()
        with contextlib.closing(open_engine(variant, cfg, api)) as engine:
            load_seconds = time.perf_counter() - start
            metrics, details, errors = evaluate(variant, rows, cfg, examples, reference_dir, api, engine, saved)
        metrics["load_seconds"] = round(load_seconds, 1)
        return metrics, details, errors
    metrics, details, errors = score_rows(engine, variant, rows, cfg, examples)
    add_kl(metrics, engine, variant, rows, cfg, reference_dir, saved)
    return metrics, details, errors


def result_files(out: Path) -> list[Path]:
    stem = out.name.removesuffix(".json")
    return [out.with_name(f"{stem}.details.json"), out.with_name(f"{stem}.errors.jsonl"), out]


def check_outputs(out: Path) -> None:
    """Fail before the work, not after it: every file the eval writes must be writable as a file."""
    for path in result_files(out):
        if path.is_dir():
            raise EvalError(f"--out {out}: {path} is a folder; expected a file path such as my_metrics.json")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise EvalError(f"--out {out}: {parent} is a file, not a folder")


def write_results(out: Path, metrics: dict, details: dict, errors: list[dict]) -> None:
    details_file, errors_file, _ = result_files(out)
    write_json(details_file, details)
    write_jsonl(errors_file, errors)
    write_json(out, metrics)  # last: its presence means the other two are complete


def skipped(variant: Variant, reason: str) -> dict:
    return {"variant": variant.name, "engine": variant.engine, "skipped": reason}


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every eval stage takes besides its variant: where the rows come from and where results go."""
    parser.add_argument(
        "--data", default=str(EVAL_FILE), help="rows with text, action, product, quantity (default: %(default)s)"
    )
    parser.add_argument("--out", help="metrics JSON (default: metrics/eval/VARIANT.json)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows (default: eval.limit)")


def data_sha256(path: str | Path) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else None


def summary_line(name: str, metrics: dict, modes: list[str], out: Path) -> str:
    scores = ", ".join(
        f"{m}: exact {metrics[m]['exact_match']} lenient {metrics[m]['lenient_match']} json "
        f"{metrics[m]['json_valid']} ({metrics[m]['seconds']} s)"
        for m in modes
    )
    return f"{name} on {metrics['n']} rows: {scores} -> {out}"


def run(variant: Variant, args: argparse.Namespace, cfg: EvalConfig, api: ApiSettings | None = None) -> str:
    """Evaluate `variant` on args.data with cfg (and args.limit), write its three files; return the summary.

    Without --out (the pipeline's eval stages) it also scores data/handwritten.jsonl with the same
    engine into metrics/handwritten/; --limit applies to both.
    """
    if args.limit is not None:
        cfg = cfg.with_overrides("--limit", limit=args.limit)
    pipeline = args.out is None
    if pipeline and Path(args.data).resolve() != EVAL_FILE.resolve():
        raise EvalError(
            f"--data {args.data}: a file other than {EVAL_FILE} needs --out ({EVAL_DIR}/ holds the "
            f"pipeline's results on {EVAL_FILE}, which the report reads)"
        )
    out = Path(args.out or EVAL_DIR / f"{variant.file_stem}.json")
    handwritten_out = HANDWRITTEN_DIR / f"{variant.file_stem}.json"
    check_outputs(out)
    endpoint = resolve_endpoint(api.base_url, api.api_key_env) if api is not None else None
    if endpoint is not None and endpoint.key is None and (endpoint.is_openai or api.api_key_env):
        reason = f"{endpoint.key_variable} is not set"
        for path in [handwritten_out] if pipeline else []:
            write_results(path, skipped(variant, reason), {"variant": variant.name}, [])
        write_results(out, skipped(variant, reason), {"variant": variant.name}, [])
        return f"{variant.name}: skipped, {reason} -> {out}"
    products = set(catalog_products(cfg.catalog) or []) or None
    sets = [(Path(args.data), out)] + ([(HANDWRITTEN_FILE, handwritten_out)] if pipeline else [])
    rows = {path: load_rows(path, None, cfg.limit) for path, _ in sets}
    for path, path_rows in rows.items():
        unknown = sorted({r["product"] for r in path_rows} - products) if products else []
        if unknown and "json_schema" in cfg.decoding:
            raise EvalError(
                f"{path}: products {unknown[:5]} are not in eval.catalog {cfg.catalog}; json_schema decoding "
                f'could never produce them (set eval.catalog: "" to allow any product)'
            )
    examples = pick_few_shot(read_jsonl(TRAIN_FILE), cfg.few_shot, cfg.few_shot_seed) if variant.few_shot else None
    # the pipeline's rows are the ones stage kl_reference saved the reference for (it declares only that);
    # a --limit of one's own, or a project that never ran the stage, measures it live, as by hand
    pipeline_rows = pipeline and args.limit is None
    saved = SavedReference(KL_REFERENCE_DIR) if pipeline_rows and KL_REFERENCE_DIR.is_dir() else None
    start = time.perf_counter()
    engine = open_engine(variant, cfg, api)
    load_seconds = time.perf_counter() - start
    lines, kl = [], None
    with contextlib.closing(engine):  # stops llama-server on every way out
        for index, (path, path_out) in enumerate(sets):
            if index == 0:
                metrics, details, errors = evaluate(
                    variant, rows[path], cfg, examples, REFERENCE_DIR, api, engine, saved
                )
                metrics["load_seconds"] = round(load_seconds, 1)
                kl = metrics["kl_from_merged"]
            else:  # KL is a property of the model, measured once on the eval set
                metrics, details, errors = score_rows(engine, variant, rows[path], cfg, examples)
            metrics.update(data=str(path), data_sha256=data_sha256(path))
            write_results(path_out, metrics, details, errors)
            lines.append(summary_line(f"{variant.name} ({path.name})", metrics, cfg.decoding, path_out))
    return f"{'; '.join(lines)}; KL {kl}"
