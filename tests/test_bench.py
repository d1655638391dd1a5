"""Smoke test of the step-time benchmark on the tiniest sizes (times are not asserted)."""

import pytest

from rlsd_min.bench import PHASES, format_table, step_times, summarize


def test_bench_runs_every_requested_method_on_the_same_batch():
    times = step_times(("grpo", "rlsd", "sdpg"), profile="ci", rounds=2, warmup=0, progress=False)
    assert set(times) == {"grpo", "rlsd", "sdpg"}
    assert all(len(steps) == 2 and all(s["step_time_s"] > 0 for s in steps) for steps in times.values())
    for steps in times.values():  # the phases add up to the step (what is left is bookkeeping)
        for s in steps:
            parts = sum(s[k] for k in PHASES)
            assert 0 < parts <= s["step_time_s"] + 1e-9
    rows = summarize(times)
    assert rows[0]["method"] == "grpo" and rows[0]["ratio"] == 1.0
    assert "| rlsd |" in format_table(rows)


def test_bench_bad_input():
    with pytest.raises(ValueError, match="'nope'"):
        step_times(("grpo", "nope"), profile="ci", rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        step_times(("grpo",), profile="ci", rounds=0)


def test_trl_mode_without_trl_says_how_to_install_it(monkeypatch):
    import builtins

    from rlsd_min.bench_trl import require_trl

    real_import = builtins.__import__

    def no_trl(name, *args, **kwargs):
        if name == "trl":
            raise ImportError("No module named 'trl'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trl)
    with pytest.raises(SystemExit, match=r"pip install '\.\[bench\]'"):
        require_trl()
