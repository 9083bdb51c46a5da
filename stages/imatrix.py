"""Stage `imatrix`: the importance matrix of the merged model, for the -imat and IQ levels.

    python -m stages.imatrix        # reads params.yaml: gguf (imatrix_rows, imatrix_context, threads)

llama-imatrix runs models/gguf/F16.gguf over the first gguf.imatrix_rows training requests, each
rendered with the model's chat template as it is trained (system prompt, request, JSON answer), and
records how strongly each weight column is used; llama-quantize then spends its bits where that is
high. Only training rows: the eval sets never shape a variant. Writes models/gguf/imatrix.gguf,
the text it read beside it, and metrics/imatrix.json.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.files import atomic_file, atomic_write_text, read_jsonl, write_json
from ecommerce_slm.gguf_file import GgufConfig
from ecommerce_slm.llama_tools import tool
from ecommerce_slm.paths import F16_FILE, IMATRIX_FILE, IMATRIX_METRICS, IMATRIX_TEXT, MERGED_DIR, TRAIN_FILE
from ecommerce_slm.processes import ends_with_this_process
from ecommerce_slm.task import completion_messages, intent_of, prompt_messages


class ImatrixError(ProjectError, RuntimeError):
    pass


def calibration_text(rows: list[dict], tokenizer) -> str:
    """Each row as the model sees it in training: the chat template over prompt and answer."""
    return "".join(
        tokenizer.apply_chat_template(
            prompt_messages(row["text"]) + completion_messages(intent_of(row)), tokenize=False
        )
        for row in rows
    )


def compute(source, text_file, out_file, context: int, threads: int) -> tuple[float, str]:
    """llama-imatrix into a temporary file moved into place; (seconds, its log)."""
    start = time.perf_counter()
    with atomic_file(out_file) as tmp:
        done = subprocess.run(
            [
                tool("llama-imatrix"),
                "--model",
                str(source),
                "--file",
                str(text_file),
                "--output-file",
                str(tmp),
                "--output-format",
                "gguf",
                "--ctx-size",
                str(context),
                "--threads",
                str(threads),
                "--parse-special",  # <|im_start|> and friends are the template's tokens, not text
                "--no-ppl",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            errors="replace",
            preexec_fn=ends_with_this_process(),
        )
        log = done.stdout + done.stderr
        if done.returncode != 0 or not tmp.is_file():
            raise ImatrixError(f"llama-imatrix on {source} exited with {done.returncode}:\n{log[-2000:]}")
    return time.perf_counter() - start, log


@stage_main("imatrix")
def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from transformers import AutoTokenizer

    cfg = GgufConfig.load()
    if not F16_FILE.exists():
        raise FileNotFoundError(f"{F16_FILE}: missing F16 GGUF (run convert_gguf)")
    rows = read_jsonl(TRAIN_FILE)[: cfg.imatrix_rows]
    text = calibration_text(rows, AutoTokenizer.from_pretrained(MERGED_DIR))
    atomic_write_text(IMATRIX_TEXT, text)
    seconds, log = compute(F16_FILE, IMATRIX_TEXT, IMATRIX_FILE, cfg.imatrix_context, cfg.threads)
    chunks = re.search(r"computing over (\d+) chunks", log)
    info = {
        "variant": "imatrix",
        "path": str(IMATRIX_FILE),
        "source": str(F16_FILE),
        "rows": len(rows),
        "characters": len(text),
        "context": cfg.imatrix_context,
        "chunks": int(chunks[1]) if chunks else None,
        "seconds": round(seconds, 1),
        "threads": cfg.threads,
    }
    write_json(IMATRIX_METRICS, info)
    return f"{len(rows)} training requests, {info['chunks']} chunks of {cfg.imatrix_context} tokens in {seconds:.0f} s -> {IMATRIX_FILE}"


if __name__ == "__main__":
    sys.exit(main())
