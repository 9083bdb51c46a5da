"""Metaprompting backend, as in the paper: the program fixes the truth, an LLM writes only the request.

Any OpenAI-compatible endpoint works (OpenAI, vLLM, llama-cpp-python's server...). Responses are
cached on disk by a hash of the request, so a rerun sends nothing and gives the same data. Each
response is checked (one line, right language, names the product and the quantity); a rejected one is
asked again with a new seed, up to `max_attempts`, then the example is dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
import unicodedata
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

from ecommerce_slm.catalog import Catalog
from ecommerce_slm.endpoint import EndpointError, api_error, resolve_endpoint
from ecommerce_slm.files import atomic_write_text
from ecommerce_slm.generator import Spec, pick_forms
from ecommerce_slm.language import quantity_mentions, render_item
from ecommerce_slm.noise import NOISE_TYPES, NoiseVocab
from ecommerce_slm.params import Section, check, is_pos_int

LANGUAGE_NAMES = {"en": "English", "hr": "Croatian", "es": "Spanish"}

# Styles play the role of the offline frames: a seeded share is held out of training, for the eval set.
STYLES = [
    "a polite, formal request",
    "a terse command of a few words",
    "a question to the shop assistant",
    "a casual, chatty message",
    "a message typed in a hurry on a phone",
    "a message that first says why (a party, a trip, a gift) and then asks",
    "a request for someone else in the family",
    "a note like a shopping-list entry",
    "an impatient message",
    "a very friendly message",
    "a message from someone who changed their mind",
    "a message in informal texting style",
]
STYLE_IDS = [f"style.{i:02d}" for i in range(len(STYLES))]

NOISE_INSTRUCTIONS = {
    "typo": "one or two spelling mistakes",
    "brand": "an unrelated brand name such as {brand}",
    "code_switch": "an English phrase such as 'free shipping' or 'asap' mixed into the sentence",
    "slang": "texting slang such as {slang}",
    "greeting": "a greeting or a sign-off",
    "emoji": "one or two emojis",
    "ascii": "no diacritics (typed on a keyboard without them)",
    "casing": "all lower-case letters",
}


@dataclass
class MetapromptConfig(Section):
    """`data.metaprompt:` the LLM backend: an OpenAI-compatible endpoint writes the request text, the
    program fixes the truth. The API key is read from the environment variable named by `api_key_env`,
    never from params."""

    base_url: str = ""  # "": OPENAI_BASE_URL if set, else OpenAI's (see ecommerce_slm/endpoint.py)
    model: str = "gpt-4.1"
    api_key_env: str = ""  # "": OPENAI_API_KEY, for OpenAI's host only
    temperature: float = 0.9
    max_tokens: int = 96
    max_attempts: int = 4
    backoff_seconds: float = 1.0
    timeout_seconds: float = 60.0
    cache_dir: str = "data/cache/metaprompt"

    def __post_init__(self):
        check(
            self.base_url == "" or self.base_url.startswith(("http://", "https://")),
            "base_url",
            "an http(s) URL or empty",
            self.base_url,
        )
        check(bool(self.model), "model", "a model name", self.model)
        check(is_pos_int(self.max_attempts), "max_attempts", "a positive integer", self.max_attempts)
        check(is_pos_int(self.max_tokens), "max_tokens", "a positive integer", self.max_tokens)
        check(0 <= self.temperature <= 2, "temperature", "a number in [0, 2]", self.temperature)
        check(self.backoff_seconds >= 0, "backoff_seconds", "a number >= 0", self.backoff_seconds)
        check(self.timeout_seconds > 0, "timeout_seconds", "a number > 0", self.timeout_seconds)
        check(bool(self.cache_dir), "cache_dir", "a folder path", self.cache_dir)


def build_messages(
    spec: Spec, catalog: Catalog, noise: list[str], vocab: NoiseVocab, rng: random.Random
) -> list[dict[str, str]]:
    language = LANGUAGE_NAMES[spec.language]
    forms = pick_forms(catalog, spec, rng)
    verb = "add to" if spec.action == "add" else "remove from"
    how = {
        "implicit": "Do not write a number: it is a single item.",
        "plural": "Do not write a number: name the product in the plural, as shoppers do for a single item.",
        "digits": f"Write the quantity as digits ({spec.quantity}).",
        "words": f"Write the quantity in words, in {language}.",
    }[spec.quantity_style]
    example = render_item(
        spec.language,
        forms,
        spec.quantity,
        "digits" if spec.quantity_style == "implicit" else spec.quantity_style,  # plural: the form itself
        spec.action,
        rng,
    )
    extras = [
        NOISE_INSTRUCTIONS[k].format(brand=rng.choice(vocab.brands), slang=", ".join(vocab.slang[spec.language][:3]))
        for k in NOISE_TYPES
        if k in noise
    ]
    style = STYLES[STYLE_IDS.index(spec.style)]
    lines = [
        "Write one message that a shopper types into an online shop's chat.",
        f"Language: {language}.",
        f'They want to {verb} their cart: {spec.quantity} x {spec.product} (in {language}: "{example}").',
        how,
        f"Style: {style}.",
    ]
    if extras:
        lines.append("Include: " + "; ".join(extras) + ".")
    lines.append("Reply with the message only, on one line: no quotes, no translation, no explanation.")
    return [{"role": "user", "content": "\n".join(lines)}]


def fold(text: str) -> str:
    """Lower case without accents, for lenient matching of what an LLM wrote."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


