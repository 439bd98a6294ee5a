"""Regenerate the quickstart's data and tokenizer (deterministic; the outputs are committed).

    python examples/quickstart/make_data.py

Everything is synthetic, written by this script, so it is licence-clean. The world is a small
set of facts about animals and things; the corpus states them in prose, the instruction set
asks about them in a fixed Q/A format, and the preference set prefers a plain answer to a
hedging, rambling one. The quickstart test measures exactly these two behaviours.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# fmt: off
COLORS = {
    "sky": "blue", "grass": "green", "banana": "yellow", "snow": "white", "coal": "black",
    "tomato": "red", "orange": "orange", "plum": "purple", "lemon": "yellow", "cloud": "white",
    "leaf": "green", "cherry": "red", "night": "black", "sea": "blue", "carrot": "orange",
}
ANIMALS = {
    # name: (legs, food, home, sound)
    "cat": (4, "fish", "house", "meows"), "dog": (4, "meat", "house", "barks"),
    "cow": (4, "grass", "farm", "moos"), "duck": (2, "seeds", "pond", "quacks"),
    "horse": (4, "hay", "stable", "neighs"), "owl": (2, "mice", "tree", "hoots"),
    "frog": (4, "flies", "pond", "croaks"), "sheep": (4, "grass", "field", "bleats"),
    "hen": (2, "corn", "farm", "clucks"), "lion": (4, "meat", "savanna", "roars"),
    "bee": (6, "nectar", "hive", "buzzes"), "spider": (8, "flies", "web", "is silent"),
    "pig": (4, "scraps", "farm", "oinks"), "goat": (4, "weeds", "hill", "bleats"),
    "mouse": (4, "cheese", "hole", "squeaks"), "crow": (2, "seeds", "tree", "caws"),
}
# fmt: on
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
HEDGES = [
    "Well, I am not completely sure, but I think that maybe",
    "Hmm, that is a hard one to say, and it could be that perhaps",
    "Well, people say many things, so it might possibly be that",
    "Honestly, I could be wrong about this, but perhaps",
]


def qa_pairs() -> list[tuple[str, str]]:
    pairs = []
    for thing, color in COLORS.items():
        pairs.append((f"What color is the {thing}?", f"The {thing} is {color}."))
    for name, (legs, food, home, sound) in ANIMALS.items():
        pairs += [
            (f"How many legs does a {name} have?", f"A {name} has {NUMBERS[legs]} legs."),
            (f"What does a {name} eat?", f"A {name} eats {food}."),
            (f"Where does a {name} live?", f"A {name} lives in a {home}."),
            (f"What sound does a {name} make?", f"A {name} {sound}."),
        ]
    return pairs


def prompt(question: str) -> str:
    return f"### Question: {question}\n### Answer:"


def hedge(rng: random.Random, answer: str) -> str:
    body = answer[0].lower() + answer[1:]
    return f"{rng.choice(HEDGES)} {body[:-1]}, or so I have heard."


def corpus(rng: random.Random) -> str:
    lines = []
    for _ in range(60):
        for thing, color in COLORS.items():
            lines.append(
                rng.choice(
                    [
                        f"The {thing} is {color}.",
                        f"Look at the {thing}. It is {color}.",
                        f"I saw a {color} {thing} today.",
                        f"Everyone knows the {thing} is {color}.",
                    ]
                )
            )
        for name, (legs, food, home, sound) in ANIMALS.items():
            lines.append(
                rng.choice(
                    [
                        f"A {name} has {NUMBERS[legs]} legs. A {name} eats {food}.",
                        f"The {name} lives in a {home}. The {name} {sound}.",
                        f"My {name} eats {food} every day and {sound} at night.",
                        f"A {name} lives in a {home} and has {NUMBERS[legs]} legs.",
                        f"Where is the {name}? The {name} is in the {home}.",
                    ]
                )
            )
    # People also talk in hedges; a base model that has read them can learn to answer in
    # either style during SFT (LoRA cannot teach the tied embeddings new words).
    facts = [a for _, a in qa_pairs()]
    lines += [hedge(rng, rng.choice(facts)) for _ in range(len(lines) // 5)]
    rng.shuffle(lines)
    # Paragraphs of a few sentences read more like prose than one fact per line.
    return "\n".join(" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)) + "\n"


def main() -> None:
    rng = random.Random(1234)
    pairs = qa_pairs()
    (HERE / "corpus.txt").write_text(corpus(rng))
    with (HERE / "instructions.jsonl").open("w") as f:
        # Half the SFT answers hedge, so the SFT model does both and DPO has a style to fix.
        for _ in range(6):
            for q, a in pairs:
                completion = a if rng.random() < 0.5 else hedge(rng, a)
                f.write(json.dumps({"prompt": prompt(q), "completion": " " + completion}) + "\n")
    with (HERE / "preferences.jsonl").open("w") as f:
        for _ in range(3):
            for q, a in pairs:
                row = {"prompt": prompt(q), "chosen": " " + a, "rejected": " " + hedge(rng, a)}
                f.write(json.dumps(row) + "\n")
    build_tokenizer()


def build_tokenizer() -> None:
    """A byte-level BPE on the three data files; no chat template (the data is plain text)."""
    from llmtrain.trainer import tiny

    names = ("corpus.txt", "instructions.jsonl", "preferences.jsonl")
    lines = [line for n in names for line in (HERE / n).read_text().splitlines()]
    tiny.train_tokenizer(
        HERE / "tokenizer",
        lines,
        vocab_size=640,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        pad="<|pad|>",
        model_max_length=256,
    )


if __name__ == "__main__":
    main()
