"""Prompt assembly into cascade levels: level 0 (template up to the documents), level 1 (one passage each),
level 2 (the rest of the system turn, the question, the assistant prefix)."""
from dataclasses import dataclass

DEFAULT_SYSTEM_PROMPT = "Answer the question using only the documents below. Answer briefly."
DOCUMENTS_MARK, QUESTION_MARK = "@@CASCADE-DOCUMENTS@@", "@@CASCADE-QUESTION@@"


@dataclass(frozen=True)
class PromptTemplate:
    level0: str            # chat-template text up to the first document
    before_question: str   # closing of the system turn and opening of the user turn
    after_question: str    # closing of the user turn and the assistant prefix

    @classmethod
    def from_tokenizer(cls, tokenizer, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> "PromptTemplate":
        """Renders the model's own chat template around placeholder marks and splits it there."""
        text = tokenizer.chat([{"role": "system", "content": f"{system_prompt}\nDocuments:{DOCUMENTS_MARK}"},
                               {"role": "user", "content": QUESTION_MARK}])
        if text.count(DOCUMENTS_MARK) != 1 or text.count(QUESTION_MARK) != 1:
            raise ValueError("the chat template does not keep the system and user messages verbatim")
        level0, rest = text.split(DOCUMENTS_MARK)
        if QUESTION_MARK in level0:
            raise ValueError("the chat template places the user message before the system message")
        before, after = rest.split(QUESTION_MARK)
        return cls(level0, before, after)

    @staticmethod
    def passage(title: str, text: str) -> str:
        """A passage's level-1 text: independent of the question and of its rank, so one stored chunk serves all."""
        return f"\n\n[{title}]\n{text}" if title else f"\n\n{text}"

    def query_ids(self, tokenizer, question: str) -> list[int]:
        """The level-2 token ids of a question: the template's pieces with their control tokens, the question as
        plain text (tokenizer.encode_text), so that it can never close a turn or open another."""
        return tokenizer.encode(self.before_question) + tokenizer.encode_text(question.strip()) + \
            tokenizer.encode(self.after_question)
