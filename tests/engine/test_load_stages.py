"""The load-stage benchmark on the CPU: real chunk files, every stage and the streamer's own load timed at each
thread count, the bytes those of the files."""
import json

import pytest

from cascade_rag.benchmarks import load_stages


def test_every_stage_is_timed_at_every_thread_count(tmp_path, capsys):
    out = tmp_path / "stages.json"
    assert load_stages.main(["--shape", "smollm2-135m", "--tokens", "40", "--chunks", "2", "--format", "fp8",
                             "--threads", "1,2", "--block-bytes", str(64 << 10), "--device", "cpu", "--repeat", "1",
                             "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["threads"] for r in result["rows"]] == [1, 2] and result["format"] == "fp8"
    for row in result["rows"]:
        assert set(row["gb_per_s"]) == set(load_stages.STAGES) and all(v > 0 for v in row["gb_per_s"].values())
        assert row["bytes"] > 2 * 40 * 30 * 3 * 64 * 2  # two chunks of 30 layers x 3 KV heads x 64, K and V, fp8
    assert "| 2 |" in capsys.readouterr().out


def test_bad_counts_are_refused():
    with pytest.raises(SystemExit):
        load_stages.main(["--threads", "0", "--device", "cpu"])
