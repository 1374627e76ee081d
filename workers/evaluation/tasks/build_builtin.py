"""Regenerate the built-in lm-evaluation-harness data files from Python's documentation.

The JSONL files beside this script are committed (workers have no network, and a task's data must
not change under a user): this script documents how they were made and rebuilds them
byte-for-byte from CPython 3.11's `pydoc_data.topics`. Only the last 20 % of the corpus (the
evaluation share, which calibration never reads) is used.

    python -m workers.evaluation.tasks.build_builtin
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from workers.models.datasets import CALIBRATION_SHARE, builtin_text

HERE = Path(__file__).resolve().parent
DOCS = 150
SENTENCE_END = re.compile(r"(?<=[a-z][.])\s+(?=[A-Z])")
WORD = re.compile(r"^[A-Za-z][a-z]+$")


def held_out_sentences() -> list[str]:
    text = builtin_text("pydoc-topics")
    text = text[int(len(text) * CALIBRATION_SHARE) :]
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for sentence in SENTENCE_END.split(flat):
            words = sentence.split()
            # Plain prose only: no code, no reST markup, a whole sentence.
            if not 8 <= len(words) <= 50 or not sentence.endswith("."):
                continue
            if any(ch in sentence for ch in "`*=[]{}<>|\\_#"):
                continue
            sentences.append(sentence)
    return list(dict.fromkeys(sentences))  # drop repeats, keep order


def multiple_choice(sentences: list[str], rng: random.Random) -> list[dict[str, object]]:
    """HellaSwag-style: pick the real ending of a sentence among four."""
    splits = []
    for sentence in sentences:
        words = sentence.split()
        cut = max(5, int(len(words) * 0.6))
        splits.append((" ".join(words[:cut]), " ".join(words[cut:])))
    docs = []
    for index in rng.sample(range(len(splits)), DOCS):
        context, ending = splits[index]
        others = rng.sample([e for i, (_, e) in enumerate(splits) if i != index], 3)
        choices = [ending, *others]
        rng.shuffle(choices)
        docs.append({"context": context, "choices": choices, "label": choices.index(ending)})
    return docs


def cloze(sentences: list[str], rng: random.Random) -> list[dict[str, object]]:
    """LAMBADA-style: the last word of a sentence, scored by log-likelihood and greedy match."""
    candidates: list[dict[str, object]] = []
    for sentence in sentences:
        words = sentence[:-1].split()
        if WORD.match(words[-1]) and len(words[-1]) >= 4:
            candidates.append({"context": " ".join(words[:-1]), "target": words[-1]})
    return rng.sample(candidates, DOCS)


def main() -> None:
    sentences = held_out_sentences()
    for name, build in (("python_docs_mc", multiple_choice), ("python_docs_cloze", cloze)):
        docs = build(sentences, random.Random(0))
        lines = "".join(json.dumps(doc, sort_keys=True) + "\n" for doc in docs)
        (HERE / f"{name}.jsonl").write_text(lines)
        print(f"{name}: {len(docs)} docs from {len(sentences)} sentences")  # noqa: T201 - a script


if __name__ == "__main__":
    main()
