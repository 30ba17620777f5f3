"""What ingestion reads: documents, and the inputs that could not be read, named by place."""
from dataclasses import dataclass, field


@dataclass
class Document:
    id: str
    title: str
    text: str
    source: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)   # string keys to string values, for filters


@dataclass
class InputError:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"
