"""The default caption-bank vocabulary for sources that do not define their own.

Real photo datasets (CIFAR, an image folder) carry no attribute labels, so the
caption stage needs a generic bank to describe failure directions with. As in
the reference method, adjectives are colours and contexts are backgrounds /
scene prepositions ("on the grass", "indoors"). Every source that lacks its own
vocabulary takes it from here, so there is one list to change.
"""
from __future__ import annotations

DEFAULT_ADJECTIVES = (
    "red", "orange", "yellow", "green", "blue", "purple",
    "pink", "brown", "black", "white", "gray",
)

DEFAULT_CONTEXTS = (
    "on the grass", "in the water", "in the snow", "on the road", "indoors",
    "in the sky", "at night", "in a forest", "on a beach", "in a field",
    "in the city", "on a table", "in the desert", "in the dark",
    "in a cage", "in the rain",
)


def default_vocab() -> dict[str, list[str]]:
    """A fresh copy (callers may edit it) in the shape meta.json stores."""
    return {"adjectives": list(DEFAULT_ADJECTIVES), "contexts": list(DEFAULT_CONTEXTS)}
