"""Retrieval-style training prompts: facts hidden in bundled book text, asked about before, after or
later (after compression).

The soft tokens must learn to keep what *a later question* will need: salient, out-of-place facts.
These prompts teach that, while staying apart from the evaluation needles (``judgeq_cache.eval.tasks``):

* **keys** are people, lockers, flights, accounts, shops (never the evaluation's ``adjective-noun``);
* **templates** are ten relations (phone numbers, arrival dates, locker contents, prices, passwords,
  gates, pets, meeting times, packing lists, distances), never "special magic number", "secret code
  word", "hotel room" or "home town";
* **values** use other formats: ``555-0134`` phone numbers, dates, times, prices, ``TANGO-48``
  passwords, gate codes, words; never a plain 7-digit number or a 3-digit room;
* **cities and words** come from lists disjoint from the evaluation's.

What *is* task-matched (documented in ``docs/training.md``): the shape of the job, a few short facts
inserted between paragraphs of the same bundled books, questions about them, at 1-3k tokens.

Each prompt comes in one of three layouts, as the evaluation settings do:

* ``after``: instruction, text, question are compressed; the future is the answer;
* ``before``: the question comes first, then the text; the future is the answer;
* ``later``: only instruction + text are compressed; the future is the question *and* its answer
  (query-agnostic use: the soft tokens must keep what any later question may need).

The answer is a reference sentence (teacher-forced), so every target reaches the answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..data import corpus_paragraphs
from ..hitrate import token_positions

__all__ = ["FACT_KINDS", "LAYOUTS", "TokenPrompt", "fact_prompts"]

LAYOUTS = ("after", "before", "later")

_FIRST = ["Maria", "Tomas", "Aiko", "Pavel", "Greta", "Omar", "Lucia", "Henrik", "Priya", "Diego"]
_FIRST += ["Nadia", "Felix", "Sofia", "Kwame", "Ingrid", "Mateo", "Yara", "Bruno", "Elena", "Jonah"]
_LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Alvarez", "Brennan", "Kowalski"]
_LAST += ["Haddad", "Fischer", "Romano", "Petrov", "Castillo", "Nakamura", "Duarte", "Sorensen"]
_TOWNS = ["Montreal", "Bergen", "Seville", "Adelaide", "Krakow", "Porto", "Valparaiso", "Tbilisi"]
_TOWNS += ["Halifax", "Leipzig", "Cordoba", "Gdansk", "Antwerp", "Split", "Tromso", "Galway"]
_PLACES = ["north station", "old gym", "harbour office", "east library", "ferry terminal", "town hall"]
_ITEMS = ["a red umbrella", "two brass keys", "a folded map", "a jar of honey", "a wool scarf"]
_ITEMS += ["a broken clock", "a box of chalk", "a green notebook", "a silver spoon", "a pair of boots"]
_GOODS = ["leather sofa", "oak table", "copper kettle", "rowing boat", "piano", "bicycle"]
_SHOPS = ["Hartley's", "the corner market", "Bell & Sons", "the flea market", "Marlow's"]
_SYSTEMS = ["payroll", "mail server", "warehouse", "library", "backup", "radio room"]
_CALL = ["TANGO", "ECHO", "BRAVO", "OSCAR", "KILO", "SIERRA", "DELTA", "VICTOR", "LIMA", "ZULU"]
_ANIMALS = ["parrot", "tortoise", "cat", "goat", "pony", "hamster"]
_PETS = ["Biscuit", "Captain", "Pickles", "Juniper", "Marzipan", "Nugget", "Rasputin", "Clementine"]
_PACK = ["compass", "flashlight", "rope", "kettle", "blanket", "whistle", "notebook", "candle", "knife"]
_MONTHS = ["January", "March", "April", "June", "August", "October", "November", "December"]
_LANDMARKS = ["lighthouse", "chapel", "windmill", "stone bridge", "water tower", "old mill"]

_INSTRUCTIONS = (
    "Read the document below carefully. You will be asked about details in it.",
    "The following text contains a few notes that were added to it. Keep them in mind.",
    "Below is a long passage. Some facts about people and things are mixed into it.",
    "",
)


@dataclass
class Fact:
    """One inserted sentence with a question about it and the reference answer."""

    sentence: str
    question: str
    answer: str
    values: list[str]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


@dataclass(frozen=True)
class FactKind:
    """One relation: templates over the fields that ``fields`` draws (in a fixed order, so a seed
    always gives the same fact); ``values`` name what the answer must contain."""

    sentence: str
    question: str
    answer: str
    values: tuple[str, ...]
    fields: Callable[[random.Random], dict[str, str]]

    def __call__(self, rng: random.Random) -> Fact:
        f = self.fields(rng)
        return Fact(
            self.sentence.format(**f),
            self.question.format(**f),
            self.answer.format(**f),
            [v.format(**f) for v in self.values],
        )


def _locker(r: random.Random) -> dict[str, str]:
    locker, place, item = f"{r.choice('ABCDEFGH')}{r.randrange(10, 99)}", r.choice(_PLACES), r.choice(_ITEMS)
    return {"locker": locker, "place": place, "item": item, "thing": item.split(" ", 1)[1]}


def _packing(r: random.Random) -> dict[str, str]:
    who, town, things = _person(r), r.choice(_TOWNS), r.sample(_PACK, 3)
    listed = f"a {things[0]}, a {things[1]} and a {things[2]}"
    return {"who": who, "town": town, "listed": listed, "a": things[0], "b": things[1], "c": things[2]}


#: Fact generators: ten relations, each with its own template and value format.
FACT_KINDS: dict[str, FactKind] = {
    "phone": FactKind(
        "{who}'s phone number is {num}.",
        "What is {who}'s phone number?",
        "{who}'s phone number is {num}.",
        ("{num}",),
        lambda r: {"who": _person(r), "num": f"{r.randrange(200, 999)}-{r.randrange(1000, 9999)}"},
    ),
    "arrival": FactKind(
        "{who} arrived in {town} on {date}.",
        "When did {who} arrive in {town}?",
        "{who} arrived in {town} on {date}.",
        ("{date}",),
        lambda r: {
            "who": _person(r),
            "town": r.choice(_TOWNS),
            "date": f"{r.choice(_MONTHS)} {r.randrange(1, 29)}, {r.randrange(1950, 2030)}",
        },
    ),
    "locker": FactKind(
        "Locker {locker} at the {place} holds {item}.",
        "What does locker {locker} at the {place} hold?",
        "Locker {locker} holds {item}.",
        ("{thing}",),
        _locker,
    ),
    "price": FactKind(
        "The {good} at {shop} costs {price}.",
        "How much does the {good} at {shop} cost?",
        "The {good} costs {price}.",
        ("{price}",),
        lambda r: {
            "good": r.choice(_GOODS),
            "shop": r.choice(_SHOPS),
            "price": f"${r.randrange(1, 9)},{r.randrange(100, 999)}.{r.randrange(10, 99)}",
        },
    ),
    "password": FactKind(
        "The password of the {system} account is {word}.",
        "What is the password of the {system} account?",
        "The password is {word}.",
        ("{word}",),
        lambda r: {"system": r.choice(_SYSTEMS), "word": f"{r.choice(_CALL)}-{r.randrange(10, 99)}"},
    ),
    "gate": FactKind(
        "Flight {flight} to {town} boards at gate {gate}.",
        "At which gate does flight {flight} to {town} board?",
        "Flight {flight} boards at gate {gate}.",
        ("{gate}",),
        lambda r: {
            "flight": f"{r.choice('BKLMQRSUW')}{r.choice('AEKRTY')} {r.randrange(100, 9999)}",
            "town": r.choice(_TOWNS),
            "gate": f"{r.choice('ABCDEF')}{r.randrange(1, 40)}",
        },
    ),
    "pet": FactKind(
        "{who} owns a {animal} called {name}.",
        "What is the name of {who}'s {animal}?",
        "{who}'s {animal} is called {name}.",
        ("{name}",),
        lambda r: {"who": _person(r), "animal": r.choice(_ANIMALS), "name": r.choice(_PETS)},
    ),
    "meeting": FactKind(
        "The meeting with {who} was moved to {time}.",
        "At what time is the meeting with {who}?",
        "The meeting with {who} is at {time}.",
        ("{time}",),
        lambda r: {
            "who": _person(r),
            "time": f"{r.randrange(1, 12)}:{r.randrange(0, 60):02d} {r.choice(['a.m.', 'p.m.'])}",
        },
    ),
    "packing": FactKind(
        "For the trip to {town}, {who} packed {listed}.",
        "What did {who} pack for the trip to {town}?",
        "{who} packed {listed}.",
        ("{a}", "{b}", "{c}"),
        _packing,
    ),
    "distance": FactKind(
        "{who} buried the box {paces} paces {side} of the {landmark}.",
        "Where did {who} bury the box?",
        "{who} buried the box {paces} paces {side} of the {landmark}.",
        ("{paces} paces {side}",),
        lambda r: {
            "who": r.choice(_FIRST),
            "landmark": r.choice(_LANDMARKS),
            "paces": str(r.randrange(12, 480)),
            "side": r.choice(["north", "south", "east", "west"]),
        },
    ),
}


@dataclass
class TokenPrompt:
    """A training prompt already in token ids.

    ``prompt_ids`` are prefilled (and compressed at inference). The target is the mean over
    ``futures`` of each future's mean attention over the prompt: one future (the answer) when the
    question is in the prompt, one per fact (question + answer) when it comes later, so the soft
    tokens learn to keep every fact a later question may ask about. ``needles`` are the prompt
    positions of the answer values (for the needle-recall metric).
    """

    id: str
    prompt_ids: list[int]
    futures: list[list[int]]
    needles: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _haystack(tokenizer, paragraphs: list[str], rng: random.Random, budget: int) -> list[str]:
    """Consecutive paragraphs from a random start, about ``budget`` tokens in all."""
    out, used = [], 0
    i = rng.randrange(len(paragraphs))
    while used < budget:
        para = paragraphs[i % len(paragraphs)]
        n = len(tokenizer.encode(para, add_special_tokens=False)) + 1
        if used + n > budget:
            words = para.split()
            para = " ".join(words[: max(1, int(len(words) * (budget - used) / n))])
            n = budget - used
        out.append(para)
        used += n
        i += 1
    return out


def fact_prompts(
    tokenizer,
    num_prompts: int,
    *,
    min_tokens: int = 1000,
    max_tokens: int = 3000,
    max_facts: int = 4,
    layouts: tuple[str, ...] = LAYOUTS,
    corpora: tuple[str, ...] = ("brown", "moby_dick"),
    seed: int = 0,
    id_prefix: str = "facts",
) -> list[TokenPrompt]:
    """``num_prompts`` retrieval prompts with 1..``max_facts`` facts hidden at uniform depths.

    One fact is asked about (its question and reference answer form the future); the layout cycles
    through ``layouts``. Deterministic for a given ``seed``.
    """
    from ..eval.layouts import chat_parts

    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        raise ValueError(f"unknown layouts {sorted(unknown)}; choose from {LAYOUTS}")
    if min_tokens < 64 or max_tokens < min_tokens:
        raise ValueError(f"need 64 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    head, tail = chat_parts(tokenizer)
    paragraphs = {name: corpus_paragraphs(name) for name in corpora}
    kinds = list(FACT_KINDS)

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if text else []

    out = []
    for i in range(num_prompts):
        rng = random.Random(f"{id_prefix}:{seed}:{i}")
        corpus = corpora[i % len(corpora)]
        facts = [FACT_KINDS[k](rng) for k in rng.sample(kinds, rng.randint(1, max_facts))]
        asked = facts[0]
        length = rng.randint(min_tokens, max_tokens)
        fact_tokens = sum(len(ids(f.sentence)) + 1 for f in facts)
        paras = _haystack(tokenizer, paragraphs[corpus], rng, max(32, length - fact_tokens))
        depths = [rng.uniform(0.02, 0.98) for _ in facts]
        for depth, fact in sorted(zip(depths, facts), key=lambda p: -p[0]):
            paras.insert(round(depth * len(paras)), fact.sentence)
        context = "\n".join(paras)
        instruction = rng.choice(_INSTRUCTIONS)
        instruction = instruction + "\n\n" if instruction else ""
        layout = layouts[i % len(layouts)]
        if layout == "before":
            prefix = ids(head + instruction + asked.question + "\n\n")
            suffix = ids("\n\n" + tail.lstrip("\n"))
            futures = [ids(asked.answer)]
        elif layout == "after":
            prefix, suffix = ids(head + instruction), ids("\n\n" + asked.question + tail)
            futures = [ids(asked.answer)]
        else:
            prefix, suffix = ids(head + instruction), []
            futures = [ids("\n\n" + f.question + tail) + ids(f.answer) for f in facts]
        wanted = asked.values if layout != "later" else [v for f in facts for v in f.values]
        needles = [len(prefix) + t for t in token_positions(tokenizer, context, wanted)]
        out.append(
            TokenPrompt(
                f"{id_prefix}-{seed}-{i}",
                prefix + ids(context) + suffix,
                futures,
                needles,
                meta={"layout": layout, "corpus": corpus, "facts": [f.sentence for f in facts]},
            )
        )
    return out
