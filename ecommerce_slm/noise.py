"""Noise injectors: what real shoppers do to a clean request. Each fires with its own rate."""

from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

from ecommerce_slm.params import Section, check, is_rate
from ecommerce_slm.paths import NOISE_FILE

# Applied in this order: typos hit the request itself, then text is added around it, casing last.
NOISE_TYPES = ("typo", "brand", "code_switch", "slang", "greeting", "emoji", "ascii", "casing")
NOT_IN_ENGLISH = ("code_switch", "ascii")  # English has no diacritics to drop and is what others switch to

_WORD = re.compile(r"[^\W\d_]{4,}")  # letters only: typos never touch digits, so quantities survive


@dataclass
class NoiseConfig(Section):
    """`data.noise:` per-request probability of each noise injector (code_switch and ascii: non-English only)."""

    typo: float = 0.25
    slang: float = 0.15
    greeting: float = 0.2
    emoji: float = 0.15
    brand: float = 0.1
    code_switch: float = 0.15
    ascii: float = 0.2  # typed without diacritics: 'cetkicu' for 'četkicu', 'anade' for 'añade'
    casing: float = 0.1

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check(is_rate(value), f.name, "a rate in [0, 1]", value)

    def rates(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NoiseVocab:
    slang: dict
    greeting: dict
    sign_off: dict
    brand_phrase: dict
    brands: list
    emoji: list
    code_switch: list

    @classmethod
    def load(cls, path: Path = NOISE_FILE) -> NoiseVocab:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return cls(
            slang=raw["slang"],
            greeting=raw["greeting"],
            sign_off=raw["sign_off"],
            brand_phrase=raw["brand_phrase"],
            brands=raw["brands"],
            emoji=raw["emoji"],
            code_switch=raw["code_switch"]["phrases"],
        )


def typo(text: str, rng: random.Random) -> str | None:
    """Swap, drop or double a letter inside one or two words of four or more letters."""
    original = text
    for _ in range(rng.choice([1, 1, 1, 2])):
        words = list(_WORD.finditer(text))
        if not words:
            return None
        match = rng.choice(words)
        word, i = match.group(), rng.randrange(1, len(match.group()) - 1)
        op = rng.choice(["swap", "drop", "double"])
        if op == "swap" and word[i] != word[i + 1]:
            word = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif op == "double":
            word = word[:i] + word[i] + word[i:]
        else:
            word = word[:i] + word[i + 1 :]
        text = text[: match.start()] + word + text[match.end() :]
    return text if text != original else None


def without_diacritics(text: str) -> str:
    """What a keyboard without the letters types: č ć š ž -> c c s z, đ -> d, ñ á -> n a."""
    text = text.replace("đ", "d").replace("Đ", "D")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _append(text: str, phrase: str) -> str:
    body, punct = re.match(r"^(.*?)([.!?]*)$", text, re.S).groups()
    joiner = "" if phrase[:1] in ",-" else " "
    if phrase[:1] == "-":
        phrase = " " + phrase
    return f"{body}{joiner}{phrase}{punct}"


def inject(kind: str, text: str, language: str, vocab: NoiseVocab, rng: random.Random) -> str | None:
    """Apply one noise kind; None when it does not apply to this text or language."""
    if kind == "typo":
        return typo(text, rng)
    if kind == "brand":
        phrase = rng.choice(vocab.brand_phrase[language]).format(brand=rng.choice(vocab.brands))
        return _append(text, phrase)
    if kind == "code_switch":
        if language == "en":
            return None
        phrase = rng.choice(vocab.code_switch)
        return f"{phrase.capitalize()}, {text}" if rng.random() < 0.4 else _append(text, f", {phrase}")
    if kind == "slang":
        word = rng.choice(vocab.slang[language])
        return f"{word} {text}" if rng.random() < 0.3 else f"{text} {word}"
    if kind == "greeting":
        where = rng.choice(["start", "start", "end", "both"])
        if where in ("start", "both"):
            text = f"{rng.choice(vocab.greeting[language])}{rng.choice([',', '!', '', ' -'])} {text}"
        if where in ("end", "both"):
            text = f"{text}{rng.choice([' ', '. ', ' - '])}{rng.choice(vocab.sign_off[language])}"
        return text
    if kind == "emoji":
        emojis = "".join(rng.choice(vocab.emoji) for _ in range(rng.choice([1, 1, 2, 3])))
        return f"{emojis} {text}" if rng.random() < 0.25 else f"{text} {emojis}"
    if kind == "ascii":
        return None if language == "en" else without_diacritics(text)
    if kind == "casing":
        return text.lower() if rng.random() < 0.75 else text.upper()
    raise ValueError(f"unknown noise kind {kind!r}")


def add_noise(
    text: str, language: str, rates: dict[str, float], vocab: NoiseVocab, rng: random.Random
) -> tuple[str, list[str]]:
    """Each noise kind fires independently with its rate; returns the text and the kinds applied."""
    applied = []
    for kind in NOISE_TYPES:
        if rng.random() < rates.get(kind, 0.0):
            noisy = inject(kind, text, language, vocab, rng)
            if noisy is not None and noisy != text:
                text = noisy
                applied.append(kind)
    return text, applied
