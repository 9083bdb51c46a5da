"""The offline writer: a request composed from independent slots (resources/slots.yaml).

frame ("can you {x}?") x action expression ("remove {item} {from}") x item (quantity + product form, see
language.py) x place ("from my basket") x noise (noise.py). Each slot is drawn on its own, so n rows cover
the cross product instead of repeating a few hundred sentences. A seeded share of frames, expressions
and product synonyms is held out (`split_slots`): training never sees them, the eval set is written with
the held-out frames and, for a share of its rows, held-out expressions and synonyms, and each row says
which of its slots training never saw (`unseen`), so accuracy on unseen words can be reported apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ecommerce_slm.catalog import Catalog
from ecommerce_slm.generator import GenerationError, Spec, seeded_share
from ecommerce_slm.language import plural_written_singular, render_item
from ecommerce_slm.noise import NoiseVocab, add_noise
from ecommerce_slm.paths import SLOTS_FILE
from ecommerce_slm.task import ACTIONS

FRAME_KINDS = ("imp", "inf", "statement")
EXPRESSION_KINDS = ("imperative", "statement")
FRAMES_OF = {"imperative": ("imp", "inf"), "statement": ("statement",)}  # which frames wrap which expressions
SLOT_NAMES = ("frame", "expression", "synonym")
NOMINATIVE_ITEM = "{item_nom}"  # the item as the clause's subject; {item} is its object


@dataclass(frozen=True)
class Expression:
    id: str  # language.action.kind.NN
    action: str
    kind: str  # imperative | statement
    imp: str  # the clause as an imperative (or the whole statement)
    inf: str  # the clause in the infinitive, for "can you ...?" frames

    @property
    def case(self) -> str:
        """The item's case in this clause: the subject ({item_nom}, "treba mi {item_nom}") or the object ({item})."""
        return "nominative" if NOMINATIVE_ITEM in self.imp else "accusative"


@dataclass(frozen=True)
class Frame:
    id: str  # language.kind.NN
    kind: str  # imp | inf | statement
    text: str  # with {x}


@dataclass(frozen=True)
class Slots:
    places: dict[str, dict[str, list[str]]]  # language -> to | in | from -> phrases
    expressions: dict[str, list[Expression]]  # language -> all actions
    frames: dict[str, list[Frame]]  # language -> all kinds


def load_slots(path: Path = SLOTS_FILE) -> Slots:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    places, expressions, frames = {}, {}, {}
    for language, entry in raw.items():
        places[language] = entry["places"]
        expressions[language] = []
        for action in ACTIONS:
            for kind in EXPRESSION_KINDS:
                for i, text in enumerate(entry["expressions"][action][kind]):
                    imp, _, inf = (part.strip() for part in text.partition(" | "))
                    check_item_slot(imp, inf or imp, f"{path}: {language}.expressions.{action}.{kind}[{i}]")
                    expressions[language].append(
                        Expression(f"{language}.{action}.{kind}.{i:02d}", action, kind, imp, inf or imp)
                    )
        frames[language] = [
            Frame(f"{language}.{kind}.{i:02d}", kind, text)
            for kind in FRAME_KINDS
            for i, text in enumerate(entry["frames"][kind])
        ]
    return Slots(places, expressions, frames)


def check_item_slot(imp: str, inf: str, where: str) -> None:
    """Each form of an expression names the item once, as object ({item}) or subject ({item_nom}), and both
    forms alike: the case the item is rendered in is read from the imperative."""
    for part in (imp, inf):
        if part.count("{item}") + part.count(NOMINATIVE_ITEM) != 1:
            raise GenerationError(f"{where}: {part!r}: expected exactly one of {{item}} or {NOMINATIVE_ITEM}")
    if (NOMINATIVE_ITEM in imp) != (NOMINATIVE_ITEM in inf):
        raise GenerationError(f"{where}: the imperative and the infinitive must use the same item slot")


@dataclass(frozen=True)
class SlotSplit:
    """Which slot values training never sees, by id (synonyms as 'Product|language|index')."""

    heldout: dict[str, set[str]] = field(default_factory=dict)  # slot name -> ids
    totals: dict[str, int] = field(default_factory=dict)
    # slot name -> ids a writer of this split never draws: a second held-out slice (tools/dev_set) skips the
    # eval set's slice, so the two never share a slot value
    excluded: dict[str, set[str]] = field(default_factory=dict)

    def shares(self) -> dict[str, dict]:
        return {
            slot: {
                "total": self.totals[slot],
                "heldout": len(self.heldout[slot]),
                "share": round(len(self.heldout[slot]) / self.totals[slot], 4) if self.totals[slot] else 0.0,
            }
            for slot in SLOT_NAMES
        }


def synonym_ids(catalog: Catalog, language: str) -> list[str]:
    """Every synonym of every product (the usual name, index 0, is never held out)."""
    return [f"{p.name}|{language}|{i}" for p in catalog.products for i in range(1, len(p.forms[language]))]


