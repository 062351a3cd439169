"""Word lists of the synthetic tasks (:mod:`.tasks`): short, common words, one or two tokens each.

Changing a list changes every generated sample (they are drawn from these lists with seeded RNGs).
"""

__all__ = ["ADJECTIVES", "CITIES", "CODE_WORDS", "NOUNS"]

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
