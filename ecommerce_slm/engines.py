"""One small interface over the three ways a variant runs, so scoring and timing are shared.

    engine.generate(conversations, schema)  -> raw text per conversation (greedy)
    engine.next_token_logprobs(ids, start)  -> log-probabilities of the next token at positions start..end
    engine.close()                          -> stops what the engine started (llama-server)

transformers runs model folders (base, merged, GPTQ) in batches, computing a prompt prefix that every
conversation shares (the untuned base's few-shot examples) once; llama-server runs GGUF files with
parallel slots (continuous batching), llama-cpp-python one request at a time; the API engine talks to
any OpenAI-compatible endpoint. Constrained decoding: xgrammar for transformers, llama.cpp's own
JSON-schema grammar for GGUF, structured outputs for APIs. The three local engines decode greedily
under the grammar (the best token it allows), which lets the eval skip rows whose free answer the
grammar accepts (`greedy_under_grammar`); a provider's structured outputs promise no such thing.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ecommerce_slm.cli import ProjectError
from ecommerce_slm.endpoint import Endpoint, api_error
from ecommerce_slm.gptq import configure_gptqmodel
from ecommerce_slm.llama_tools import load_binding
from ecommerce_slm.task import ANSWER_SEPARATORS


class EngineError(ProjectError, RuntimeError):
    pass


def answer_grammar(compiler, schema: dict):
    """xgrammar's grammar for `schema`, written as Intent.to_json writes answers (no other whitespace)."""
    return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=ANSWER_SEPARATORS)


def left_padded_tokenizer(model_dir: str | Path):
    """Batched generation needs the padding on the left, and a pad token (SmolLM2 has one, others not)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one of its own to start decoding from."""
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


