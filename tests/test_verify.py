"""The verification experiment: bad input refused before work, resume, summary and report."""

import json
import os

import pytest

from rlsd_min.lab.report import claims, compare
from rlsd_min.lab.experiment import experiment_config, run_experiment
from rlsd_min.lab.results import run_summary


@pytest.mark.parametrize("seeds", [0, -1, 1.5])
def test_seed_count_below_one_is_refused(seeds, tmp_path):
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        run_experiment(str(tmp_path / "r"), "ci", seeds, progress=False)
    assert not (tmp_path / "r").exists()


def test_unknown_method_task_or_profile_is_named():
    with pytest.raises(ValueError, match="'nope'"):
        experiment_config("ci", 1, methods=("grpo", "nope"))
    with pytest.raises(ValueError, match="'algebra'"):
        experiment_config("ci", 1, tasks=("algebra",))
    with pytest.raises(ValueError, match="'tpu'"):
        experiment_config("tpu", 1)


def test_a_task_without_enough_distinct_problems_is_refused_before_any_run(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="task 'split' cannot produce 500 distinct problems for prompts_per_step"):
        run_experiment(str(out), "ci", 1, methods=("grpo",), sets={"prompts_per_step": 500}, progress=False)
    assert not out.exists()


def test_runs_resume_and_a_different_experiment_is_refused(tmp_path):
    out = str(tmp_path / "r")
    summary = run_experiment(out, "ci", 1, methods=("grpo", "opsd"), progress=False)
    assert summary["runs"] == 4 and set(summary["table"]) == {"arith", "split"}
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "| OPSD |" in report and "floor_split.png" in report and os.path.exists(os.path.join(out, "floor_split.png"))
    metrics = os.path.join(out, "runs", "arith", "grpo", "seed0", "metrics.jsonl")
    before = os.path.getmtime(metrics)
    assert run_experiment(out, "ci", 1, methods=("grpo", "opsd"), progress=False)["runs"] == 4
    assert os.path.getmtime(metrics) == before              # finished runs are not trained again
    with pytest.raises(ValueError, match="different experiment.*repeat the command.*another --out"):
        run_experiment(out, "ci", 2, methods=("grpo", "opsd"), progress=False)
    assert json.load(open(os.path.join(out, "experiment.json")))["seeds"] == [0]   # left as it was


def test_run_summary_of_a_hand_written_history():
    history = [{"step": 0, "eval_acc": 0.5, "probe_gap": 0.0}]
    history += [{"step": s, "entropy": 1.0, "reward_mean": 0.5} for s in range(1, 31)]
    history[10]["eval_acc"], history[20]["eval_acc"], history[30]["eval_acc"] = 0.9, 0.6, 0.6
    history[30]["probe_gap"] = 0.2
    s = run_summary(history, threshold=0.8)
    assert (s["final_acc"], s["best_acc"], s["steps_to_threshold"]) == (0.6, 0.9, 10)
    assert s["probe_gap"] == 0.2 and s["tail_entropy"] == 1.0 and not s["collapsed"]  # two evals after the best


def test_claim_verdicts_follow_the_stated_rule():
    cell = lambda m, s: {"mean": m, "std": s, "n": 3}
    table = {"arith": {"grpo": {"final_acc": cell(0.80, 0.02)}, "rlsd": {"final_acc": cell(0.85, 0.02)},
                       "sdpg": {"final_acc": cell(0.81, 0.03)}}}
    assert compare(table["arith"], "final_acc", "rlsd", "grpo")[0] == "higher"
    assert compare(table["arith"], "final_acc", "sdpg", "grpo")[0] == "mixed"
    table["arith"]["opsd"] = {"start_acc": cell(0.55, 0.01), "best_acc": cell(0.75, 0.02),
                              "final_acc": cell(0.74, 0.02), "collapsed": 0, "seeds": 3}   # rose, did not fall
    table["split"] = {"opsd": {"start_acc": cell(0.55, 0.01), "best_acc": cell(0.55, 0.01),
                               "final_acc": cell(0.10, 0.03), "collapsed": 3, "seeds": 3}}  # fell, never rose
    verdicts = {c["claim"]: c["verdict"] for c in claims({"table": table})}
    assert verdicts["OPSD rises early, then declines (arith)"] == "mixed"
    assert verdicts["OPSD rises early, then declines (split)"] == "mixed"
    assert verdicts["RLSD ends above GRPO (arith)"] == "reproduced"
    assert verdicts["SDPG ends above GRPO (arith)"] == "mixed"
    assert verdicts["SDPG ends above RLSD (arith)"] == "not reproduced"


def test_a_config_field_added_later_does_not_orphan_a_results_folder(tmp_path):
    out = str(tmp_path / "r")
    run_experiment(out, "ci", 1, methods=("grpo",), tasks=("split",), progress=False)
    path = os.path.join(out, "experiment.json")
    exp = json.load(open(path))
    for cfg in exp["configs"].values():
        del cfg["bf16_autocast"]                        # as if the folder predates the field (default False)
    json.dump(exp, open(path, "w"))
    assert run_experiment(out, "ci", 1, methods=("grpo",), tasks=("split",), progress=False)["runs"] == 1
