"""Readers of PDF (pypdf) and HTML (BeautifulSoup) files into documents, as LangChain's and LlamaIndex's loaders
cut them: a PDF gives one document a page (id `FILE#page=N`, metadata page, pages, file), an HTML page one
document a section under each heading (id `FILE#section-N`, metadata heading: the path of headings, section,
file). A file that cannot be read, or holds no text, is an InputError naming it."""
import logging
import re
from pathlib import Path
from typing import Iterator

from bs4 import BeautifulSoup
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from .ingest_types import Document, InputError

HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
BLOCKS = ["p", "div", "li", "pre", "blockquote", "tr", "br", "dt", "dd", "figcaption", "section", "article",
          "table", "ul", "ol", "main"]
DROPPED = ["script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "svg"]
BREAK, HEADING = "\x00", "\x01"
logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about odd but readable files


def read_pdf(path: Path, doc_id: str) -> Iterator[Document | InputError]:
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            yield InputError(str(path), "the PDF is encrypted with a password; decrypt it first")
            return
        pages = [page.extract_text() or "" for page in reader.pages]
        title = ((reader.metadata.title if reader.metadata else None) or path.stem).strip()
    except (PyPdfError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        yield InputError(str(path), f"cannot read this PDF: {type(exc).__name__}: {exc}")
        return
    found = False
    for number, text in enumerate(pages, 1):
        text = _tidy(text)
        if text:
            found = True
            yield Document(f"{doc_id}#page={number}", f"{title} (page {number})", text, str(path),
                           {"file": doc_id, "page": str(number), "pages": str(len(pages))})
    if not found:
        yield InputError(str(path), f"no text could be extracted from its {len(pages)} pages (a scanned PDF needs "
                                    f"OCR first)")


def read_html(path: Path, doc_id: str) -> Iterator[Document | InputError]:
    try:
        soup = BeautifulSoup(path.read_bytes(), "html.parser")
    except (OSError, ValueError, AssertionError) as exc:
        yield InputError(str(path), f"cannot read this HTML file: {exc}")
        return
    title = (soup.title.get_text(" ", strip=True) if soup.title else "") or path.stem
    for tag in soup.find_all(DROPPED + ["title", "head"]):
        tag.decompose()
    for tag in soup.find_all(HEADINGS):
        tag.replace_with(f"{BREAK}{HEADING}{tag.name[1]}{tag.get_text(' ', strip=True)}{BREAK}")
    for tag in soup.find_all(BLOCKS):
        tag.insert_before(BREAK)
        tag.insert_after(BREAK)
    sections, path_of_headings = [(None, [])], []
    for block in re.sub(r"\s+", " ", soup.get_text("")).split(BREAK):
        block = block.strip()
        if block.startswith(HEADING):
            level, text = int(block[1]), block[2:].strip()
            path_of_headings = [h for h in path_of_headings if h[0] < level] + [(level, text)]
            sections.append((" > ".join(h[1] for h in path_of_headings), []))
        elif block:
            sections[-1][1].append(block)
    found = False
    for number, (heading, paragraphs) in enumerate(sections):
        if paragraphs:
            found = True
            metadata = {"file": doc_id, "section": str(number), **({"heading": heading} if heading else {})}
            yield Document(f"{doc_id}#section-{number}", f"{title} - {heading}" if heading else title,
                           "\n\n".join(paragraphs), str(path), metadata)
    if not found:
        yield InputError(str(path), "no text found in this HTML file")


def _tidy(text: str) -> str:
    """Text extracted from a PDF page: lines kept, runs of spaces and of blank lines collapsed."""
    text = re.sub(r"[ \t\f\v]+", " ", text.replace("\r", ""))
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


READERS = {".pdf": read_pdf, ".html": read_html, ".htm": read_html}
