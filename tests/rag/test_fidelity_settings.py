"""The settings `cascade-rag eval` measures side by side (rag.fidelity.parse_setting): names to engine options, and
a clear error for a name that is not one."""
import pytest

from cascade_rag.engine import Recompute
from cascade_rag.rag.fidelity import parse_setting


def test_settings_name_their_options():
    assert parse_setting("cached:t1.0").temperature == 1.0
    assert parse_setting("blend:none").recompute == Recompute(None, 0)
    assert parse_setting("blend:0.15+first16").recompute == Recompute(0.15, 16)
    assert parse_setting("blend:first64").recompute == Recompute(None, 64)
    assert parse_setting("blend:first64w512").recompute == Recompute(None, 64, 512)
    assert parse_setting(" full ").mode == "full" and parse_setting("full").recompute is None


@pytest.mark.parametrize("name,problem", [
    ("blend:first64wide", "first<N>w<W>"),
    ("blend:0.15+first16w8", "EPIC's prefixes alone"),
    ("blend:first16w-4", "at least 0 positions"),
    ("blend:1.5", "within \\[0, 1\\]"),
    ("cached:first16", "cached takes no"),
    ("stale", "unknown mode"),
])
def test_a_bad_setting_is_named_in_its_error(name, problem):
    with pytest.raises(ValueError, match=problem) as caught:
        parse_setting(name)
    assert repr(name) in str(caught.value)
