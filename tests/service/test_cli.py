"""The `cascade-rag` command: the whole flow, clear one-line errors for bad input, the demo."""
import subprocess
import sys

import pytest
from cascade_rag.engine import DEFAULT_MODE
from tests.helpers import ROOT




def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cascade_rag.rag.cli", *map(str, args)], cwd=ROOT, capture_output=True,
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
    assert "cosine: the passage's similarity to the question):\n  1. company.md  [Brightwater Ferries]  cosine " \
        in result.stdout
    assert "Timings (full): retrieval" in result.stdout and "time to first token" in result.stdout
    assert result.stderr == "", result.stderr  # no library's debug line (bm25s: "Building index from tokens")
    listed = cli("list", "--data-dir", data)
    assert listed.returncode == 0 and listed.stderr.strip() == "3 documents", listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["company.md", "policies.txt", "routes.md"]
    # all or nothing, like the gRPC call: an unknown id deletes nothing
    assert_one_line_error(cli("delete", "company.md", "nope.md", "--data-dir", data),
                          "no such documents: 'nope.md'; nothing was deleted")
    assert "company.md" in cli("list", "--data-dir", data).stdout
    result = cli("delete", "company.md", "--data-dir", data)
    assert result.returncode == 0 and "deleted 1 documents: company.md" in result.stdout
    assert "company.md" not in cli("list", "--data-dir", data).stdout


def test_read_only_commands_refuse_a_missing_or_empty_data_dir(tmp_path, tiny_model):
    """ask, list and delete never create a data directory, and ask never answers without documents."""
    missing = tmp_path / "typo"
    for args in (("ask", "Who founded Brightwater Ferries?", "--model", tiny_model), ("list",), ("delete", "x")):
        assert_one_line_error(cli(*args, "--data-dir", missing), f"data directory {missing} does not exist: "
                                                                 f"ingest documents first")
        assert not missing.exists()
    from cascade_rag.rag.store import Store
    Store(tmp_path / "empty").close()
    assert_one_line_error(cli("ask", "Who?", "--data-dir", tmp_path / "empty", "--model", tiny_model),
                          "has no documents: ingest documents first")


def test_every_option_has_help_that_states_its_real_default():
    import argparse
    import re
    from cascade_rag.rag.cli import COMMANDS, parser
    for command in COMMANDS:
        sub = next(a for a in parser([command])._actions if isinstance(a, argparse._SubParsersAction))
        sub_parser = sub.choices[command]
        for action in sub_parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{command} {action.dest} has no help"
            text = sub_parser._get_formatter()._expand_help(action)
            stated = re.search(r"\(default:? ([^ ;:)]+)", text)
            if stated and action.default is not None:
                value = stated.group(1)
                same = float(value) == action.default if isinstance(action.default, float) else \
                    value == str(action.default)
                assert same, (command, action.dest, text)


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
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cascade_rag.rag.store import Store; "
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
    assert result.stdout.count("Sources (in retrieval order") == 3 and result.stdout.count(f"Timings ({DEFAULT_MODE})") == 3
    assert "3 documents ingested" in result.stdout


def test_ask_mode_choices_are_the_engine_modes():
    """The parser lists the modes itself (it must not import torch); they must stay the engine's."""
    import argparse
    from cascade_rag.engine import MODES
    from cascade_rag.rag.cli import parser
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    mode = next(a for a in sub.choices["ask"]._actions if a.dest == "mode")
    assert tuple(mode.choices) == MODES
    from cascade_rag.rag.wire import MODE_TO_PROTO, PROTO_TO_MODE
    assert tuple(MODE_TO_PROTO) == MODES and set(PROTO_TO_MODE.values()) == {*MODES, None}  # None: the server's
