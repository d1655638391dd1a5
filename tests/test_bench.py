"""Smoke test of the step-time benchmark on the tiniest sizes (times are not asserted)."""

import pytest

from rlsd_min.bench import format_table, step_times, summarize


def test_bench_runs_every_requested_method_on_the_same_batch():
    times = step_times(("grpo", "rlsd", "sdpg"), profile="ci", rounds=2, warmup=0, progress=False)
    assert set(times) == {"grpo", "rlsd", "sdpg"}
    assert all(len(ts) == 2 and all(t > 0 for t in ts) for ts in times.values())
    rows = summarize(times)
    assert rows[0]["method"] == "grpo" and rows[0]["ratio"] == 1.0
    assert "| rlsd |" in format_table(rows)


def test_bench_bad_input():
    with pytest.raises(ValueError, match="'nope'"):
        step_times(("grpo", "nope"), profile="ci", rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        step_times(("grpo",), profile="ci", rounds=0)
