"""How far a variant's next-token distributions moved from the merged model's: KL divergence, two ways.

1. The project's own: the mean over the answer tokens of the first eval.kl_examples eval requests of
   KL(merged || variant), each side through its own engine.
2. llama.cpp's cross-check on GGUF levels: llama-perplexity's KL from the F16 file over the first
   eval.perplexity_rows requests and answers as plain text.

The reference side of both is the same for every variant, so the stage kl_reference computes it once per
merged model into models/kl_reference/ and the pipeline's eval stages read it there. Before, each of them
loaded the merged model and ran llama-perplexity over the F16 file again: 18 of a GGUF level's 80 s on
2 cores. An eval of other rows by hand (`--data`) measures against models/merged directly instead: the
saved reference covers only the rows it was computed from, which it checks by their hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ecommerce_slm.cli import ProjectError
from ecommerce_slm.engines import TransformersEngine
from ecommerce_slm.files import atomic_dir, atomic_write_bytes, write_json
from ecommerce_slm.llama_tools import perplexity_base, perplexity_kl, perplexity_kl_from_base
from ecommerce_slm.paths import F16_FILE
from ecommerce_slm.task import completion_messages, intent_of, prompt_messages
from ecommerce_slm.variants import Variant

if TYPE_CHECKING:
    from ecommerce_slm.evaluation import EvalConfig

LOGPROBS_FILE = "logprobs.safetensors"  # merged's log-probabilities at each answer position, whole vocabulary
PERPLEXITY_BASE_FILE = "F16.kld"  # llama-perplexity --kl-divergence-base of the F16 file
INFO_FILE = "reference.json"  # what both were computed from; written last, so it marks a complete folder


class KlError(ProjectError, RuntimeError):
    pass


def kl_sequences(rows: list[dict], tokenizer, n: int) -> list[tuple[list[int], int]]:
    """(token ids of prompt + true answer, index of the first answer token) for the first n rows."""
    out = []
    for row in rows[:n]:
        prompt = tokenizer.apply_chat_template(
            prompt_messages(row["text"]), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        full = tokenizer.apply_chat_template(
            prompt_messages(row["text"]) + completion_messages(intent_of(row)), tokenize=True, return_dict=True
        )["input_ids"]
        if full[: len(prompt)] != prompt:
            raise KlError("the chat template renders the prompt differently with and without the answer")
        out.append((full, len(prompt)))
    return out


def mean_kl(reference, engine, sequences: list[tuple[list[int], int]]) -> float:
    """Mean over answer positions of KL(reference || variant) of the next-token distributions."""
    total, positions = 0.0, 0
    for ids, start in sequences:
        p = reference.next_token_logprobs(ids, start)
        q = engine.next_token_logprobs(ids, start)
        if p.shape != q.shape:
            raise KlError(f"vocabularies differ: reference {tuple(p.shape)}, variant {tuple(q.shape)}")
        total += torch.sum(p.exp() * (p - q)).item()
        positions += p.shape[0]
    return total / positions


def answer_text(rows: list[dict]) -> str:
    """Requests and their answers as plain text, one after the other: what llama-perplexity's KL reads."""
    return "".join(f"{row['text']}\n{intent_of(row).to_json()}\n" for row in rows)


def rows_sha256(rows: list[dict]) -> str:
    return hashlib.sha256(answer_text(rows).encode()).hexdigest()


def kl_scope(rows: list[dict], n: int) -> dict:
    """What a saved KL reference was computed from: written with it, compared when it is read."""
    return {"rows": n, "rows_sha256": rows_sha256(rows[:n])}


def perplexity_scope(rows: list[dict], cfg: EvalConfig) -> dict:
    """What a saved llama-perplexity base was computed from (its context may shrink with few tokens)."""
    used = min(len(rows), cfg.perplexity_rows)
    return {"rows": used, "rows_sha256": rows_sha256(rows[:used]), "requested_context": cfg.perplexity_context}


