"""Writes the quickstart's small English review-sentiment dataset (train.jsonl, dev.jsonl).

Sentences are built from templates with a fixed seed, so the files are reproducible:
`python examples/local/data/quickstart/generate.py`. Negations ("was not great") flip the
label, and in "X was good, but Y was bad" the clause after "but" decides, so a model has to
read more than one word.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = [
    "the pasta",
    "this phone",
    "the hotel room",
    "our delivery",
    "the movie",
    "the service",
    "this laptop",
    "the coffee",
    "the concert",
    "the staff",
    "the battery",
    "the checkout",
    "the soup",
    "this jacket",
    "the flight",
    "the app",
    "the camera",
    "the seats",
    "the support team",
    "the headphones",
    "the pizza",
    "the museum tour",
    "the keyboard",
    "the train ride",
    "the manual",
]
POSITIVE = [
    "great",
    "excellent",
    "wonderful",
    "delicious",
    "friendly",
    "fast",
    "comfortable",
    "reliable",
    "amazing",
    "superb",
    "helpful",
    "spotless",
    "charming",
    "sturdy",
    "lovely",
]
NEGATIVE = [
    "terrible",
    "awful",
    "cold",
    "rude",
    "slow",
    "broken",
    "disappointing",
    "noisy",
    "bland",
    "overpriced",
    "useless",
    "dirty",
    "flimsy",
    "confusing",
    "late",
]
ADVERBS = ["", "really ", "quite ", "very ", "truly ", "surprisingly "]
TEMPLATES = [
    "{S} was {adv}{adj}.",
    "{S} was not {adj} at all.",
    "Honestly, {s} is {adv}{adj}.",
    "I found {s} {adv}{adj}.",
    "I would not call {s} {adj}.",
    "{S} is {adv}{adj}, in my opinion.",
    "Nobody could say {s} was {adj}.",
    "We thought {s} was {adv}{adj}.",
]
NEGATED = {1, 4, 6}  # templates whose meaning is the opposite of the adjective


def examples(n: int, rng: random.Random) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    seen: set[str] = set()
    while len(out) < n:
        if rng.random() < 0.3:
            first, second = rng.sample(SUBJECTS, 2)
            good_first = rng.random() < 0.5
            before = rng.choice(POSITIVE if good_first else NEGATIVE)
            after = rng.choice(NEGATIVE if good_first else POSITIVE)
            text = f"{first[0].upper() + first[1:]} was {before}, but {second} was {after}."
            if text not in seen:
                seen.add(text)
                out.append({"text": text, "label": int(not good_first)})
            continue
        t = rng.randrange(len(TEMPLATES))
        positive = rng.random() < 0.5
        adj = rng.choice(POSITIVE if positive else NEGATIVE)
        s = rng.choice(SUBJECTS)
        text = TEMPLATES[t].format(S=s[0].upper() + s[1:], s=s, adv=rng.choice(ADVERBS), adj=adj)
        if text in seen:
            continue
        seen.add(text)
        label = int(positive) ^ int(t in NEGATED)
        out.append({"text": text, "label": label})
    return out


def main() -> None:
    rng = random.Random(20261122)
    rows = examples(1200, rng)
    here = Path(__file__).resolve().parent
    for name, part in (("train.jsonl", rows[:1000]), ("dev.jsonl", rows[1000:])):
        with (here / name).open("w") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
