"""Regenerate the bundled chat and preference samples (our own data, no licence strings
attached): `python examples/data/chat/generate.py`. Deterministic.

A small "units helper" assistant: conversions between metric units, with a system
turn, one or two user turns, and answers that show the arithmetic. The preference
pairs put the right answer against one with the factor applied the wrong way.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SYSTEM = "You are a units helper. Answer with the converted value and one line of working."
UNITS = [  # (from, to, factor): 1 from = factor to
    ("kilometres", "metres", 1000),
    ("metres", "centimetres", 100),
    ("centimetres", "millimetres", 10),
    ("kilograms", "grams", 1000),
    ("litres", "millilitres", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
]


def _question(rng: random.Random) -> tuple[str, str, str]:
    src, dst, factor = rng.choice(UNITS)
    value = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 20, 25])
    question = f"How many {dst} are in {value} {src}?"
    right = f"{value * factor} {dst}. Working: {value} x {factor} = {value * factor}."
    wrong = f"{value / factor:g} {dst}. Working: {value} / {factor} = {value / factor:g}."
    return question, right, wrong


def chat(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
        for _ in range(1 + i % 2):  # one or two user turns
            question, right, _ = _question(rng)
            messages += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": right},
            ]
        rows.append({"messages": messages})
    return rows


def preferences(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, right, wrong = _question(rng)
        rows.append({"prompt": question, "chosen": right, "rejected": wrong})
    return rows


def write(path: Path, rows: list[dict[str, object]] | list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    write(HERE / "train.jsonl", chat(240, seed=1))
    write(HERE / "eval.jsonl", chat(40, seed=2))
    write(HERE / "preferences-train.jsonl", preferences(240, seed=3))
    write(HERE / "preferences-eval.jsonl", preferences(40, seed=4))
