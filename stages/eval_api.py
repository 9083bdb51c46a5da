"""Stage `eval_api@MODEL`: few-shot baselines through any OpenAI-compatible endpoint (the paper: GPT-4.1).

    python -m stages.eval_api gpt-4.1            # data/eval.jsonl -> metrics/eval/api-gpt-4.1.json

Reads params.yaml: eval and eval_api. The endpoint and its key follow the openai client's conventions
(ecommerce_slm/endpoint.py). Without a key where one is needed, the baseline is skipped with the reason
in its metrics, never failed. After setting the key: `dvc repro -f -s eval_api@...`
(DVC cannot see environment variables).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from ecommerce_slm.cli import stage_main
from ecommerce_slm.evaluation import EvalConfig, cli_arguments, run
from ecommerce_slm.params import Section, check, is_pos_int
from ecommerce_slm.variants import resolve


@dataclass
class EvalApiConfig(Section):
    """`eval_api:` which models, and how to reach them."""

    SECTION: ClassVar[str] = "eval_api"
    models: list = field(default_factory=lambda: ["gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"])
    base_url: str = ""  # "": OPENAI_BASE_URL if set, else OpenAI's; any OpenAI-compatible endpoint
    api_key_env: str = ""  # "": OPENAI_API_KEY, for OpenAI's host only (never sent elsewhere unless named here)
    timeout_seconds: float = 60.0
    max_attempts: int = 4
    # how json_schema decoding is asked for: json_schema (OpenAI structured outputs) or
    # json_object (a "schema" inside response_format: llama-cpp-python's server and others)
    schema_format: str = "json_schema"

    def __post_init__(self):
        check(
            self.schema_format in ("json_schema", "json_object"),
            "schema_format",
            "json_schema or json_object",
            self.schema_format,
        )
        check(
            all(isinstance(m, str) and m.strip() for m in self.models), "models", "a list of model names", self.models
        )
        check(
            self.base_url == "" or self.base_url.startswith(("http://", "https://")),
            "base_url",
            "an http(s) URL or empty",
            self.base_url,
        )
        check(self.timeout_seconds > 0, "timeout_seconds", "a number > 0", self.timeout_seconds)
        check(is_pos_int(self.max_attempts), "max_attempts", "a positive integer", self.max_attempts)


@stage_main("eval_api")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the model name the endpoint knows (gpt-4.1, ...)")
    cli_arguments(parser)
    args = parser.parse_args(argv)
    return run(resolve(f"api:{args.model}"), args, EvalConfig.load(), EvalApiConfig.load())


if __name__ == "__main__":
    sys.exit(main())