def perplexity_plan(rows: list[dict], cfg: EvalConfig, reference_file: Path) -> dict:
    """The text llama-perplexity reads and its chunk size, or why there is too little of it."""
    import llama_cpp

    text = answer_text(rows[: cfg.perplexity_rows])
    tokens = len(llama_cpp.Llama(str(reference_file), vocab_only=True, verbose=False).tokenize(text.encode()))
    plan = perplexity_scope(rows, cfg)
    context = min(cfg.perplexity_context, tokens // 2)  # it needs at least two chunks
    if context < 32:
        return {**plan, "skipped": f"{tokens} tokens in {plan['rows']} rows: too few for two chunks"}
    return {**plan, "text": text, "tokens": tokens, "context": context}


class SavedReference:
    """models/kl_reference as the eval stages read it; as a KL reference it knows only its own sequences."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        info_file = self.folder / INFO_FILE
        self.info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        self._logprobs = None

    def _covers(self, part: str, scope: dict) -> bool:
        saved = self.info.get(part) or {}
        return all(saved.get(key) == value for key, value in scope.items())

    def covers_kl(self, rows: list[dict], n: int) -> bool:
        return self._covers("kl", kl_scope(rows, n))

    def covers_perplexity(self, rows: list[dict], cfg: EvalConfig) -> bool:
        return self._covers("perplexity", perplexity_scope(rows, cfg))

    @property
    def sequences(self) -> list[tuple[list[int], int]]:
        return [(ids, start) for ids, start in self.info["kl"]["sequences"]]

    def next_token_logprobs(self, ids: list[int], start: int) -> torch.Tensor:
        from safetensors.torch import load_file

        if self._logprobs is None:
            saved = load_file(self.folder / LOGPROBS_FILE)
            self._logprobs = {(tuple(ids_), start_): saved[str(i)] for i, (ids_, start_) in enumerate(self.sequences)}
        if (tuple(ids), start) not in self._logprobs:
            raise KlError(f"{self.folder}: no saved log-probabilities for this sequence")
        return self._logprobs[(tuple(ids), start)]

    def perplexity_kl(self, model: str | Path, threads: int) -> dict:
        plan = self.info["perplexity"]
        if "skipped" in plan:
            return {"skipped": plan["skipped"]}
        result = perplexity_kl_from_base(model, self.folder / PERPLEXITY_BASE_FILE, plan["context"], threads)
        return {"reference": plan["reference"], **result, "rows": plan["rows"], "tokens": plan["tokens"]}


def build_reference(rows: list[dict], cfg: EvalConfig, merged_dir: Path, f16_file: Path, out_dir: Path) -> dict:
    """Write out_dir (atomically): merged's log-probabilities for KL, the F16 base for llama-perplexity."""
    from safetensors.torch import save

    n = min(cfg.kl_examples, len(rows))
    info = {"kl": None, "perplexity": None}
    with atomic_dir(out_dir) as scratch:
        if n:
            if not (merged_dir / "config.json").is_file():
                raise KlError(f"{merged_dir}: no merged model (run dvc repro merge)")
            merged = TransformersEngine(merged_dir, cfg.threads)
            sequences = kl_sequences(rows, merged.tokenizer, n)
            logprobs = [merged.next_token_logprobs(ids, start).contiguous() for ids, start in sequences]
            atomic_write_bytes(scratch / LOGPROBS_FILE, save({str(i): lp for i, lp in enumerate(logprobs)}))
            info["kl"] = {
                "reference": str(merged_dir),
                **kl_scope(rows, n),
                "answer_tokens": sum(len(lp) for lp in logprobs),
                "sequences": [[ids, start] for ids, start in sequences],
            }
        if cfg.perplexity_rows:
            if not f16_file.is_file():
                raise KlError(f"{f16_file}: no F16 GGUF file (run dvc repro convert_gguf)")
            plan = perplexity_plan(rows, cfg, f16_file)
            if "text" in plan:
                perplexity_base(
                    f16_file, plan.pop("text"), plan["context"], cfg.threads, scratch / PERPLEXITY_BASE_FILE
                )
            info["perplexity"] = {"reference": str(f16_file), **plan}
        write_json(scratch / INFO_FILE, info)
    return info


def add_kl(
    metrics: dict,
    engine,
    variant: Variant,
    rows: list[dict],
    cfg: EvalConfig,
    reference_dir: Path | None,
    saved: SavedReference | None = None,
) -> None:
    """metrics["kl_from_merged"] (and "llama_perplexity" for GGUF files): against `saved` where it covers
    these rows, else live against reference_dir and the F16 file. With `saved` given, a reference that does
    not cover the rows is an error, not a reason to read the models (the pipeline declares only the saved one)."""
    metrics["kl_from_merged"], metrics["kl_note"] = None, None
    n = min(cfg.kl_examples, len(rows))
    if variant.engine == "api":
        metrics["kl_note"] = "an API exposes no full next-token distributions"
    elif variant.few_shot:  # and so eval@base does not depend on models/merged: no training run reruns it
        metrics["kl_note"] = (
            "not measured for the untuned base: it measures what training moved, not what compression lost"
        )
    elif reference_dir is not None and Path(variant.location) == Path(reference_dir):
        metrics["kl_from_merged"], metrics["kl_note"] = 0.0, "the merged model is the reference"
    elif saved is not None and n:
        if not saved.covers_kl(rows, n):
            raise stale(saved, f"the first {n} rows' answer tokens")
        set_kl(metrics, mean_kl(saved, engine, saved.sequences), n)
    elif reference_dir is None or not (reference_dir / "config.json").exists():
        metrics["kl_note"] = f"no reference model at {reference_dir}"
    elif n:
        reference = TransformersEngine(reference_dir, cfg.threads)
        set_kl(metrics, mean_kl(reference, engine, kl_sequences(rows, reference.tokenizer, n)), n)
    if variant.engine == "llama_cpp" and cfg.perplexity_rows:
        metrics["llama_perplexity"] = llama_perplexity(variant, rows, cfg, saved)


def set_kl(metrics: dict, kl: float, requests: int) -> None:
    metrics["kl_from_merged"] = float(f"{kl:.3g}")  # significant digits, not decimals: KL spans 1e-6 to 1
    metrics["kl_note"] = f"mean over the answer tokens of {requests} eval requests"


def stale(saved: SavedReference, what: str) -> KlError:
    return KlError(
        f"{saved.folder}: holds no reference for {what} (missing, or made from other rows or params); "
        f"run `dvc repro kl_reference`"
    )


def llama_perplexity(variant: Variant, rows: list[dict], cfg: EvalConfig, saved: SavedReference | None) -> dict:
    """llama-perplexity's KL of a GGUF level from the F16 file over eval requests and their answers."""
    if Path(variant.location).resolve() == F16_FILE.resolve():
        return {"skipped": "the F16 file is the reference"}
    if saved is not None:
        if not saved.covers_perplexity(rows, cfg):
            raise stale(saved, f"llama-perplexity over the first {cfg.perplexity_rows} rows")
        return saved.perplexity_kl(variant.location, cfg.threads)
    if not F16_FILE.is_file():
        return {"skipped": f"no reference {F16_FILE}"}
    plan = perplexity_plan(rows, cfg, F16_FILE)
    if "skipped" in plan:
        return {"skipped": plan["skipped"]}
    result = perplexity_kl(F16_FILE, variant.location, plan["text"], plan["context"], cfg.threads)
    return {**result, "rows": plan["rows"], "tokens": plan["tokens"]}
