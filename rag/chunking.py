"""Splitting a document into passages of at most N tokens, cut at paragraph or sentence ends where possible."""
import re
from typing import Callable

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_passages(text: str, count_tokens: Callable[[str], int], encode: Callable[[str], list[int]],
                   decode: Callable[[list[int]], str], passage_tokens: int = 256, overlap: int = 32) -> list[str]:
    """Packs paragraphs (then sentences, then raw token runs for overlong sentences) greedily into passages of at
    most `passage_tokens` tokens; each passage after the first repeats up to `overlap` tokens of whole units from
    the end of the one before."""
    if passage_tokens < 8:
        raise ValueError(f"passage size must be at least 8 tokens, got {passage_tokens}")
    if not 0 <= overlap < passage_tokens // 2:
        raise ValueError(f"overlap must be between 0 and half the passage size, got {overlap}")
    units: list[tuple[str, str, int]] = []  # (separator before, text, tokens)
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        separator = "\n\n"
        for sentence in _pieces(paragraph, count_tokens, encode, decode, passage_tokens):
            units.append((separator, sentence, count_tokens(sentence)))
            separator = " "
    passages, current = [], []
    for unit in units:
        if current and sum(u[2] for u in current) + unit[2] > passage_tokens:
            passages.append(_join(current))
            carried = []
            for prior in reversed(current):
                if sum(u[2] for u in carried) + prior[2] > overlap:
                    break
                carried.insert(0, prior)
            current = carried if sum(u[2] for u in carried) + unit[2] <= passage_tokens else []
        current.append(unit)
    if current:
        passages.append(_join(current))
    return passages


def _pieces(paragraph, count_tokens, encode, decode, limit):
    if count_tokens(paragraph) <= limit:
        return [paragraph]
    pieces = []
    for sentence in SENTENCE_END.split(paragraph):
        if count_tokens(sentence) <= limit:
            pieces.append(sentence)
        else:
            ids = encode(sentence)
            pieces += [decode(ids[i:i + limit]).strip() for i in range(0, len(ids), limit)]
    return [p for p in pieces if p]


def _join(units) -> str:
    text = units[0][1]
    for separator, unit, _ in units[1:]:
        text += separator + unit
    return text
