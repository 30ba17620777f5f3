"""The recompute benchmark on the CPU with a tiny checkpoint: a real run of every setting asked for, with other
kernel launch settings (kernels.options.tuned) for all or for one setting (@), and each setting's costliest
operators (kernel_profile)."""
import json

import pytest

from cascade_rag.benchmarks import recompute_bench
from cascade_rag.kernels.options import DEFAULT_KERNELS, tuned


def test_a_run_times_and_profiles_every_setting(tmp_path, tiny_model, capsys):
    out = tmp_path / "r.json"
    assert recompute_bench.main(["--model", str(tiny_model), "--device", "cpu",
                                 "--dtype", "fp32", "--contexts", "300", "--settings",
                                 "blend:first8w64,blend:first8w64@windowed_prefill.block_n=64",
                                 "--repeat", "1", "--profile", "3", "--tuning", "windowed_prefill.min_split=256",
                                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert set(row["ttft_ms"]) == set(row["kernels_us"]) == {"full", "cached", "blend:first8w64",
                                                             "blend:first8w64@windowed_prefill.block_n=64"}
    for k in row["kernels_us"].values():
        assert 0 < len(k["top"]) <= 3 and all(e["us"] > 0 and e["launches"] >= 1 for e in k["top"])
        assert k["total_us"] >= sum(e["us"] for e in k["top"]) and k["launches"] >= len(k["top"])
    assert result["tuning"] == ["windowed_prefill.min_split=256"]
    assert "blend:first8w64:" in capsys.readouterr().out


def test_bad_launch_settings_of_a_setting_are_refused_before_running(tiny_model):
    with pytest.raises(SystemExit):
        recompute_bench.main(["--model", str(tiny_model), "--device", "cpu", "--contexts", "300",
                              "--settings", "blend:first8@prefill.speed=1"])


def test_tuned_settings_and_their_errors():
    options = tuned(DEFAULT_KERNELS, ["windowed_prefill.min_split=256", "prefill.programs_per_sm=4"])
    assert options.windowed_prefill.min_split == 256 and options.prefill.programs_per_sm == 4
    assert options.limited_prefill == DEFAULT_KERNELS.limited_prefill
    for bad, message in (("nope.min_split=1", "unknown kernel 'nope'"), ("prefill.speed=1", "no setting 'speed'"),
                         ("prefill.block_n=big", "not a whole number"), ("pdl.x=1", "unknown kernel 'pdl'"),
                         ("decode.min_split=0", "at least 1")):
        with pytest.raises(ValueError, match=message):
            tuned(DEFAULT_KERNELS, [bad])
