"""Smoke test of the step-time benchmark on the tiniest sizes (times are not asserted)."""

import pytest
import torch

from rlsd_min.lab.bench import PHASES, format_table, peak_memory_mb, step_times, summarize
from rlsd_min.lab.bench_scaling import format_scaling, scaling_times, summarize_scaling
from rlsd_min.config import train_config


def test_bench_runs_every_requested_method_on_the_same_batch():
    times = step_times(("grpo", "rlsd", "sdpg"), profile="ci", rounds=2, warmup=0, progress=False)
    ci = train_config("ci")
    n_rows = ci.prompts_per_step * ci.group_size
    assert set(times) == {"grpo", "rlsd", "sdpg"}
    steps = {m: t["rounds"] for m, t in times.items()}
    assert all(len(s) == 2 and all(r["step_time_s"] > 0 for r in s) for s in steps.values())
    for rounds in steps.values():
        for s in rounds:  # the phases that ran tile the step
            parts = sum(v for k, v in s.items() if k.startswith("time_"))
            assert parts == pytest.approx(s["step_time_s"], rel=1e-9)
            assert {k for k in s if k.startswith("time_")} <= set(PHASES)
            # throughput = the rollout's completion tokens over the sampling phase
            assert s["sample_tok_s"] == pytest.approx(s["completion_len"] * n_rows / s["time_sample_s"])
    # a phase that did not run is absent, not a zero: GRPO has no teacher and no reference model
    assert "time_teacher_s" not in steps["grpo"][0] and "time_ref_s" not in steps["grpo"][0]
    assert "time_ref_s" not in steps["rlsd"][0] and {"time_teacher_s", "time_ref_s"} <= set(steps["sdpg"][0])
    # on top of GRPO's step, SDPG holds the teacher's logits and the reference log-probs
    assert 0 < times["grpo"]["peak_mem_mb"] < times["sdpg"]["peak_mem_mb"]
    rows = summarize(times)
    assert rows[0]["method"] == "grpo" and rows[0]["ratio"] == 1.0
    assert all(r["sample_tok_s_min"] <= r["sample_tok_s"] <= r["sample_tok_s_max"] for r in rows)
    table = format_table(rows)
    assert "| rlsd |" in table and "sample tok/s" in table and "peak MiB" in table


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_peak_memory_counts_what_a_step_allocates_above_its_start(device):
    device = torch.device(device)
    held = torch.ones(8 * 2**20, device=device)  # 32 MiB allocated before the step: not counted

    def step():
        x = torch.ones(16 * 2**20, device=device)  # 64 MiB
        y = x * 2                                  # + 64 MiB: the peak, 128 MiB
        del x
        z = y + 1                                  # 64 + 64 again
        del y, z

    assert peak_memory_mb(step, device) == pytest.approx(128, abs=0.5)
    assert peak_memory_mb(lambda: None, device) == 0
    del held


def test_cpu_peak_memory_does_not_see_frees_of_tensors_made_before_it():
    held = [torch.ones(16 * 2**20)]  # 64 MiB, made before the window

    def step():
        held.pop()                      # freed inside: the profiler never saw it allocated
        torch.ones(16 * 2**20).add_(1)  # 64 MiB allocated and freed

    assert peak_memory_mb(step, torch.device("cpu")) == pytest.approx(64, abs=0.5)  # CUDA would say 0


def test_peak_memory_gives_stderr_back_and_refuses_other_devices():
    import os

    before = os.fstat(2)

    def fails():
        raise RuntimeError("inside the step")

    with pytest.raises(RuntimeError, match="inside the step"):
        peak_memory_mb(fails, torch.device("cpu"))
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # fd 2 is stderr again
    with pytest.raises(ValueError, match="'meta'"):
        peak_memory_mb(lambda: None, torch.device("meta"))


