"""PDF and HTML ingestion: the tests' own fixtures (a PDF made here with matplotlib, an HTML page) read into
documents with their pages and headings as metadata, ingested and answered by the embedded model; unreadable
files named in the error."""
from pathlib import Path

import pytest

from cascade_rag.engine import SamplingParams
from cascade_rag.rag.document_readers import read_html, read_pdf
from cascade_rag.rag.ingest import InputError, read_paths
from cascade_rag.rag.pipeline import RAG

PAGES = [["Brightwater harbour annual report.", "The harbour opened in 1902 on the north shore."],
         ["The first harbour master of Brightwater was Iona Pell.", "She kept the tide tables for thirty years."]]
HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Kestrel Valley Railway</title>
<script>var tracking = "do not index me";</script><style>p { color: red }</style></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<p>An introduction before any heading.</p>
<h1>History</h1><p>The Kestrel Valley Railway was opened in 1874 by the engineer <b>Tomas Greer</b>.</p>
<h2>Closure</h2><ul><li>Passenger trains stopped in 1961.</li><li>Freight lasted until 1968.</li></ul>
<h1>Today</h1><p>Volunteers run steam trains on Sundays from the station at Marrow Bridge.</p>
<footer>Copyright the railway society</footer></body></html>"""


def write_pdf(path: Path, pages: list[list[str]], title: str = "Harbour report") -> Path:
    """A PDF of text pages, written with matplotlib's PDF backend and the standard PDF fonts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages
    with plt.rc_context({"pdf.use14corefonts": True}), PdfPages(path, metadata={"Title": title}) as pdf:
        for lines in pages:
            figure = plt.figure(figsize=(8.27, 11.69))
            for n, line in enumerate(lines):
                figure.text(0.1, 0.9 - 0.04 * n, line, fontsize=12)
            pdf.savefig(figure)
            plt.close(figure)
    return path


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fixtures")
    write_pdf(folder / "report.pdf", PAGES)
    (folder / "railway.html").write_text(HTML)
    return folder


def test_a_pdf_gives_one_document_a_page(fixtures):
    documents = list(read_pdf(fixtures / "report.pdf", "report.pdf"))
    assert [d.id for d in documents] == ["report.pdf#page=1", "report.pdf#page=2"]
    assert documents[1].title == "Harbour report (page 2)" and "Iona Pell" in documents[1].text
    assert documents[1].metadata == {"file": "report.pdf", "page": "2", "pages": "2"}


def test_html_gives_one_document_a_section_with_its_headings(fixtures):
    documents = {d.id: d for d in read_html(fixtures / "railway.html", "railway.html")}
    assert list(documents) == [f"railway.html#section-{n}" for n in range(4)]
    intro, history, closure, today = documents.values()
    assert intro.text == "An introduction before any heading." and "heading" not in intro.metadata
    assert history.metadata["heading"] == "History" and history.title == "Kestrel Valley Railway - History"
    assert "engineer Tomas Greer." in history.text  # inline tags inside a sentence keep it whole
    assert closure.metadata["heading"] == "History > Closure"
    assert closure.text == "Passenger trains stopped in 1961.\n\nFreight lasted until 1968."
    assert today.metadata == {"file": "railway.html", "section": "3", "heading": "Today"}
    text = " ".join(d.text for d in documents.values())
    assert "tracking" not in text and "Home" not in text and "Copyright" not in text and "color" not in text


def test_unreadable_files_are_errors_naming_the_file(tmp_path):
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not a PDF at all")
    write_pdf(tmp_path / "blank.pdf", [[]])
    (tmp_path / "empty.html").write_text("<html><head><title>t</title><script>x()</script></head><body></body></html>")
    errors = [item for item in read_paths([tmp_path]) if isinstance(item, InputError)]
    by_file = {Path(e.where).name: e.message for e in errors}
    assert by_file["broken.pdf"].startswith("cannot read this PDF")
    assert by_file["blank.pdf"].startswith("no text could be extracted")
    assert by_file["empty.html"] == "no text found in this HTML file"
    assert all(str(tmp_path) in e.where for e in errors)


def test_pdf_and_html_are_ingested_and_answerable(fixtures, tmp_path):
    with RAG(tmp_path / "data", passage_tokens=64, overlap=8) as rag:
        report = rag.ingest([fixtures])
        assert not report.errors and len(report.added) == 6
        documents = {d["id"]: d for d in rag.documents()}
        assert documents["report.pdf#page=2"]["metadata"]["page"] == "2"
        sources = rag.retrieve("Who was the first harbour master of Brightwater?", top_k=1)
        assert sources[0].doc_id == "report.pdf#page=2" and sources[0].metadata["page"] == "2"
        answer = rag.ask("Who was the first harbour master of Brightwater?", top_k=2,
                         params=SamplingParams(max_new_tokens=24)).result()
        assert "Iona Pell" in answer.text, answer.text
        answer = rag.ask("Who opened the Kestrel Valley Railway?", top_k=2,
                         params=SamplingParams(max_new_tokens=24)).result()
        assert "History" in [s.metadata.get("heading") for s in answer.sources] and "Greer" in answer.text, answer.text

