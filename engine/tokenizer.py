"""Tokenizer, chat template and incremental detokenisation (text deltas that never split a character)."""
import json
from pathlib import Path

from transformers import AutoTokenizer

from .config import ModelLoadError


class Tokenizer:
    def __init__(self, folder: Path, config_eos: tuple[int, ...] = ()):
        try:
            self.hf = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer from {folder}: {exc}") from None
        eos = set(config_eos)
        if self.hf.eos_token_id is not None:
            eos.add(self.hf.eos_token_id)
        generation_config = Path(folder) / "generation_config.json"
        if generation_config.exists():
            value = json.loads(generation_config.read_text()).get("eos_token_id")
            eos.update(value if isinstance(value, list) else [] if value is None else [value])
        self.eos_token_ids = frozenset(eos)

    def encode(self, text: str) -> list[int]:
        """Template text: the special tokens written in it (`<|im_start|>`...) become control tokens."""
        return self.hf.encode(text, add_special_tokens=False)

    def encode_text(self, text: str) -> list[int]:
        """User text (a question, a document, a title): special tokens written in it are encoded as the plain text
        they are, so no input can produce a control token; only templates (encode) insert them."""
        return self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.hf.chat_template:
            raise ModelLoadError("the tokenizer has no chat template")
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


class TextStream:
    """Turns generated token ids into text deltas; holds back incomplete characters and possible stop strings.

    Each push decodes only the tokens since the last complete text, after the tokens of the text before it
    (whose decoding is subtracted, so word boundaries come out as in one decode of everything): a token costs
    the same however long the answer is."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] gave the latest complete text; ids[read:] none yet
        self.emitted = ""
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Adds a token; returns (delta, stopped). After a stop string the text ends before it."""
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        if after.endswith("\ufffd") or len(after) <= len(before):
            return "", False
        search_from = max(0, len(self.emitted) - self.hold)
        self.text += after[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return self._emit(len(self.text)), True
        return self._emit(len(self.text) - self.hold), False

    def finish(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= len(self.emitted):
            return ""
        delta = self.text[len(self.emitted):upto]
        self.emitted = self.text[:upto]
        return delta