def test_bench_bad_input():
    with pytest.raises(ValueError, match="'nope'"):
        step_times(("grpo", "nope"), profile="ci", rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        step_times(("grpo",), profile="ci", rounds=0)


def test_trl_mode_without_trl_says_how_to_install_it(monkeypatch):
    import builtins

    from rlsd_min.lab.bench_trl import require_trl

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
        assert all(len(t["rounds"]) == 1 and t["rounds"][0]["step_time_s"] > 0 for t in times[axis].values())
    for n in TINY_AXES["length"]:  # the axis really sets max_new_tokens
        assert times["length"][("grpo", n)]["rounds"][0]["completion_len"] <= n
    small, large = (times["model"][("grpo", s)]["params"] for s in ("0.5M", "2M"))
    assert 0.4e6 < small < 0.6e6 and 3.5 < large / small < 4.5
    for axis in ("group", "model"):  # twice the rows, four times the weights: more memory
        lo, hi = (times[axis][("grpo", v)]["peak_mem_mb"] for v in TINY_AXES[axis])
        assert 0 < lo < hi
    rows = summarize_scaling(times)
    assert len(rows) == sum(2 * len(v) for v in TINY_AXES.values())
    firsts = [r for r in rows if r["value"] == TINY_AXES[r["axis"]][0]]
    assert len(firsts) == 8 and all(r["ratio"] == 1.0 for r in firsts)
    table = format_scaling(rows)
    assert "| group | 4 | rlsd |" in table and "| flags | bf16_autocast | grpo |" in table and "peak MiB" in table


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
    from rlsd_min.lab.bench_trl import format_comparison

    text = format_comparison({"trl": [1.0, 2.0, 4.0], "ours": [0.9, 0.2, 4.0]})
    assert "ours / TRL per step: 0.90 0.10 1.00" in text
    assert "(median of per-step ratios): 0.90" in text  # not 0.45, the ratio of the medians


def test_forward_flops_match_torchs_flop_counter(tiny_model):
    """rlsd_min.lab.limits.forward_flops against torch's own count of a forward's matrix
    products: the weight products alone (SDPA's CPU kernel is not counted by torch), then with
    eager attention, whose scores and weighted sum are counted over the full S x S."""
    from torch.utils.flop_counter import FlopCounterMode

    from rlsd_min.lab.limits import forward_flops

    def products(model, ids):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(input_ids=ids)
        return sum(v for k, v in counter.get_flop_counts()["Global"].items()
                   if str(k).split(".")[-1] in ("mm", "addmm", "bmm"))

    model = tiny_model()
    B, S = 3, 10
    ids = torch.randint(4, model.config.vocab_size, (B, S))
    assert products(model, ids) == forward_flops(model.config, B * S, context=0)
    model.set_attn_implementation("eager")
    assert products(model, ids) == forward_flops(model.config, B * S, context=S)


def test_phase_flops_add_the_parts_and_the_backward():
    from types import SimpleNamespace

    from rlsd_min.lab.limits import forward_flops, phase_flops

    cfg = SimpleNamespace(hidden_size=8, intermediate_size=16, num_hidden_layers=2, vocab_size=5)
    f = phase_flops(cfg, n_prompts=2, group_size=3, prompt_len=4, completion_len=6)
    assert f["sample"] == forward_flops(cfg, 6 * 4, 2) + forward_flops(cfg, 6 * 6, 7)
    assert f["update"] == 3 * (forward_flops(cfg, 2 * 4, 2) + forward_flops(cfg, 6 * 6, 7))


def test_the_vocab_bench_sees_the_chunked_step_hold_less_than_the_whole_logits(monkeypatch):
    from rlsd_min.lab import bench_vocab

    monkeypatch.setattr(bench_vocab, "VOCAB", 8192)                              # smaller, the same code
    model = bench_vocab.vocab_model()
    for method in ("grpo", "sdpg"):
        chunked = bench_vocab.step_peak(model, method, 2 ** 23)                 # 8 MiB: 2 rows a chunk
        whole = bench_vocab.step_peak(model, method, bench_vocab.WHOLE)
        assert 0 < chunked < 0.6 * whole, (method, chunked, whole)
    assert "| sdpg | 1 | 4 | 0.25 |" in bench_vocab.format_vocab({"sdpg": (1.0, 4.0)})
    with pytest.raises(ValueError, match="unknown method"):
        bench_vocab.vocab_peaks(("nope",))
