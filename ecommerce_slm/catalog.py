"""The product catalog: canonical English names (the answers) and their localized surface forms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ecommerce_slm.cli import ProjectError

# Which noun forms each language needs (see catalog.yaml for what they mean).
REQUIRED_FORMS = {"en": ("one", "many"), "hr": ("gender", "one", "few", "many"), "es": ("gender", "one", "many")}
GENDERS = {"hr": ("m", "f", "n"), "es": ("m", "f")}


class CatalogError(ProjectError, ValueError):
    pass


@dataclass(frozen=True)
class Forms:
    one: str
    many: str
    few: str = ""
    gender: str = "m"
    article: str = ""
    bare: str = ""  # a plural-looking name meaning one item ("socks", "čarape", "los calcetines"): quantity 1
    nominative: str = ""  # hr: the nominative singular, the subject of "treba mi ..." (one is the accusative)
    plural: str = ""  # hr: the accusative plural with no number ("makni šampone"); derived when not given


@dataclass(frozen=True)
class Product:
    name: str
    forms: dict[str, tuple[Forms, ...]]  # language -> usual name first, then synonyms

    def all_surface_forms(self, language: str) -> list[str]:
        out = []
        for f in self.forms.get(language, ()):
            out += [x for x in dict.fromkeys((f.one, f.nominative, f.few, f.many, f.plural, f.bare)) if x]
        return out


@dataclass(frozen=True)
class Catalog:
    products: tuple[Product, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.products]

    def __getitem__(self, name: str) -> Product:
        for p in self.products:
            if p.name == name:
                return p
        raise KeyError(name)


def load_catalog(path: str | Path, languages: list[str], key: str = "data.catalog") -> Catalog:
    """Read and check a catalog file: every product needs every form that each language requires."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        moved = (
            " (moved to ecommerce_slm/resources/catalog.yaml)"
            if path.as_posix() == "stages/resources/catalog.yaml"
            else ""
        )
        raise CatalogError(f"{path}: catalog file not found{moved} (params.yaml: {key})") from None
    entries = raw.get("products") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f"{path}: expected a top-level 'products' list")
    for language in languages:
        if language not in REQUIRED_FORMS:
            raise CatalogError(
                f"params.yaml: data.languages: {language!r} is not supported (supported: {sorted(REQUIRED_FORMS)})"
            )
    products, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: products[{i}]"
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise CatalogError(f"{where}.name: expected a product name")
        if name in seen:
            raise CatalogError(f"{where}.name: duplicate product {name!r}")
        seen.add(name)
        forms = {}
        for language in languages:
            forms[language] = _parse_forms(entry.get(language), language, f"{where} ({name}).{language}")
        products.append(Product(name=name, forms=forms))
    return Catalog(tuple(products))


def _parse_forms(value, language: str, where: str) -> tuple[Forms, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or items == [None]:
        raise CatalogError(f"{where}: missing; every product needs forms for every language in data.languages")
    parsed = []
    for item in items:
        if not isinstance(item, dict):
            raise CatalogError(f"{where}: expected a mapping of forms, got {item!r}")
        missing = [k for k in REQUIRED_FORMS[language] if not item.get(k)]
        if missing:
            raise CatalogError(f"{where}: missing form(s) {missing}")
        if language in GENDERS and item["gender"] not in GENDERS[language]:
            raise CatalogError(f"{where}.gender: expected one of {list(GENDERS[language])}, got {item['gender']!r}")
        unknown = set(item) - {"one", "few", "many", "gender", "article", "bare", "nominative", "plural"}
        if unknown:
            raise CatalogError(f"{where}: unknown key(s) {sorted(unknown)}")
        forms = {k: str(v) for k, v in item.items()}
        if language == "hr":
            forms["nominative"] = forms.get("nominative") or croatian_nominative(forms["one"], forms["gender"])
            forms["plural"] = forms.get("plural") or croatian_plural(forms)
        parsed.append(Forms(**forms))
    return tuple(parsed)


CROATIAN_PREPOSITIONS = frozenset({"za", "u", "s", "sa", "od", "na", "bez", "do"})


def croatian_nominative(accusative: str, gender: str) -> str:
    """The nominative singular from the accusative `one`: they differ only for feminine nouns, whose noun and
    adjectives end in -u where the nominative has -a ("mineralnu vodu" -> "mineralna voda"); words from the
    first preposition on keep their own case ("pastu za zube" -> "pasta za zube"). catalog.yaml may give
    `nominative` itself where this rule is wrong."""
    if gender != "f":
        return accusative
    words = accusative.split()
    for i, word in enumerate(words):
        if word in CROATIAN_PREPOSITIONS:
            break
        if word.endswith("u"):
            words[i] = word[:-1] + "a"
    return " ".join(words)


def croatian_plural(forms: dict[str, str]) -> str:
    """The accusative plural, the form a plural with no number takes ("makni šampone", "dodaj kreme").
    Feminine and neuter: the form after 2-4 (`few`: "kreme za ruke", "pakiranja"). Masculine: the genitive
    plural (`many`) with the head noun's -a turned to -e and its adjectives' -ih to -e ("zelenih čajeva" ->
    "zelene čajeve"); words after the head keep their case ("tetrapaka mlijeka" -> "tetrapake mlijeka").
    Nouns whose plural drops a vowel (ranac, stalak) and pairs (par -> parove) give `plural` in catalog.yaml."""
    if forms["gender"] != "m":
        return forms["few"]
    words = forms["many"].split()
    for i, word in enumerate(words):
        if word in CROATIAN_PREPOSITIONS:
            break
        if word.endswith("ih"):
            words[i] = word[:-2] + "e"
        elif word.endswith("a"):
            words[i] = word[:-1] + "e"
            break
    return " ".join(words)
