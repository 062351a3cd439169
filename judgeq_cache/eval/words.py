"""Word lists of the synthetic tasks (:mod:`.tasks`): short, common words, one or two tokens each,
and the seeded draws of keys and numbers.

Changing a list changes every generated sample (they are drawn from these lists with seeded RNGs).
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["ADJECTIVES", "CITIES", "CODE_WORDS", "NOUNS", "distinct", "random_key", "random_number"]

#: Needle keys are ``<adjective>-<noun>``.
ADJECTIVES = [
    "amber",
    "silent",
    "crimson",
    "hollow",
    "gentle",
    "frozen",
    "golden",
    "rapid",
    "quiet",
    "bitter",
    "distant",
    "ancient",
    "brave",
    "narrow",
    "velvet",
    "hidden",
    "lucky",
    "stormy",
    "wooden",
    "silver",
]
NOUNS = [
    "harbor",
    "lantern",
    "meadow",
    "falcon",
    "orchard",
    "compass",
    "glacier",
    "willow",
    "canyon",
    "beacon",
    "thimble",
    "anchor",
    "violin",
    "pepper",
    "castle",
    "ribbon",
    "tunnel",
    "saddle",
    "mirror",
    "garden",
]
#: Values of the "secret code word" distractors and the code word of ``needle_multiquery``.
CODE_WORDS = [
    "pineapple",
    "tornado",
    "marble",
    "kangaroo",
    "saxophone",
    "volcano",
    "umbrella",
    "lighthouse",
    "avalanche",
    "cinnamon",
    "dolphin",
    "telescope",
    "hurricane",
    "pyramid",
    "sapphire",
    "walrus",
    "trombone",
    "cactus",
]
#: Values of the "home town" distractors.
CITIES = [
    "Lisbon",
    "Nairobi",
    "Oslo",
    "Lima",
    "Kyoto",
    "Dublin",
    "Cairo",
    "Quito",
    "Hanoi",
    "Perth",
    "Tunis",
    "Riga",
]


def random_key(rng: random.Random) -> str:
    """A needle key, ``<adjective>-<noun>``."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def random_number(rng: random.Random, digits: int = 7) -> str:
    """A ``digits``-digit number (no leading zero)."""
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def distinct(n: int, draw: Callable[[], str]) -> list[str]:
    """``n`` different values of ``draw()``, in the order drawn."""
    values: list[str] = []
    while len(values) < n:
        value = draw()
        if value not in values:
            values.append(value)
    return values