def pad_after_prefix(sequences: list[list[int]], shared: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding placed after the first `shared` tokens, so that a prefix computed once stays where it is.

    With shared=0 this is the usual left padding. Padded positions are masked out, and positions count
    unmasked tokens only, so each row is computed as if it stood alone.
    """
    width = max(len(s) for s in sequences)
    ids = [s[:shared] + [pad_id] * (width - len(s)) + s[shared:] for s in sequences]
    mask = [[1] * shared + [0] * (width - len(s)) + [1] * (len(s) - shared) for s in sequences]
    return torch.tensor(ids), torch.tensor(mask)


class TransformersEngine:
    kind = "transformers"
    greedy_under_grammar = True
    # tokens a call's prompts must share before their cache is computed once: a tuned model's one-line
    # system prompt is shorter, and copying its cache per batch would cost what recomputing it does
    min_shared_prefix = 32

    def __init__(self, model_dir: str | Path, threads: int = 2, max_new_tokens: int = 48, batch_size: int = 16):
        configure_gptqmodel(threads)  # a GPTQ folder loads through gptqmodel's kernels
        from transformers import AutoModelForCausalLM

        if not Path(model_dir, "config.json").exists():
            raise EngineError(f"{model_dir}: not a model folder (no config.json)")
        torch.set_num_threads(threads)
        self.tokenizer = left_padded_tokenizer(model_dir)
        if not any(Path(model_dir).glob("*.safetensors")):
            pickled = sorted(p.name for p in Path(model_dir).glob("*.bin"))
            hint = (
                f"; {', '.join(pickled)} is pickled and never loaded here (convert it to safetensors)"
                if pickled
                else ""
            )
            raise EngineError(f"{model_dir}: no *.safetensors weights{hint}")
        # no quantization_config argument: a GPTQ folder's own config must be the one used
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self._compiler = None

    @classmethod
    def from_loaded(cls, model, tokenizer_dir: str | Path, max_new_tokens: int = 48, batch_size: int = 16):
        """An engine over a model already in memory (the train stage scores its own result without saving)."""
        engine = cls.__new__(cls)
        engine.tokenizer = left_padded_tokenizer(tokenizer_dir)
        engine.model, engine.max_new_tokens, engine.batch_size = model, max_new_tokens, batch_size
        engine._compiler = None
        return engine

    def _grammar(self, schema: dict):
        import xgrammar as xgr

        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            self._compiler = xgr.GrammarCompiler(info)
        return answer_grammar(self._compiler, schema)

    def generate(self, conversations: list[list[dict]], schema: dict | None = None) -> list[str]:
        from transformers import LogitsProcessorList

        if not conversations:
            return []
        grammar = self._grammar(schema) if schema else None
        prompts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        ids = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        shared = shared_prefix_length(ids)
        shared = shared if shared >= self.min_shared_prefix else 0
        prefix_cache = None
        if shared:  # a few-shot prompt's worked examples are most of it: computed once, not once per row
            with torch.no_grad():
                prefix = torch.tensor([ids[0][:shared]], device=self.model.device)
                prefix_cache = self.model(prefix, use_cache=True).past_key_values
        outputs = []
        for i in range(0, len(ids), self.batch_size):
            chunk = ids[i : i + self.batch_size]
            input_ids, attention_mask = pad_after_prefix(chunk, shared, self.tokenizer.pad_token_id)
            # a model on a GPU (the train stage scoring its own result there) takes its inputs there
            input_ids, attention_mask = input_ids.to(self.model.device), attention_mask.to(self.model.device)
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)  # generate() appends to the cache it is given
                cache.batch_repeat_interleave(len(chunk))
            processors = LogitsProcessorList()
            if grammar is not None:
                import xgrammar as xgr

                processors.append(xgr.contrib.hf.LogitsProcessor(grammar))  # one per generate() call
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    past_key_values=cache,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    logits_processor=processors,
                )
            outputs += self.tokenizer.batch_decode(
                out[:, input_ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False
            )  # the text as generated: a tidied-up answer could pass for one the grammar accepts
        return outputs

    def next_token_logprobs(self, ids: list[int], start: int) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(torch.tensor([ids], device=self.model.device)).logits[0].float()
        return torch.log_softmax(logits[start - 1 : len(ids) - 1], dim=-1).cpu()

    def close(self) -> None:
        pass


class LlamaCppEngine:
    kind = "llama_cpp"
    greedy_under_grammar = True

    def __init__(self, gguf_file: str | Path, threads: int = 2, max_new_tokens: int = 48, n_ctx: int = 2048):
        if not Path(gguf_file).is_file():
            raise EngineError(f"{gguf_file}: no such GGUF file")
        self.path, self.threads, self.n_ctx, self.max_new_tokens = str(gguf_file), threads, n_ctx, max_new_tokens
        self.llm = load_binding(self.path, threads, n_ctx, seed=0)
        self.logits = LlamaCppLogits(self.path, threads, n_ctx)

    def generate(self, conversations: list[list[dict]], schema: dict | None = None) -> list[str]:
        response_format = {"type": "json_object", "schema": schema} if schema else None
        outputs = []
        for messages in conversations:
            result = self.llm.create_chat_completion(
                messages=messages,
                temperature=0.0,
                top_k=1,
                max_tokens=self.max_new_tokens,
                response_format=response_format,
            )
            outputs.append(result["choices"][0]["message"]["content"] or "")
        return outputs

    def next_token_logprobs(self, ids: list[int], start: int) -> torch.Tensor:
        return self.logits.next_token_logprobs(ids, start)

    def close(self) -> None:
        pass


class LlamaCppLogits:
    """Next-token log-probabilities at every position of a GGUF file, through the binding (only for KL)."""

    def __init__(self, gguf_file: str, threads: int, n_ctx: int = 2048):
        self.path, self.threads, self.n_ctx = gguf_file, threads, n_ctx
        self._scorer = None

    def next_token_logprobs(self, ids: list[int], start: int) -> torch.Tensor:

        if self._scorer is None:  # logits for every position (slower than generation needs)
            self._scorer = load_binding(self.path, self.threads, self.n_ctx, logits_all=True)
        self._scorer.reset()
        self._scorer.eval(ids)
        logits = torch.from_numpy(np.array(self._scorer.scores[start - 1 : len(ids) - 1], dtype=np.float32))
        return torch.log_softmax(logits, dim=-1)


def gguf_grammar(schema: dict) -> str:
    """The GBNF grammar the binding builds for `schema`; llama-server is given the same, so both GGUF engines
    are held to one grammar (llama-server's own converter allows other whitespace: other answers in form)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema))


class LlamaServerEngine:
    """A GGUF file behind llama-server: `parallel` requests decoded at once (continuous batching).

    Requests go through its OpenAI-compatible API; the system prompt all requests share stays cached in
    each slot (cache_prompt). KL still reads full distributions through the binding (LlamaCppLogits).
    """

    kind = "llama_server"
    greedy_under_grammar = True

    def __init__(self, gguf_file: str | Path, threads: int = 2, max_new_tokens: int = 48, parallel: int = 8):
        from ecommerce_slm.llama_tools import LlamaServer

        if not Path(gguf_file).is_file():
            raise EngineError(f"{gguf_file}: no such GGUF file")
        self.path, self.max_new_tokens, self.parallel = str(gguf_file), max_new_tokens, parallel
        self.server = LlamaServer(gguf_file, threads=threads, parallel=parallel).start()
        self.client = Endpoint(f"{self.server.url}/v1", None, "").client(timeout_seconds=300)
        self.logits = LlamaCppLogits(self.path, threads)

    def _complete(self, messages: list[dict], grammar: str | None) -> str:
        import openai

        try:
            result = self.client.chat.completions.create(
                model="gguf",  # llama-server serves the one model it loaded, whatever the name
                messages=messages,
                temperature=0.0,
                max_tokens=self.max_new_tokens,
                extra_body={"top_k": 1, "cache_prompt": True, **({"grammar": grammar} if grammar else {})},
            )
        except openai.APIError as err:
            raise api_error(err, f"llama-server on {self.path}") from None
        return result.choices[0].message.content or ""

    def generate(self, conversations: list[list[dict]], schema: dict | None = None) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        grammar = gguf_grammar(schema) if schema else None
        with ThreadPoolExecutor(self.parallel) as pool:  # as many in flight as the server has slots
            return list(pool.map(lambda messages: self._complete(messages, grammar), conversations))

    def next_token_logprobs(self, ids: list[int], start: int) -> torch.Tensor:
        return self.logits.next_token_logprobs(ids, start)

    def close(self) -> None:
        self.server.stop()


class ApiEngine:
    """Few-shot chat completions through the openai client (OpenAI or any compatible server)."""

    kind = "api"
    greedy_under_grammar = False

    def __init__(
        self,
        model: str,
        endpoint: Endpoint,
        timeout_seconds: float = 60.0,
        max_attempts: int = 4,
        max_new_tokens: int = 48,
        schema_format: str = "json_schema",
    ):
        self.client = endpoint.client(timeout_seconds)
        self.where = f"api:{model} at {endpoint.url}"
        self.model, self.max_attempts, self.max_new_tokens = model, max_attempts, max_new_tokens
        self.schema_format = schema_format

    def generate(self, conversations: list[list[dict]], schema: dict | None = None) -> list[str]:
        response_format = None
        if schema and self.schema_format == "json_object":
            response_format = {"type": "json_object", "schema": schema}
        elif schema:
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": "cart_intent", "schema": schema, "strict": True},
            }
        return [self._complete(messages, response_format) for messages in conversations]

    def _complete(self, messages: list[dict], response_format: dict | None) -> str:
        import openai

        for attempt in range(self.max_attempts):
            try:
                kwargs = {"response_format": response_format} if response_format else {}
                result = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=self.max_new_tokens, **kwargs
                )
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                if attempt + 1 == self.max_attempts:
                    raise api_error(err, f"{self.where} (after {self.max_attempts} attempts)") from None
                time.sleep(2**attempt)
                continue
            except openai.APIError as err:  # 401, 404, a body that is no completion: retrying cannot help
                raise api_error(err, self.where) from None
            try:
                return result.choices[0].message.content or ""
            except (AttributeError, IndexError, TypeError):
                raise EngineError(f"{self.where}: the answer is no chat completion: {str(result)[:200]!r}") from None
        raise AssertionError("unreachable")

    def next_token_logprobs(self, ids: list[int], start: int) -> torch.Tensor:
        raise EngineError("an API model exposes no full next-token distributions")

    def close(self) -> None:
        pass
