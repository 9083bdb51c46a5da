"""How each language writes a quantity with a product: number words, gender and Croatian numeral cases."""

from __future__ import annotations

import random

from ecommerce_slm.catalog import Forms

_EN_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_EN_TENS = {
    20: "twenty",
    30: "thirty",
    40: "forty",
    50: "fifty",
    60: "sixty",
    70: "seventy",
    80: "eighty",
    90: "ninety",
}

_HR_ONES = "nula jedan dva tri četiri pet šest sedam osam devet deset jedanaest dvanaest trinaest četrnaest petnaest šesnaest sedamnaest osamnaest devetnaest".split()
_HR_TENS = {
    20: "dvadeset",
    30: "trideset",
    40: "četrdeset",
    50: "pedeset",
    60: "šezdeset",
    70: "sedamdeset",
    80: "osamdeset",
    90: "devedeset",
}
# "one" agrees in case too: accusative as the object of dodaj/makni, nominative as the subject of "treba mi"
_HR_ONE = {
    "accusative": {"m": "jedan", "f": "jednu", "n": "jedno"},
    "nominative": {"m": "jedan", "f": "jedna", "n": "jedno"},
}
CASES = ("accusative", "nominative")  # of the item in its clause; only Croatian writes them differently
_HR_TWO = {"m": "dva", "f": "dvije", "n": "dva"}

_ES_ONES = (
    "cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis "
    "diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro veinticinco "
    "veintiséis veintisiete veintiocho veintinueve"
).split()
_ES_TENS = {30: "treinta", 40: "cuarenta", 50: "cincuenta", 60: "sesenta", 70: "setenta", 80: "ochenta", 90: "noventa"}
_ES_ONE = {"m": "un", "f": "una"}


def number_words(language: str, n: int, gender: str = "m", case: str = "accusative") -> str:
    """The quantity n (1..99) in words, agreeing with the noun's gender (and Croatian case) where needed."""
    if not 1 <= n <= 99:
        raise ValueError(f"number_words: {n} is outside 1..99")
    tens, unit = divmod(n, 10)
    if language == "en":
        if n < 20:
            return _EN_ONES[n]
        return _EN_TENS[tens * 10] + (f"-{_EN_ONES[unit]}" if unit else "")
    if language == "hr":

        def unit_word(u: int) -> str:
            return _HR_ONE[case][gender] if u == 1 else _HR_TWO[gender] if u == 2 else _HR_ONES[u]

        if n < 20:
            return unit_word(n) if n <= 2 else _HR_ONES[n]
        return _HR_TENS[tens * 10] + (f" {unit_word(unit)}" if unit else "")
    if language == "es":

        def with_gender(word: str) -> str:  # uno -> un/una before a noun, veintiuno -> veintiún/veintiuna
            if word.endswith("uno"):
                return word[:-3] + ("una" if gender == "f" else ("ún" if word != "uno" else "un"))
            return word

        if n < 30:
            return with_gender(_ES_ONES[n])
        return _ES_TENS[tens * 10] + (f" y {with_gender(_ES_ONES[unit])}" if unit else "")
    raise ValueError(f"number_words: no number words for language {language!r}")


def hr_numeral_form(n: int) -> str:
    """Which noun form a Croatian numeral takes: one (1, 21, 31...), few (2-4, 22-24...), many (the rest)."""
    if n % 10 == 1 and n % 100 != 11:
        return "one"
    if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14):
        return "few"
    return "many"


def noun_for(language: str, forms: Forms, n: int, case: str = "accusative") -> str:
    if language == "hr":
        form = hr_numeral_form(n)
        return forms.nominative if form == "one" and case == "nominative" else getattr(forms, form)
    return forms.one if n == 1 else forms.many


def english_article(forms: Forms) -> str:
    return forms.article or ("an" if forms.one[:1].lower() in "aeio" else "a")


def bare_item(language: str, bare: str, action: str, rng: random.Random) -> str:
    """One item named by its plural-looking bare name: 'socks', 'the socks', 'unos calcetines', 'čarape'."""
    if language == "en":
        return f"the {bare}" if action == "remove" or rng.random() < 0.5 else bare
    if language == "es" and action == "add" and rng.random() < 0.6:
        article, rest = bare.split(" ", 1)
        indefinite = {"los": "unos", "las": "unas"}.get(article, article)
        return f"{indefinite} {rest}"
    return bare