def split_slots(
    slots: Slots,
    catalog: Catalog,
    languages: list[str],
    share: float,
    seed: int,
    among: SlotSplit | None = None,
    purpose: str = "heldout",
) -> SlotSplit:
    """Hold out `share` of each group: frames per (language, kind), expressions per (language, action,
    kind), synonyms per language. With `among`, only from the values `among` leaves to training (a second
    slice, keyed by `purpose`, that the first never overlaps)."""
    taken = among.heldout if among else {}
    heldout = {slot: set() for slot in SLOT_NAMES}
    totals = dict.fromkeys(SLOT_NAMES, 0)

    def hold(slot: str, ids: list[str], group: str) -> None:
        ids = [i for i in ids if i not in taken.get(slot, ())]
        heldout[slot] |= seeded_share(ids, share, f"{purpose}:{seed}:{slot}:{group}")
        totals[slot] += len(ids)

    for language in languages:
        for kind in FRAME_KINDS:
            hold("frame", [f.id for f in slots.frames[language] if f.kind == kind], f"{language}:{kind}")
        for action in ACTIONS:
            for kind in EXPRESSION_KINDS:
                ids = [e.id for e in slots.expressions[language] if e.action == action and e.kind == kind]
                hold("expression", ids, f"{language}:{action}:{kind}")
        hold("synonym", synonym_ids(catalog, language), language)
    return SlotSplit(heldout, totals)


class ComposeWriter:
    """A Writer for generate_rows. For training (`unseen_share` 0) it draws only slots that are not held
    out; for the eval set it draws only held-out frames, and a held-out expression or synonym with
    probability `unseen_share` each."""

    def __init__(
        self,
        slots: Slots,
        catalog: Catalog,
        split: SlotSplit,
        noise_rates: dict[str, float],
        vocab: NoiseVocab,
        unseen_share: float = 0.0,
    ):
        self.slots, self.catalog, self.split = slots, catalog, split
        self.noise_rates, self.vocab, self.unseen_share = noise_rates, vocab, unseen_share
        self.for_eval = unseen_share > 0

    def frame_ids(self, language: str) -> list[str]:
        """The frames this writer's split may use: the ids plan_specs draws a style from."""
        held, excluded = self.split.heldout["frame"], self.split.excluded.get("frame", set())
        return [f.id for f in self.slots.frames[language] if (f.id in held) == self.for_eval and f.id not in excluded]

    def styles(self, languages: list[str]) -> dict[tuple[str, str], list[str]]:
        """(language, action) -> the frames plan_specs may give a request of that kind."""
        return {(language, action): self.frame_ids(language) for language in languages for action in ACTIONS}

    def _pick(self, seen: list, unseen: list, rng: random.Random):
        """(value, is_unseen): an unseen one with probability unseen_share when there is one."""
        if unseen and (not seen or rng.random() < self.unseen_share):
            return rng.choice(unseen), True
        if not seen:
            raise GenerationError("no slot value left to draw from: lower data.heldout_share")
        return rng.choice(seen), False

    def __call__(self, spec: Spec, rng: random.Random) -> tuple[str, list[str], dict]:
        language = spec.language
        frame = next(f for f in self.slots.frames[language] if f.id == spec.style)
        kinds = [k for k, frame_kinds in FRAMES_OF.items() if frame.kind in frame_kinds]
        excluded = self.split.excluded.get("expression", set())
        candidates = [
            e
            for e in self.slots.expressions[language]
            if e.action == spec.action and e.kind in kinds and e.id not in excluded
        ]
        held = self.split.heldout["expression"]
        expression, unseen_expression = self._pick(
            [e for e in candidates if e.id not in held],
            [e for e in candidates if e.id in held] if self.for_eval else [],
            rng,
        )
        forms = self.catalog[spec.product].forms[language]
        synonyms_held = self.split.heldout["synonym"]
        form_ids = [f"{spec.product}|{language}|{i}" for i in range(len(forms))]
        excluded = self.split.excluded.get("synonym", set())
        seen_forms = [i for i, fid in enumerate(form_ids) if fid not in synonyms_held and fid not in excluded]
        # the usual name most of the time, a (seen) synonym sometimes
        seen_forms = seen_forms[:1] if len(seen_forms) == 1 or rng.random() < 0.6 else seen_forms[1:]
        form_index, unseen_form = self._pick(
            seen_forms, [i for i, fid in enumerate(form_ids) if fid in synonyms_held] if self.for_eval else [], rng
        )
        item = render_item(
            language, forms[form_index], spec.quantity, spec.quantity_style, spec.action, rng, expression.case
        )
        places = {slot: rng.choice(phrases) for slot, phrases in self.slots.places[language].items()}
        clause = (expression.inf if frame.kind == "inf" else expression.imp).format(item=item, item_nom=item, **places)
        text = capitalize_first(frame.text.format(x=clause)) if rng.random() < 0.6 else frame.text.format(x=clause)
        text, noise = add_noise(text, language, self.noise_rates, self.vocab, rng)
        meta = {
            "expression": expression.id,
            "product_form": form_ids[form_index],
            "item": item,  # the quantity and product as written, before noise
            "unseen": [slot for slot, flag in (("expression", unseen_expression), ("synonym", unseen_form)) if flag],
        }
        if spec.quantity_style == "plural" and plural_written_singular(language, forms[form_index], expression.case):
            meta["quantity_style"] = "implicit"  # the label says what the text has: the singular, no number
        return text, noise, meta


def capitalize_first(text: str) -> str:
    """Upper-case the first letter ('¿puedes' -> '¿Puedes'); digits and signs stay."""
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1 :]
    return text


def slot_texts(slots: Slots) -> dict[str, dict[str, list[str]]]:
    """language -> action -> the words of its expressions and frames (for metaprompt's language markers)."""
    out = {}
    for language, expressions in slots.expressions.items():
        frames = [f.text.replace("{x}", "") for f in slots.frames[language]]
        out[language] = {
            action: [
                text.format(item="", item_nom="", **dict.fromkeys(("to", "in", "from"), ""))
                for e in expressions
                if e.action == action
                for text in (e.imp, e.inf)
            ]
            + frames
            for action in ACTIONS
        }
        out[language]["places"] = [p for phrases in slots.places[language].values() for p in phrases]
    return out