def _tokens(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", fold(text))


def language_markers(phrases: dict, catalog: Catalog) -> dict[str, set[str]]:
    """Words that only one language's phrases (compose.slot_texts) and product names use: a small
    language identifier."""
    words = {}
    for lang, groups in phrases.items():
        texts = [text for group in groups.values() for text in group]
        texts += [form for p in catalog.products for form in p.all_surface_forms(lang)]
        words[lang] = {t for text in texts for t in _tokens(text) if len(t) > 1 and not t.isdigit()}
    return {lang: ws - set().union(*(w for other, w in words.items() if other != lang)) for lang, ws in words.items()}


def detect_language(text: str, markers: dict[str, set[str]]) -> str | None:
    tokens = _tokens(text)
    scores = {lang: sum(t in ws for t in tokens) for lang, ws in markers.items()}
    best = max(scores.values(), default=0)
    winners = [lang for lang, s in scores.items() if s == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def mentions_product(text: str, spec: Spec, catalog: Catalog) -> bool:
    """Any surface form (or the English name, when code-switching), allowing for typos."""
    product = catalog[spec.product]
    candidates = product.all_surface_forms(spec.language) + product.all_surface_forms("en") + [spec.product]
    tokens = _tokens(text)
    for form in {fold(c) for c in candidates if c}:
        n = len(_tokens(form))
        for i in range(max(1, len(tokens) - n + 1)):
            if SequenceMatcher(None, " ".join(tokens[i : i + n]), form).ratio() >= 0.75:
                return True
    return False


def mentions_quantity(text: str, spec: Spec) -> bool:
    numbers = {int(x) for x in re.findall(r"\d+", text)}
    if numbers - {spec.quantity}:
        return False  # another number in the text would make the truth ambiguous
    if spec.quantity == 1 and spec.quantity_style in ("implicit", "plural"):
        return True
    folded = f" {' '.join(_tokens(text))} "
    return spec.quantity in numbers or any(
        f" {' '.join(_tokens(m))} " in folded for m in quantity_mentions(spec.language, spec.quantity)
    )


def check_text(text: str, spec: Spec, catalog: Catalog, markers: dict[str, set[str]]) -> tuple[str, str] | None:
    """None if the text is a usable request for spec, else (check that failed, detail)."""
    if not text:
        return "empty", "no text"
    if "\n" in text or len(text) > 300:
        return "form", "not a single short message"
    detected = detect_language(text, markers)
    if detected != spec.language:
        return "language", f"language {detected or 'unknown'}, expected {spec.language}"
    if not mentions_product(text, spec, catalog):
        return "product", f"does not name {spec.product}"
    if not mentions_quantity(text, spec):
        return "quantity", f"does not state quantity {spec.quantity} alone"
    return None


def clean_response(text: str) -> str:
    text = (text or "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text


class MetapromptWriter:
    """A Writer for generate_rows: asks the endpoint, caches, checks, retries with a new seed."""

    def __init__(
        self,
        cfg: MetapromptConfig,
        catalog: Catalog,
        phrases: dict,
        noise_rates: dict[str, float],
        vocab: NoiseVocab,
        client=None,
    ):
        self.cfg, self.catalog, self.noise_rates, self.vocab = cfg, catalog, noise_rates, vocab
        self.markers = language_markers(phrases, catalog)
        self.cache_dir = Path(cfg.cache_dir)
        self.endpoint = resolve_endpoint(cfg.base_url, cfg.api_key_env)
        self.client = client or self._client()
        self.requests_sent = 0  # HTTP attempts, retries included
        self.requests_answered = 0  # attempts that returned a completion (each is cached)
        self.cache_hits = 0
        self.rejections: dict[str, int] = {}

    def _client(self):
        endpoint = self.endpoint
        if endpoint.key is None and (endpoint.is_openai or self.cfg.api_key_env):
            raise EndpointError(
                f"data.backend=metaprompt with {endpoint.url} needs an API key in the environment "
                f"variable {endpoint.key_variable} (data.metaprompt.api_key_env)"
            )
        return endpoint.client(self.cfg.timeout_seconds)

    def __call__(self, spec: Spec, rng: random.Random) -> tuple[str | None, list[str]]:
        noise = [
            k
            for k in NOISE_TYPES
            if rng.random() < self.noise_rates.get(k, 0.0) and not (k == "code_switch" and spec.language == "en")
        ]
        messages = build_messages(spec, self.catalog, noise, self.vocab, rng)
        for attempt in range(self.cfg.max_attempts):
            text = clean_response(self._complete(messages, attempt))
            failed = check_text(text, spec, self.catalog, self.markers)
            if failed is None:
                return text, noise
            self.rejections[failed[0]] = self.rejections.get(failed[0], 0) + 1
        return None, noise

    def _complete(self, messages: list[dict[str, str]], attempt: int) -> str:
        request = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
            "seed": attempt,
        }
        key = hashlib.sha256(
            json.dumps({"base_url": self.endpoint.url, **request}, sort_keys=True).encode()
        ).hexdigest()
        path = self.cache_dir / key[:2] / f"{key}.json"
        if path.exists():
            self.cache_hits += 1
            return json.loads(path.read_text(encoding="utf-8"))["response"]
        text = self._send(request)
        atomic_write_text(path, json.dumps({"request": request, "response": text}, ensure_ascii=False))
        return text

    def _send(self, request: dict) -> str:
        import openai

        delay = self.cfg.backoff_seconds
        for attempt in range(self.cfg.max_attempts):
            try:
                self.requests_sent += 1
                response = self.client.chat.completions.create(**request)
                try:
                    text = response.choices[0].message.content or ""
                    self.requests_answered += 1
                    return text
                except (AttributeError, IndexError, TypeError):
                    raise EndpointError(
                        f"data.metaprompt: {self.endpoint.url}: the answer is no chat completion"
                    ) from None
            except (
                openai.APIConnectionError,
                openai.APITimeoutError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as err:
                last = err
                if attempt + 1 < self.cfg.max_attempts:
                    time.sleep(delay)
                    delay *= 2
            except openai.APIError as err:  # 401, 404, ...: retrying cannot help
                raise api_error(err, f"data.metaprompt: {self.cfg.model} at {self.endpoint.url}") from None
        raise api_error(last, f"data.metaprompt: {self.endpoint.url}: no answer after {self.cfg.max_attempts} attempts")

    def stats(self) -> dict:
        return {
            "requests_sent": self.requests_sent,
            "requests_answered": self.requests_answered,
            "cache_hits": self.cache_hits,
            "rejections": dict(sorted(self.rejections.items())),
        }
