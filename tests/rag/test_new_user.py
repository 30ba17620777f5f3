"""A new user's first try, kept as fixtures (tests/rag/new_user: 4 documents written for it, 4 answerable questions
and 1 that the documents do not answer), answered by the real embedded model in every mode: each mode must answer
the answerable questions, except where recorded below, and no answer may degenerate into a sentence repeated."""
import json
import re

import pytest

from cascade_rag.engine import MODES, SamplingParams
from cascade_rag.rag.pipeline import RAG

from ..helpers import ROOT

FIXTURES = ROOT / "tests" / "rag" / "new_user"
QUESTIONS = [json.loads(line) for line in (FIXTURES / "questions.jsonl").read_text().splitlines()]
# (mode, question id) pairs whose answer misses the expected fact, measured (2026-12-06, 32 greedy tokens), so that a
# change either way is noticed: `cached` misses all four (it names the wrong builder, the wrong place, a coffee shop
# for the club), `full` says pets are welcome without naming which, `blend` answers all four
KNOWN_MISSES = {("cached", "builder"), ("cached", "closed"), ("cached", "fee"), ("cached", "pets"), ("full", "pets")}


def repeated_sentence(text: str) -> str | None:
    """A sentence of at least four words that the text says twice, if any."""
    sentences = [" ".join(s.lower().split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    seen = set()
    for s in sentences:
        if len(s.split()) >= 4 and s in seen:
            return s
        seen.add(s)
    return None


def test_repeated_sentences_are_found():
    assert repeated_sentence("It is a very special place. It is a very special place. It") == "it is a very special place."
    assert repeated_sentence("Yes. Yes. Dogs are welcome here.") is None


@pytest.mark.slow
def test_every_mode_answers_the_new_users_questions_as_full_does(tmp_path):
    params = SamplingParams(max_new_tokens=32)
    with RAG(tmp_path) as rag:
        rag.ingest([FIXTURES])
        answers = {(mode, q["id"]): rag.ask(q["question"], mode=mode, params=params).result().text
                   for q in QUESTIONS for mode in MODES}
    for (mode, qid), text in answers.items():
        assert repeated_sentence(text) is None, (mode, qid, text)
    answerable = [q for q in QUESTIONS if q["expect"]]
    misses = {(mode, q["id"]) for q in answerable for mode in MODES
              if not re.search(q["expect"], answers[mode, q["id"]].lower())}
    print("\n".join(f"{mode} {qid}: {text!r}" for (mode, qid), text in sorted(answers.items())))
    assert misses == KNOWN_MISSES, {k: answers[k] for k in misses ^ KNOWN_MISSES}
