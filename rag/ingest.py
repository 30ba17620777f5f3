"""Ingestion inputs: documents from .txt/.md/.jsonl/.pdf/.html files, folders and records, with errors named by
place."""
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from .document_readers import READERS
from .filters import check_metadata
from .ingest_types import Document, InputError

if TYPE_CHECKING:
    from .ingest_cost import IngestEstimate

SUFFIXES = (".txt", ".md", ".jsonl", *READERS)


@dataclass(frozen=True)
class Fields:
    """JSONL field names of the id, title and text."""
    id: str = "id"
    title: str = "title"
    text: str = "text"


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    passages: int = 0          # passages written in this run
    prefilled: int = 0         # of which KV chunks were computed (the rest were already on disk)
    tokens: int = 0
    kv_bytes: int = 0
    seconds: float = 0.0
    began: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)   # files in folders given that are not .txt, .md or .jsonl
    estimate: "IngestEstimate | None" = None            # what it was to cost, known before it started

    @property
    def documents(self) -> int:
        return len(self.added) + len(self.updated)

    def add(self, other: "IngestReport") -> None:
        """Counts another run's results in this one."""
        self.added += other.added
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.errors += other.errors
        self.skipped += other.skipped
        self.passages += other.passages
        self.prefilled += other.prefilled
        self.tokens += other.tokens
        self.kv_bytes += other.kv_bytes
        self.seconds += other.seconds

    def summary(self) -> str:
        rate = self.prefilled / self.seconds if self.seconds else 0.0
        line = (f"{self.documents} documents ingested ({len(self.added)} new, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged), {self.passages} passages, {self.tokens} tokens, "
                f"KV {self.kv_bytes / 2**20:.1f} MiB, {self.seconds:.1f} s ({rate:.2f} passages/s prefilled)")
        if self.errors:
            line += f"; {len(self.errors)} inputs failed"
        if self.skipped:
            line += f"; {len(self.skipped)} files skipped"
        return line


def read_paths(paths: Iterable[Path | str], fields: Fields = Fields(),
               skipped: list[str] | None = None) -> Iterator[Document | InputError]:
    """Documents from files and folders (recursively: .txt, .md, .jsonl, .pdf, .html, .htm). A file's id is its
    path inside the folder given, or its name when given directly; a JSONL file holds one record a line, a PDF one
    document a page, an HTML file one a section (rag/document_readers.py). The other files found in
    folders are not read: their paths go to `skipped` (a file of another type given directly is an error)."""
    for root in map(Path, paths):
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file())
            if skipped is not None:
                skipped += [str(p) for p in files if p.suffix.lower() not in SUFFIXES]
            for file in (p for p in files if p.suffix.lower() in SUFFIXES):
                yield from read_file(file, file.relative_to(root).as_posix(), fields)
        elif root.exists():
            if root.suffix.lower() not in SUFFIXES:
                yield InputError(str(root), f"unsupported file type {root.suffix or '(none)'!r}; "
                                            f"use {', '.join(SUFFIXES)}")
            else:
                yield from read_file(root, root.name, fields)
        else:
            yield InputError(str(root), "no such file or folder")


def skipped_message(skipped: list[str], shown: int = 10) -> str:
    """One line naming the files skipped in folders (the first `shown` of them)."""
    names = ", ".join(skipped[:shown]) + (f" and {len(skipped) - shown} more" if len(skipped) > shown else "")
    files = "1 file" if len(skipped) == 1 else f"{len(skipped)} files"
    return f"skipped {files} in the folders given, not of a type ingested ({', '.join(SUFFIXES)}): {names}"


def read_file(path: Path, doc_id: str, fields: Fields) -> Iterator[Document | InputError]:
    if path.suffix.lower() in READERS:
        yield from READERS[path.suffix.lower()](path, doc_id)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        yield InputError(str(path), f"cannot read: {exc}")
        return
    if path.suffix.lower() == ".jsonl":
        yield from read_jsonl(text.splitlines(), str(path), fields)
    else:
        yield from records([{"id": doc_id, "title": _title(path, text), "text": text}], Fields(), str(path),
                           source=str(path))


def read_jsonl(lines: Iterable[str], where: str, fields: Fields) -> Iterator[Document | InputError]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield InputError(f"{where}:{number}", f"invalid JSON: {exc.msg}")
            continue
        yield from records([record], fields, f"{where}:{number}", source=where)


def records(items: Iterable[dict], fields: Fields = Fields(), where: str = "record",
            source: str | None = None) -> Iterator[Document | InputError]:
    """Documents from dicts with id, title (optional) and text fields; numbered by position in `where`."""
    for number, record in enumerate(items, 1):
        place = where if where != "record" else f"record {number}"
        if not isinstance(record, dict):
            yield InputError(place, "not a JSON object")
            continue
        doc_id, title, text = record.get(fields.id), record.get(fields.title) or "", record.get(fields.text)
        try:
            metadata = check_metadata(record.get("metadata"))
        except ValueError as exc:
            yield InputError(place, f"document {doc_id}: {exc}")
            continue
        if doc_id is None or str(doc_id).strip() == "":
            yield InputError(place, f"missing document id (field {fields.id!r})")
        elif not isinstance(text, str):
            yield InputError(place, f"document {doc_id}: missing text (field {fields.text!r})")
        elif not text.strip():
            yield InputError(place, f"document {doc_id}: empty text")
        else:
            yield Document(str(doc_id), str(title).strip(), text.strip(), source, metadata)


def _title(path: Path, text: str) -> str:
    if path.suffix.lower() == ".md":
        for line in text.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return path.stem
