"""Smoke test of the step-time benchmark on the tiniest sizes (times are not asserted)."""

import os

import pytest
import torch

from rlsd_min.bench import PHASES, format_table, peak_memory_mb, reset_peak_memory, step_times, summarize
from rlsd_min.bench_scaling import format_scaling, scaling_times, summarize_scaling


def test_bench_runs_every_requested_method_on_the_same_batch():
    times = step_times(("grpo", "rlsd", "sdpg"), profile="ci", rounds=2, warmup=0, progress=False)
    assert set(times) == {"grpo", "rlsd", "sdpg"}
    assert all(len(steps) == 2 and all(s["step_time_s"] > 0 for s in steps) for steps in times.values())
    for steps in times.values():  # the phases add up to the step (what is left is bookkeeping)
        for s in steps:
            parts = sum(s[k] for k in PHASES)
            assert 0 < parts <= s["step_time_s"] + 1e-9
    for steps in times.values():  # throughput = the rollout's completion tokens over the sampling phase
        for s in steps:
            tokens = s["completion_len"] * 4 * 4  # ci profile: 4 prompts x G = 4
            assert s["sample_tok_s"] == pytest.approx(tokens / s["time_sample_s"])
    rows = summarize(times)
    assert rows[0]["method"] == "grpo" and rows[0]["ratio"] == 1.0
    assert all(r["sample_tok_s"] > 0 for r in rows)
    table = format_table(rows)
    assert "| rlsd |" in table and "sample tok/s" in table
    if os.path.exists("/proc/self/clear_refs"):  # Linux: the CPU peak is measured too
        assert all(r["peak_mem_mb"] > 0 for r in rows) and "peak MiB" in table


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="the CPU peak needs Linux's /proc")
def test_cpu_peak_memory_window_sees_an_allocation_and_is_reset():
    cpu = torch.device("cpu")
    assert reset_peak_memory(cpu)
    before = peak_memory_mb(cpu)
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    x.add_(1)
    del x
    peak = peak_memory_mb(cpu)
    assert peak - before >= 60  # the freed block still counts in the window's peak
    assert reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < peak - 50  # a new window starts from the current, smaller RSS


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


TINY_AXES = {"group": (2, 4), "length": (4, 8), "model": ("0.5M", "2M"), "flags": ("off", "bf16_autocast")}


def test_scaling_smoke_on_the_tiniest_sizes():
    times = scaling_times(tuple(TINY_AXES), ("grpo", "rlsd"), profile="ci", rounds=1, warmup=0,
                          values=TINY_AXES, progress=False)
    assert list(times) == list(TINY_AXES)
    for axis, values in TINY_AXES.items():
        assert set(times[axis]) == {(m, v) for m in ("grpo", "rlsd") for v in values}
        assert all(len(steps) == 1 and steps[0]["step_time_s"] > 0 for steps in times[axis].values())
    for n in TINY_AXES["length"]:  # the axis really sets max_new_tokens
        assert times["length"][("grpo", n)][0]["completion_len"] <= n
    small, large = (times["model"][("grpo", s)][0]["params"] for s in ("0.5M", "2M"))
    assert 0.4e6 < small < 0.6e6 and 3.5 < large / small < 4.5
    rows = summarize_scaling(times)
    assert len(rows) == sum(2 * len(v) for v in TINY_AXES.values())
    firsts = [r for r in rows if r["value"] == TINY_AXES[r["axis"]][0]]
    assert len(firsts) == 8 and all(r["ratio"] == 1.0 for r in firsts)
    table = format_scaling(rows)
    assert "| group | 4 | rlsd |" in table and "| flags | bf16_autocast | grpo |" in table


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(axes=("group",), values={"group": (1, 4)}), r"group_size must be >= 2 .*got 1"),
    (dict(axes=("model",), values={"model": ("7B",)}), "'7B'"),
    (dict(axes=("length",), values={"length": (0,)}), r"max_new_tokens must be >= 1, got 0"),
    (dict(axes=("depth",)), "'depth'"),
    (dict(axes=("group",), methods=("nope",)), "'nope'"),
    (dict(axes=("group",), rounds=0), "rounds"),
])
def test_scaling_bad_input_is_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        scaling_times(profile="ci", progress=False, **kwargs)


def test_trl_comparison_ratio_is_the_median_of_per_step_ratios():
    from rlsd_min.bench_trl import format_comparison

    text = format_comparison({"trl": [1.0, 2.0, 4.0], "ours": [0.9, 0.2, 4.0]})
    assert "ours / TRL per step: 0.90 0.10 1.00" in text
    assert "(median of per-step ratios): 0.90" in text  # not 0.45, the ratio of the medians
