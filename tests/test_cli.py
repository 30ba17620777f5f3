"""The `cascade-rag` command: the whole flow, clear one-line errors for bad input, the demo."""
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "rag.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result, text):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cascade-rag: error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr


def test_ingest_ask_delete_with_a_small_model(tmp_path, tiny_model):
    data = tmp_path / "data"
    result = cli("ingest", ROOT / "samples" / "docs", "--data-dir", data, "--model", tiny_model, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "3 documents ingested (3 new, 0 updated, 0 unchanged)" in result.stdout
    result = cli("ask", "Who founded Brightwater Ferries?", "--data-dir", data, "--model", tiny_model,
                 "--max-tokens", "4", "--top-k", "2", "--mode", "full")
    assert result.returncode == 0, result.stderr
    assert "Sources:\n  1. company.md  [Brightwater Ferries]" in result.stdout
    assert "Timings (full): retrieval" in result.stdout and "time to first token" in result.stdout
    result = cli("delete", "company.md", "nope.md", "--data-dir", data)
    assert "deleted 1 documents: company.md" in result.stdout
    assert_one_line_error(result, "no such documents: nope.md")


def test_bad_inputs_give_one_line_errors(tmp_path):
    data = tmp_path / "data"
    assert_one_line_error(cli("ingest", tmp_path / "missing.txt", "--data-dir", data), "missing.txt: no such file")
    assert_one_line_error(cli("ask", "why?", "--data-dir", data, "--top-k", "0"), "top_k must be at least 1")
    assert_one_line_error(cli("ask", "  ", "--data-dir", data), "the question is empty")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "1", "question": "q", "answers": ["a"], "gold_doc_ids": []}\n{oops\n')
    assert_one_line_error(cli("eval", "--questions", questions, "--corpus", questions, "--modes", "cached"),
                          f"{questions}:2: invalid JSON")
    assert_one_line_error(cli("eval", "--questions", questions, "--corpus", questions, "--modes", "fast"),
                          "--modes must list some of cached, full, blend")
    result = cli("ingest", "--data-dir", data)
    assert result.returncode == 2 and "the following arguments are required: PATH" in result.stderr


def test_second_writer_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rag.store import Store; "
                               "s = Store(sys.argv[1]); s.lock_for_writing(); print('locked', flush=True); "
                               "time.sleep(60)", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_one_line_error(cli("ingest", ROOT / "samples" / "docs", "--data-dir", tmp_path),
                              "is being written by another process")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_demo_streams_answers_with_sources_and_timings():
    result = cli("demo", "--max-tokens", "6", timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Sources:") == 3 and result.stdout.count("Timings (cached)") == 3
    assert "3 documents ingested" in result.stdout


def test_ask_mode_choices_are_the_engine_modes():
    """The parser lists the modes itself (it must not import torch); they must stay the engine's."""
    import argparse
    from engine import MODES
    from rag.cli import parser
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    mode = next(a for a in sub.choices["ask"]._actions if a.dest == "mode")
    assert tuple(mode.choices) == MODES
