"""A catalogue of bad inputs and faults, each run against a stage or tool, each judged the same way.

    python -m tools.fault_catalogue                      # run every case, print the counts
    python -m tools.fault_catalogue --write docs/reliability.md

Every case builds a small project folder (params.yaml, the catalog, a few data rows), breaks one thing
in it (a params value, a data file, the base model, a CLI flag, an API endpoint that answers 401 ...),
runs the stage's `main` in-process with that folder as the working directory, and is judged:

    clear      exit 1, one line `STAGE: error: ...` naming the field or file:line, no file changed
    traceback  an exception escaped `main`
    silent     exit 0: the bad input was accepted
    unclear    an error, but not one line, or not naming what the case expects
    leftover   an error, but a file was written, changed or left behind

tests/test_faults.py runs the same catalogue and requires every case to be clear.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import math
import os
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from ecommerce_slm.cli import stage_main
from ecommerce_slm.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SECTION_STAGE = {  # a stage whose main loads the section first (or right after sections that stay valid)
    "base": ("stages.prepare_base", ()),
    "data": ("stages.synthesize", ()),
    "train": ("stages.train", ()),
    "merge": ("stages.merge", ()),
    "gptq": ("stages.quantize_gptq", ()),
    "gguf": ("stages.quantize_gguf", ("Q4_K_M",)),
    "eval": ("stages.eval", ("--variant", "merged")),
    "eval_api": ("stages.eval_api", ("gpt-4.1",)),
    "bench": ("stages.bench", ("--variant", "merged")),
    "report": ("stages.report", ()),
}
GOOD_ROW = {"text": "add 2 shampoos", "action": "add", "product": "Shampoo", "quantity": 2, "language": "en"}
WRONG_TYPE = {bool: "yes", int: "many", float: "lots", str: 5, list: "x"}


@dataclass(frozen=True)
class Case:
    id: str
    group: str  # params | data | base model | cli | api
    module: str  # the stage or tool whose main runs
    argv: tuple[str, ...]
    expect: str  # what the one-line error must contain
    setup: Callable[[Path, str], None] = lambda root, url: None  # breaks one thing in the project folder


@dataclass(frozen=True)
class Outcome:
    kind: str  # clear | traceback | silent | unclear | leftover
    detail: str


# ---- the project folder each case starts from --------------------------------------------------------------


def make_project(root: Path) -> Path:
    """params.yaml as shipped, the catalog it names, and a few rows in data/ (train, eval and handwritten)."""
    (root / "ecommerce_slm" / "resources").mkdir(parents=True, exist_ok=True)
    (root / "ecommerce_slm/resources/catalog.yaml").write_bytes(
        (ROOT / "ecommerce_slm/resources/catalog.yaml").read_bytes()
    )
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    rows = [{**GOOD_ROW, "text": f"add {n} shampoos", "quantity": n} for n in range(1, 9)]
    (root / "data").mkdir(exist_ok=True)
    for name in ("train", "eval", "handwritten"):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def set_param(root: Path, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    node = params
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def drop_section(root: Path, section: str) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    del params[section]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write(root: Path, name: str, content: str | bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(16)


# ---- the cases ------------------------------------------------------------------------------------------------


def params_cases() -> Iterator[Case]:
    from ecommerce_slm.params import SECTIONS

    for name in SECTION_STAGE:
        importlib.import_module(SECTION_STAGE[name][0])  # registers its sections
    for section, (module, argv) in SECTION_STAGE.items():
        yield Case(
            f"params/{section}/missing",
            "params",
            module,
            argv,
            f"missing section '{section}'",
            lambda root, url, s=section: drop_section(root, s),
        )
        yield Case(
            f"params/{section}/unknown-key",
            "params",
            module,
            argv,
            f"{section}.no_such_knob: unknown key",
            lambda root, url, s=section: set_param(root, f"{s}.no_such_knob", 1),
        )
        yield Case(
            f"params/{section}/yaml-syntax",
            "params",
            module,
            argv,
            "params.yaml:",
            lambda root, url, s=section: write(
                root, "params.yaml", (root / "params.yaml").read_text() + f"{s}: [oops\n"
            ),
        )

        for key, kind in SECTIONS[section].keys():
            wrong = WRONG_TYPE.get(kind, {"a": 1})  # Any: a mapping is never a valid value
            yield Case(
                f"params/{key}/wrong-type",
                "params",
                module,
                argv,
                f"{key}: expected",
                lambda root, url, k=key, v=wrong: set_param(root, k, v),
            )
            if kind in (int, float):
                yield Case(
                    f"params/{key}/bool-for-number",
                    "params",
                    module,
                    argv,
                    f"{key}: expected",
                    lambda root, url, k=key: set_param(root, k, True),
                )
            if kind is float:
                yield Case(
                    f"params/{key}/infinity",
                    "params",
                    module,
                    argv,
                    f"{key}: expected a finite number",
                    lambda root, url, k=key: set_param(root, k, math.inf),
                )
    out_of_range = [
        ("base.dtype", "int8"),
        ("data.n_examples", 0),
        ("data.noise.typo", 1.5),
        ("data.quantity.max", 500),
        ("data.languages", ["de"]),
        ("data.catalog", "nowhere.yaml"),
        ("train.lora_dropout", 1.0),
        ("train.max_steps", 0),
        ("train.learning_rate", 2),
        ("train.warmup_ratio", 1.5),
        ("merge.tolerance", -1),
        ("gptq.bits", 5),
        ("gptq.damp_percent", 1.5),
        ("gguf.threads", 0),
        ("eval.limit", -1),
        ("eval.decoding", ["greedy"]),
        ("eval.catalog", "nowhere.yaml"),
        ("eval_api.max_attempts", 0),
        ("eval_api.schema_format", "xml"),
        ("bench.new_tokens", 1),
        ("report.decoding", "beam"),
    ]
    for key, value in out_of_range:
        module, argv = SECTION_STAGE[key.split(".")[0]]
        yield Case(
            f"params/{key}/out-of-range",
            "params",
            module,
            argv,
            key if "catalog" not in key else f"nowhere.yaml: catalog file not found (params.yaml: {key})",
            lambda root, url, k=key, v=value: set_param(root, k, v),
        )
    # `auto` or a number: the field's type is Any, so the type cases above only try a mapping on it
    for key, name, value in (
        ("train.learning_rate", "a-word", "lots"),
        ("train.learning_rate", "bool-for-number", True),
        ("train.auto_learning_rate", "a-budget-missing", {"float32": 0.002}),
    ):
        module, argv = SECTION_STAGE["train"]
        yield Case(
            f"params/{key}/{name}", "params", module, argv, key, lambda root, url, k=key, v=value: set_param(root, k, v)
        )


def data_cases() -> Iterator[Case]:
    def source(content: str | bytes, name: str = "mine.jsonl", **params):
        def setup(root: Path, url: str) -> None:
            write(root, name, content)
            set_param(root, "data.source", name)
            for key, value in params.items():
                set_param(root, f"data.{key}", value)

        return setup

    good = json.dumps(GOOD_ROW)
    rows = "".join(json.dumps({**GOOD_ROW, "text": f"add {n} shampoos"}) + "\n" for n in range(1, 6))
    cases = [
        ("malformed-line", source(good + "\n{not json\n"), "mine.jsonl:2: row: expected one JSON object per line"),
        (
            "missing-field",
            source(json.dumps({"action": "add", "product": "Shampoo", "quantity": 1}) + "\n"),
            "mine.jsonl:1: text:",
        ),
        ("wrong-type", source(json.dumps({**GOOD_ROW, "quantity": "x"}) + "\n"), "mine.jsonl:1: quantity:"),
        ("superscript-quantity", source(json.dumps({**GOOD_ROW, "quantity": "³"}) + "\n"), "mine.jsonl:1: quantity:"),
        (
            "quantity-over-cap",
            source(json.dumps({**GOOD_ROW, "quantity": 10000}) + "\n"),
            "mine.jsonl:1: quantity: expected an integer in 1..9999",
        ),
        ("unknown-product", source(json.dumps({**GOOD_ROW, "product": "Unicorn"}) + "\n"), "mine.jsonl:1: product:"),
        ("unsupported-language", source(json.dumps({**GOOD_ROW, "language": "de"}) + "\n"), "mine.jsonl:1: language:"),
        ("non-utf8", source(good.encode() + b"\n" + b'{"text": "add 2 \xe9p\xe9es"}\n'), "mine.jsonl:2: not UTF-8"),
        ("empty", source(""), "mine.jsonl: no valid rows"),
        (
            "oversize-row",
            source(json.dumps({**GOOD_ROW, "text": "add " + "x" * 5000}) + "\n"),
            "mine.jsonl:1: text: expected a request of at most",
        ),
        ("one-row", source(good + "\n"), "train and validation need at least 2"),
        ("duplicates-only", source(good + "\n" + good + "\n"), "1 distinct request(s)"),
        ("eval-source-is-source", source(rows, eval_source="mine.jsonl"), "data.eval_source"),
        (
            "csv-bad-quantity",
            source("text,action,product,quantity\nadd 2 shampoos,add,Shampoo,two\n", "mine.csv"),
            "mine.csv:2: quantity:",
        ),
        ("wrong-extension", source(good, "mine.txt"), "expected a .jsonl, .csv file"),
        ("missing-file", lambda root, url: set_param(root, "data.source", "none.jsonl"), "none.jsonl"),
    ]
    for name, setup, expect in cases:
        yield Case(f"data/{name}", "data", "stages.synthesize", (), expect, setup)
    # the same rows through the eval CLI
    for name, content, expect in [
        ("malformed-line", good + "\n{not json\n", "bad.jsonl:2: row"),
        ("non-utf8", b'{"text": "\xff"}\n', "bad.jsonl:1: not UTF-8"),
        (
            "oversize-row",
            json.dumps({**GOOD_ROW, "text": "x" * 10_000_000}) + "\n",
            "bad.jsonl:1: text: expected a request of at most",
        ),
        ("quantity-over-cap", json.dumps({**GOOD_ROW, "quantity": 99999}) + "\n", "bad.jsonl:1: quantity"),
        ("empty", "", "bad.jsonl: no rows"),
    ]:
        yield Case(
            f"data/eval-{name}",
            "data",
            "stages.eval",
            ("--variant", "merged", "--data", "bad.jsonl", "--out", "out.json"),
            expect,
            lambda root, url, c=content: write(root, "bad.jsonl", c),
        )


def base_model_cases() -> Iterator[Case]:
    def model(path: str, files: dict[str, bytes | str]):
        def setup(root: Path, url: str) -> None:
            for name, content in files.items():
                write(root, name, content)
            set_param(root, "base.model", path)

        return setup

    weights = safetensors_bytes()
    cases = [
        ("missing-folder", model("./nowhere", {}), "folder './nowhere' not found"),
        ("empty-folder", model("empty", {"empty/README": ""}), "empty is not a model folder (no config.json)"),
        (
            "pickled-weights",
            model("pickled", {"pickled/config.json": "{}", "pickled/pytorch_model.bin": b"\x80\x04"}),
            "pytorch_model.bin is pickled",
        ),
        (
            "truncated-safetensors",
            model("cut", {"cut/config.json": "{}", "cut/model.safetensors": weights[:-8]}),
            "model.safetensors: not a readable safetensors file",
        ),
        (
            "corrupt-header",
            model("corrupt", {"corrupt/config.json": "{}", "corrupt/model.safetensors": b"\xff" * 64}),
            "model.safetensors: not a readable safetensors file",
        ),
        ("text-named-gguf", model("model.gguf", {"model.gguf": "not a model\n"}), "model.gguf is not a GGUF file"),
        (
            "missing-gguf",
            lambda root, url: set_param(root, "base.model", "none.gguf"),
            "GGUF file 'none.gguf' not found",
        ),
        (
            "unknown-embedded",
            lambda root, url: set_param(root, "base.model", "embedded:Nope"),
            "unknown embedded model 'Nope'",
        ),
    ]
    for name, setup, expect in cases:
        yield Case(f"base-model/{name}", "base model", "stages.prepare_base", (), expect, setup)


def cli_cases() -> Iterator[Case]:
    cases = [
        (
            "eval-negative-limit",
            "stages.eval",
            ("--variant", "merged", "--limit", "-1"),
            "--limit: eval.limit: expected an integer >= 0",
        ),
        ("eval-unknown-variant", "stages.eval", ("--variant", "Q9_K"), "unknown variant 'Q9_K'"),
        ("eval-api-variant", "stages.eval", ("--variant", "api:gpt-4.1"), "python -m stages.eval_api"),
        ("eval-data-without-out", "stages.eval", ("--variant", "merged", "--data", "data/train.jsonl"), "needs --out"),
        ("eval-out-is-folder", "stages.eval", ("--variant", "merged", "--out", "data"), "data is a folder"),
        (
            "eval-out-under-file",
            "stages.eval",
            ("--variant", "merged", "--out", "params.yaml/x.json"),
            "params.yaml is a file",
        ),
        ("eval-gguf-imatrix-level", "stages.eval_gguf", ("IQ2_XXS-imat",), "IQ2_XXS always uses the importance matrix"),
        ("quantize-imatrix-missing", "stages.quantize_gguf", ("IQ4_XS",), "needs the importance matrix"),
        ("kl-reference-no-merged", "stages.kl_reference", (), "no merged model (run dvc repro merge)"),
        ("eval-api-path-traversal", "stages.eval_api", ("../../etc",), "no '..'"),
        ("quantize-unknown-level", "stages.quantize_gguf", ("Q9_K",), "level: expected a llama.cpp quant type"),
        ("bench-unknown-level", "stages.bench_gguf", ("Q9_K",), "level: expected a llama.cpp quant type"),
        ("bench-api-variant", "stages.bench", ("--variant", "api:gpt-4.1"), "nothing to bench here"),
        ("step-bench-steps", "tools.train_step_bench", ("--steps", "1"), "--steps: expected more than 2"),
        (
            "step-bench-variant",
            "tools.train_step_bench",
            ("--variant", "x=lora_r=0"),
            "train.lora_r: expected a positive integer",
        ),
        (
            "step-bench-unknown-key",
            "tools.train_step_bench",
            ("--variant", "x=lora_rank=8"),
            "train.lora_rank: unknown key",
        ),
    ]
    for name, module, argv, expect in cases:
        yield Case(f"cli/{name}", "cli", module, argv, expect)
    yield Case(
        "cli/bench-more-prompts-than-rows",
        "cli",
        "stages.bench",
        ("--variant", "merged"),
        "bench.prompts: 1000 requested",
        lambda root, url: set_param(root, "bench.prompts", 1000),
    )


def api_cases() -> Iterator[Case]:
    """An OpenAI-compatible fake on 127.0.0.1 (FakeEndpoint) answers by model name: status-401, ..., garbage."""

    def endpoint(root: Path, url: str, **extra) -> None:
        set_param(root, "eval_api.base_url", url)
        set_param(root, "eval_api.max_attempts", 1)
        set_param(root, "eval_api.timeout_seconds", 5.0)
        for key, value in extra.items():
            set_param(root, f"eval_api.{key}", value)

    for model, expect in [
        ("status-401", "HTTP 401"),
        ("status-404", "HTTP 404"),
        ("status-429", "HTTP 429"),
        ("status-500", "HTTP 500"),
        ("garbage", "no chat completion"),
    ]:
        yield Case(f"api/eval-{model}", "api", "stages.eval_api", (model,), expect, endpoint)

    def metaprompt(root: Path, url: str, model: str) -> None:
        set_param(root, "data.backend", "metaprompt")
        set_param(root, "data.metaprompt.base_url", url)
        set_param(root, "data.metaprompt.model", model)
        set_param(root, "data.metaprompt.max_attempts", 1)
        set_param(root, "data.metaprompt.backoff_seconds", 0.0)
        set_param(root, "data.metaprompt.cache_dir", "cache")

    for model, expect in [
        ("status-401", "HTTP 401"),
        ("status-404", "HTTP 404"),
        ("status-500", "HTTP 500"),
        ("garbage", "no chat completion"),
    ]:
        yield Case(
            f"api/metaprompt-{model}",
            "api",
            "stages.synthesize",
            (),
            expect,
            lambda root, url, m=model: metaprompt(root, url, m),
        )
    yield Case(
        "api/openai-without-key",
        "api",
        "stages.synthesize",
        (),
        "needs an API key in the environment variable OPENAI_API_KEY",
        lambda root, url: (
            (set_param(root, "data.backend", "metaprompt"), set_param(root, "data.metaprompt.api_key_env", "")) and None
        ),
    )


def catalogue() -> list[Case]:
    return [*params_cases(), *data_cases(), *base_model_cases(), *cli_cases(), *api_cases()]


# ---- the fake endpoint --------------------------------------------------------------------------------------


class FakeEndpoint:
    """An OpenAI-compatible server on 127.0.0.1 that fails as the request's model name says; it records the
    Authorization header of every request (for the secrets test). Stops when the `with` block ends."""

    def __init__(self):
        self.authorizations: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                owner.authorizations.append(self.headers.get("Authorization", ""))
                model = str(body.get("model", ""))
                if model.startswith("status-"):
                    status = int(model.removeprefix("status-"))
                    self._send(status, {"error": {"message": f"fake error {status}", "type": "fake"}})
                elif model == "garbage":
                    self._send(200, b"<html>not json</html>", "text/html")
                else:
                    self._send(
                        200,
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "created": 0,
                            "model": model,
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {
                                        "role": "assistant",
                                        "content": '{"action": "add", "product": "Shampoo", "quantity": 2}',
                                    },
                                }
                            ],
                        },
                    )

            def _send(self, status, payload, content_type="application/json"):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeEndpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- running and judging one case ---------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@contextlib.contextmanager
def isolated(root: Path) -> Iterator[None]:
    """Run inside `root`, with no OpenAI variables: no case may reach a real endpoint or see a real key."""
    saved_env = {k: os.environ.pop(k) for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL") if k in os.environ}
    saved_cwd = Path.cwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.update(saved_env)


def run_case(case: Case, root: Path, url: str) -> Outcome:
    make_project(root)
    case.setup(root, url)
    before = snapshot(root)
    main = importlib.import_module(case.module).main
    err, out = io.StringIO(), io.StringIO()
    with isolated(root), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(case.argv))
        except SystemExit as exit_:
            code = exit_.code
        except Exception as exc:  # the very thing the catalogue looks for
            return Outcome("traceback", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    errors = [line for line in err.getvalue().splitlines() if ": error: " in line]
    after = snapshot(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if code == 0:
        return Outcome("silent", f"exit 0; stdout: {out.getvalue().strip()[-200:]}")
    if changed:
        return Outcome("leftover", f"changed: {changed[:5]}")
    if len(errors) != 1 or case.expect not in errors[0] or code != 1:
        return Outcome("unclear", f"exit {code}; stderr: {err.getvalue().strip()[-300:]!r}")
    return Outcome("clear", errors[0])


def run_all(cases: list[Case], scratch: Path) -> dict[str, Outcome]:
    results = {}
    with FakeEndpoint() as endpoint:
        for i, case in enumerate(cases):
            results[case.id] = run_case(case, scratch / f"case{i:03d}", endpoint.url)
    return results


def reliability_page(cases: list[Case], results: dict[str, Outcome]) -> str:
    groups = Counter(c.group for c in cases)
    kinds = ("clear", "traceback", "silent", "unclear", "leftover")
    counts = {g: Counter(results[c.id].kind for c in cases if c.group == g) for g in groups}
    lines = [
        "# Reliability: bad input and faults",
        "",
        "Written by `python -m tools.fault_catalogue --write docs/reliability.md`; `tests/test_faults.py` runs the",
        "same catalogue and requires every case to be `clear`: exit 1, one line naming the field or file:line, no",
        "file written or changed. Kill-and-resume behaviour is tested in `tests/test_kills.py`.",
        "",
        "| group | cases | " + " | ".join(kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for group in groups:
        lines.append(f"| {group} | {groups[group]} | " + " | ".join(str(counts[group][k]) for k in kinds) + " |")
    total = Counter(r.kind for r in results.values())
    lines.append(f"| **all** | **{len(cases)}** | " + " | ".join(f"**{total[k]}**" for k in kinds) + " |")
    lines += ["", "## Every case", "", "| case | outcome | message |", "|---|---|---|"]
    for case in cases:
        outcome = results[case.id]
        detail = outcome.detail.replace("|", "/")[:160]
        lines.append(f"| `{case.id}` | {outcome.kind} | {detail} |")
    return "\n".join(lines) + "\n"


@stage_main("fault_catalogue")
def main(argv: list[str] | None = None) -> str:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="the Markdown page to write (docs/reliability.md)")
    args = parser.parse_args(argv)
    cases = catalogue()
    with tempfile.TemporaryDirectory() as scratch:
        results = run_all(cases, Path(scratch))
    if args.write:
        atomic_write_text(args.write, reliability_page(cases, results))
    kinds = Counter(r.kind for r in results.values())
    for case in cases:
        if results[case.id].kind != "clear":
            print(f"{case.id}: {results[case.id].kind}: {results[case.id].detail}", file=sys.stderr)
    return (
        f"{len(cases)} cases: "
        + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
        + (f" -> {args.write}" if args.write else "")
    )


if __name__ == "__main__":
    sys.exit(main())