def implicit_item(language: str, forms: Forms, action: str, rng: random.Random, case: str = "accusative") -> str:
    """A single item named without a number: 'the shampoo', 'un champú', 'šampon', 'socks'."""
    if forms.bare and rng.random() < 0.5:
        return bare_item(language, forms.bare, action, rng)
    if language == "en":
        determiner = "the" if action == "remove" else rng.choice([english_article(forms), "the"])
        return f"{determiner} {forms.one}"
    if language == "es":
        definite = {"m": "el", "f": "la"}[forms.gender]
        determiner = definite if action == "remove" else rng.choice([_ES_ONE[forms.gender], definite])
        return f"{determiner} {forms.one}"
    return noun_for(language, forms, 1, case)  # Croatian has no articles


def plural_written_singular(language: str, forms: Forms, case: str) -> bool:
    """Whether plural_item writes the singular: a Croatian subject ('treba mi {item_nom}') would need a plural
    verb. Pair products keep their bare name."""
    return language == "hr" and not forms.bare and case == "nominative"


def plural_item(language: str, forms: Forms, action: str, rng: random.Random, case: str = "accusative") -> str:
    """One item named in the plural with no number, as shoppers write it: 'shampoos', 'the shampoos',
    'los champús', 'unos champús', 'šampone'. Products sold in pairs use their bare name ('socks'); a Croatian
    subject gets the singular (plural_written_singular)."""
    if plural_written_singular(language, forms, case):
        return implicit_item(language, forms, action, rng, case)
    if forms.bare:
        return bare_item(language, forms.bare, action, rng)
    if language == "en":
        return f"the {forms.many}" if action == "remove" or rng.random() < 0.3 else forms.many
    if language == "es":
        definite = {"m": "los", "f": "las"}[forms.gender]
        if action == "remove":
            return f"{definite} {forms.many}"
        determiner = rng.choice(["", {"m": "unos", "f": "unas"}[forms.gender], definite])
        return f"{determiner} {forms.many}".strip()
    return forms.plural or forms.few


def dozen_item(language: str, forms: Forms, n: int) -> str | None:
    """The idiomatic dozen forms, where n allows one ('a dozen', 'pola tuceta', 'media docena')."""
    phrases = {
        ("en", 12): f"a dozen {forms.many}",
        ("en", 6): f"half a dozen {forms.many}",
        ("es", 12): f"una docena de {forms.many}",
        ("es", 6): f"media docena de {forms.many}",
        ("hr", 12): f"tucet {forms.many}",
    }
    return phrases.get((language, n))


def couple_item(language: str, forms: Forms) -> str | None:
    """'a couple of' = 2 where the language says so and the product is not itself a pair ('par de calcetines')."""
    if language == "en" and not forms.one.startswith("pair "):
        return f"a couple of {forms.many}"
    if language == "es" and not forms.one.startswith("par "):
        return f"un par de {forms.many}"
    return None  # Croatian 'par' means a pair, or a few: not a number


def render_item(
    language: str, forms: Forms, n: int, style: str, action: str, rng: random.Random, case: str = "accusative"
) -> str:
    """The quantity and product as an expression's {item} (case "nominative": its {item_nom}); style is
    implicit, plural (one item named in the plural, no number), digits or words.

    Digits are mostly '3 shampoos', sometimes '3x shampoos' or 'shampoos x3' (the noun keeps the form the
    number needs); words include the idioms 'a dozen', 'half a dozen', 'a couple of'.
    """
    if case not in CASES:
        raise ValueError(f"render_item: unknown case {case!r}")
    if style == "implicit":
        if n != 1:
            raise ValueError("render_item: only a quantity of 1 can be implicit")
        return implicit_item(language, forms, action, rng, case)
    if style == "plural":
        if n != 1:
            raise ValueError("render_item: a plural with no number is one item: quantity 1")
        return plural_item(language, forms, action, rng, case)
    noun = noun_for(language, forms, n, case)
    if style == "digits":
        shape = rng.random()
        if shape < 0.1:
            return f"{n}x {noun}"
        if shape < 0.2:
            return f"{noun} x{n}"
        return f"{n} {noun}"
    if style == "words":
        idiom = dozen_item(language, forms, n) or (couple_item(language, forms) if n == 2 else None)
        if idiom and rng.random() < 0.5:
            return idiom
        return f"{number_words(language, n, forms.gender, case)} {noun}"
    raise ValueError(f"render_item: unknown quantity style {style!r}")


def quantity_mentions(language: str, n: int) -> list[str]:
    """Every way a text may state n: used to check texts an LLM wrote."""
    mentions = {str(n)}
    for gender in ("m", "f", "n"):
        for case in CASES:
            try:
                mentions.add(number_words(language, n, gender, case))
            except (KeyError, ValueError):
                pass
    if n == 2:
        mentions.update({"couple", "par de"})
    if n == 12:
        mentions.update({"dozen", "docena", "tucet"})
    if n == 6:
        mentions.update({"half a dozen", "media docena"})
    return sorted(mentions)
