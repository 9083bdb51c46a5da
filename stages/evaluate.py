"""Evaluate a model folder on any JSONL of requests (fields text, action, product, quantity).

    python -m stages.evaluate --model models/merged --data data/eval.jsonl --out metrics/eval/merged.json

Greedy decoding, batched, prompt built by stages.task, scored by stages.scoring. Every wrong prediction
goes to a JSONL beside the metrics (input, expected, raw output, parsed, failed fields).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from stages.files import read_jsonl, write_json, write_jsonl
from stages.scoring import score_one, summarize
from stages.task import ANSWER_FIELDS, prompt_messages

MAX_NEW_TOKENS = 48


class TransformersEngine:
    """Greedy batched generation with transformers, for model folders (base, merged, GPTQ)."""

    def __init__(self, model_dir: str | Path, threads: int = 2):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def generate(self, texts: list[str], batch_size: int = 16) -> list[str]:
        outputs = []
        for i in range(0, len(texts), batch_size):
            prompts = [self.tokenizer.apply_chat_template(prompt_messages(t), add_generation_prompt=True, tokenize=False)
                       for t in texts[i:i + batch_size]]
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = self.model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            outputs += self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return outputs


def evaluate(engine, rows: list[dict]) -> tuple[dict, list[dict]]:
    start = time.perf_counter()
    raw = engine.generate([r["text"] for r in rows])
    seconds = time.perf_counter() - start
    scores = [score_one(out, {f: r[f] for f in ANSWER_FIELDS}) for out, r in zip(raw, rows)]
    metrics = summarize(rows, scores)
    metrics["seconds"] = round(seconds, 1)
    errors = [{"text": r["text"], "expected": {f: r[f] for f in ANSWER_FIELDS}, "raw": out, "parsed": s["parsed"],
               "parse_error": s["parse_error"], "failed_fields": s["failed_fields"], "language": r.get("language")}
              for r, out, s in zip(rows, raw, scores) if not s["exact"]]
    return metrics, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (e.g. models/merged)")
    parser.add_argument("--data", required=True, help="JSONL with text, action, product, quantity")
    parser.add_argument("--out", required=True, help="metrics JSON to write; wrong predictions go beside it")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N rows")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not Path(args.model, "config.json").exists():
        print(f"evaluate: error: {args.model}: not a model folder (no config.json)", file=sys.stderr)
        return 1
    rows = read_jsonl(args.data)
    rows = rows[: args.limit] if args.limit else rows
    metrics, errors = evaluate(TransformersEngine(args.model, args.threads), rows)
    out = Path(args.out)
    write_json(out, {"model": args.model, "data": args.data, **metrics})
    write_jsonl(out.with_name(out.stem + ".errors.jsonl"), errors)
    print(f"evaluate: exact {metrics['exact_match']}, lenient {metrics['lenient_match']}, json valid "
          f"{metrics['json_valid']} on {metrics['n']} rows in {metrics['seconds']} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
