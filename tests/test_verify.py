"""The verification experiment: bad input refused before work, resume, summary and report."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from rlsd_min.lab.experiment import experiment_config, parse_shard, run_experiment, shard_runs
from rlsd_min.lab.report import claims, to_settle
from rlsd_min.methods import METHODS
from rlsd_min.lab.results import clock_span, extends, missing_probes, plan, run_summary
from rlsd_min.run_folder import RunFolderError


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
        run_experiment(str(out), "ci", 1, methods=("grpo",), tasks=("arith", "split"), sets={"prompts_per_step": 500}, progress=False)
    assert not out.exists()


TWO = ("arith", "split")


def test_runs_resume_and_a_different_experiment_is_refused(tmp_path):
    out = str(tmp_path / "r")
    summary = run_experiment(out, "ci", 1, methods=("grpo", "opsd"), tasks=TWO, progress=False)
    assert summary["runs"] == 4 and set(summary["table"]) == {"arith", "split"}
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "| OPSD |" in report and "floor_split.png" in report and os.path.exists(os.path.join(out, "floor_split.png"))
    metrics = os.path.join(out, "runs", "arith", "grpo", "seed0", "metrics.jsonl")
    before = os.path.getmtime(metrics)
    assert run_experiment(out, "ci", 1, methods=("grpo", "opsd"), tasks=TWO, progress=False)["runs"] == 4
    assert os.path.getmtime(metrics) == before              # finished runs are not trained again
    with pytest.raises(ValueError, match="different experiment.*repeat the command.*another --out"):
        run_experiment(out, "ci", 1, methods=("grpo", "opsd"), tasks=TWO, sets={"lr": 2e-4}, progress=False)
    assert json.load(open(os.path.join(out, "experiment.json")))["seeds"] == [0]   # left as it was
    more = run_experiment(out, "ci", 1, methods=("grpo", "opsd"), tasks=TWO, label_seeds={"grpo": 2}, progress=False)
    assert more["runs"] == 6 and os.path.getmtime(metrics) == before         # an extension: its runs kept
    assert json.load(open(os.path.join(out, "experiment.json")))["label_seeds"] == {"grpo": [0, 1]}


def test_run_summary_of_a_hand_written_history():
    history = [{"step": 0, "eval_acc": 0.5, "probe_gap": 0.0}]
    history += [{"step": s, "entropy": 1.0, "reward_mean": 0.5} for s in range(1, 31)]
    history[10]["eval_acc"], history[20]["eval_acc"], history[30]["eval_acc"] = 0.9, 0.6, 0.6
    history[30]["probe_gap"] = 0.2
    history[25]["eval_acc"] = 0.85
    s = run_summary(history, threshold=0.8)
    # the last quarter of 30 steps is (22.5, 30]: the evaluations at steps 25 and 30
    assert (s["final_acc"], s["last_acc"], s["best_acc"], s["steps_to_threshold"]) == (0.725, 0.6, 0.9, 10)
    assert s["late_acc"] == s["final_acc"] and s["early_acc"] is None             # no evaluation in (0, 7.5]
    assert s["probe_gap"] == 0.2 and s["tail_entropy"] == 1.0 and not s["collapsed"]  # 0.85 within 0.1 of the best


def test_a_probe_with_nothing_to_count_is_missing_not_zero():
    probes = {"probe_acc_train": 0.0, "probe_acc_heldout": 0.5, "probe_ref_match_train": 0.0,
              "probe_ref_match_heldout": 0.3, "probe_disagree_train": 0.0, "probe_disagree_heldout": 0.0,
              "probe_logratio_format": 0.1}
    out = missing_probes(probes)
    assert out["probe_ref_match_train"] is None and out["probe_ref_match_heldout"] == 0.3   # no correct answer
    assert out["probe_disagree_train"] is None and out["probe_disagree_heldout"] is None   # no answer token
    parsed = missing_probes({**probes, "probe_logratio_answer": -0.2})
    assert parsed["probe_disagree_train"] == 0.0 and parsed["probe_disagree_heldout"] == 0.0
    sibling = missing_probes({k: v for k, v in probes.items() if not k.startswith("probe_logratio_")})
    assert sibling["probe_disagree_train"] == 0.0 and sibling["probe_disagree_heldout"] == 0.0  # no ratios to read


def _cell(values):
    return {"mean": sum(values) / len(values), "std": 0.0, "n": len(values), "values": list(values),
            "seeds": list(range(len(values)))}


def test_claim_verdicts_follow_the_stated_rule():
    base = [0.80, 0.82, 0.79, 0.81, 0.83]
    t = {"grpo": {"final_acc": _cell(base)},
         "rlsd": {"final_acc": _cell([x + 0.10 for x in base])},                   # far above: reproduced
         "sdpg": {"final_acc": _cell([0.74, 0.96, 0.80, 0.94, 0.81])},             # noise: inconclusive
         "opsd": {"final_acc": _cell([x + 0.15 for x in base]),                     # GRPO far below it
                  "start_acc": _cell([0.50] * 5), "early_acc": _cell([0.70, 0.72, 0.71, 0.69, 0.73]),
                  "late_acc": _cell([0.71, 0.73, 0.72, 0.70, 0.74])}}               # rose, then rose a bit more
    t["grpo"]["early_acc"] = _cell([0.60, 0.63, 0.61, 0.58, 0.64])                 # OPSD above it early
    settings = {"arith/opsd": {"method": "opsd", "teacher_mode": "frozen", "steps": 30}}
    judged = claims({"table": {"arith": t}, "settings": settings})
    verdicts = {c.text: c for c in judged}
    assert verdicts["RLSD ends above GRPO (= RLSD's teacher term helps: RLSD with λ = 0 is GRPO) (arith)"].verdict == "reproduced"
    assert verdicts["SDPG ends above GRPO (arith)"].verdict == "inconclusive"
    assert verdicts["GRPO ends above OPSD (arith)"].verdict == "contradicted"
    assert verdicts["OPSD rises early: above GRPO over the first quarter, at the same steps (arith)"].verdict == "reproduced"
    decline = verdicts["OPSD declines late (OPSD: teacher frozen, 30 steps): first quarter above the last (arith)"]
    assert decline.verdict == "contradicted"                                     # early 0.71 below final 0.80-0.83
    assert all(len(c.parts) == 1 for c in judged)                                 # each claim one comparison
    k = sum(c.parts[0][1] is not None for c in judged)
    assert {c.parts[0][1].level for c in judged} == {0.05 / k}                      # one family per task
    sdpg = verdicts["SDPG ends above GRPO (arith)"].parts[0][1]
    assert sdpg.ci_low < 0 < sdpg.ci_high and "paired seeds (unpaired:" in to_settle(sdpg)


def test_each_teacher_context_arm_is_judged_against_its_method_and_against_grpo():
    from rlsd_min.lab.design import CONTEXT_ARMS, VARIANTS

    arms = {name: m for name, (m, sets) in VARIANTS.items() if sets.get("teacher_context") in CONTEXT_ARMS}
    base = [0.70, 0.72, 0.69, 0.71, 0.73]
    t = {label: {"final_acc": _cell(base)} for label in ("grpo", "rlsd", "grpo_opsd")}
    t.update({name: {"final_acc": _cell([x - 0.1 for x in base])} for name in arms})   # every arm far below
    judged = claims({"table": {"mul7": t}})
    for name, m in arms.items():
        context, label = VARIANTS[name][1]["teacher_context"], METHODS[m].label
        (own,) = [c for c in judged if c.parts[0][0] == f"final_acc: {label} − {name}"]
        assert own.verdict == "reproduced"                                           # the default context wins
        assert ("another problem's worked example" in own.text) == context.startswith("other")
        (off,) = [c for c in judged if c.parts[0][0] == f"final_acc: {name} − GRPO"]
        assert off.verdict == "contradicted" and f"with the {context} context" in off.text   # below GRPO


def test_a_run_label_naming_steps_keeps_its_accuracies_decimals():
    """Decimals follow the metric (whole steps for steps to the threshold), not a label such as
    opsd_steps400."""
    from rlsd_min.lab.report import claims_table

    t = {"grpo": {"final_acc": _cell([0.70, 0.72, 0.69, 0.71, 0.73])},
         "opsd_steps400": {"early_acc": _cell([0.60, 0.61, 0.62, 0.63, 0.64]),
                           "final_acc": _cell([0.701, 0.722, 0.693, 0.714, 0.735])}}
    settings = {"mul7/opsd_steps400": {"method": "opsd", "teacher_mode": "frozen", "steps": 400}}
    (row,) = [line for line in claims_table(claims({"table": {"mul7": t}, "settings": settings}))
              if "opsd_steps400 early_acc" in line]
    assert "opsd_steps400 early_acc − final_acc: -0.093 [" in row and "-9.3e-02" not in row   # 3 decimals, not 0


def test_steps_to_the_threshold_count_the_seeds_that_reached_it_once():
    """A label whose seeds did not all reach the threshold reads its steps over those that did,
    with (reached/seeds) once."""
    from rlsd_min.lab.report import _table

    row = {"final_acc": _cell([0.6, 0.7, 0.65]), "steps_to_threshold": _cell([120, 140]),
           "reached": 2, "seeds": 3, "collapsed": 0}
    (line,) = [x for x in _table("mul7", {"grpo": row}, 0.65, {}).splitlines() if x.startswith("| GRPO ")]
    assert "| 130 ± 0 (2/3) |" in line and line.count("(2/3)") == 1


def test_the_final_experiment_runs_with_its_own_settings_and_plain_verify_without(tmp_path, monkeypatch):
    from rlsd_min.lab import experiment as experiment_mod
    from rlsd_min.lab.cli import main
    from rlsd_min.lab.design import FINAL_SETS

    seen = []
    monkeypatch.setattr(experiment_mod, "run_experiment", lambda *a, **k: seen.append((a[0], a[5])))
    main(["verify", "--profile", "ci", "--final", "--shard", "0/2", "--set", "lr=0.001"])
    main(["verify", "--profile", "ci", "--shard", "0/2"])
    assert seen == [("results", {**FINAL_SETS, "lr": 0.001}), (os.path.join("runs", "verify"), {})]


def test_a_claim_with_one_seed_is_inconclusive_and_says_what_it_needs():
    t = {"grpo": {"final_acc": _cell([0.5])}, "rlsd": {"final_acc": _cell([0.9])}}
    (claim,) = [c for c in claims({"table": {"arith": t}}) if c.text.startswith("RLSD ends above GRPO")]
    assert claim.verdict == "inconclusive" and claim.parts[0][1] is None
    assert to_settle(claim.parts[0][1]) == "at least 2 seeds"


def _metrics(out, task, label, seed=0):
    rows = [json.loads(line) for line in open(os.path.join(out, "runs", task, label, f"seed{seed}", "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if not (k.startswith("time_") or k.endswith("_time_s"))} for r in rows]


def test_two_jobs_train_the_same_runs_as_one(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run_experiment(one, "ci", 1, methods=("grpo", "rlsd"), tasks=("arith",), progress=False)
    summary = run_experiment(two, "ci", 1, methods=("grpo", "rlsd"), tasks=("arith",), jobs=2, progress=False)
    assert summary["runs"] == 2 and not summary["missing"]
    for m in ("grpo", "rlsd"):               # one torch thread here (conftest) and in each worker
        assert _metrics(one, "arith", m) == _metrics(two, "arith", m)


def test_shards_are_disjoint_cover_the_plan_and_a_plain_call_reports(tmp_path):
    out = str(tmp_path / "r")
    exp = experiment_config("ci", 1, methods=("grpo", "opsd"), tasks=("arith", "split"))
    runs = plan(exp)
    shards = [shard_runs(runs, (i, 3)) for i in range(3)]
    assert sorted(r for s in shards for r in s) == sorted(runs) and sum(map(len, shards)) == len(runs) == 4
    for i in range(3):
        assert run_experiment(out, "ci", 1, methods=("grpo", "opsd"), tasks=TWO, shard=f"{i}/3", progress=False) is None
        assert not os.path.exists(os.path.join(out, "REPORT.md"))                  # a shard writes no report
    metrics = os.path.join(out, "runs", "arith", "grpo", "seed0", "metrics.jsonl")
    before = os.path.getmtime(metrics)
    summary = run_experiment(out, "ci", 1, methods=("grpo", "opsd"), tasks=TWO, progress=False)
    assert summary["runs"] == 4 and os.path.getmtime(metrics) == before and os.path.exists(os.path.join(out, "REPORT.md"))


def test_an_interim_report_trains_nothing_and_names_the_runs_left_out(tmp_path):
    from rlsd_min.lab.cli import main

    out = str(tmp_path / "r")
    args = ["verify", "--profile", "ci", "--seeds", "1", "--methods", "grpo,rlsd", "--tasks", "arith", "--out", out]
    with pytest.raises(SystemExit, match="holds no experiment"):
        main([*args, "--report"])                                  # nothing there yet: named, nothing written
    assert not os.path.exists(out)
    main([*args, "--shard", "0/2"])                                # trains grpo only
    main([*args, "--report"])
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["runs"] == 1 and summary["missing"] == ["arith/rlsd/seed0"]
    assert not os.path.exists(os.path.join(out, "runs", "arith", "rlsd"))            # nothing trained
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "**An interim report**: 1 of the plan's 2 runs are not finished" in report and "arith/rlsd/seed0" in report
    for extra in (["--list"], ["--shard", "1/2"]):
        with pytest.raises(SystemExit, match="--report trains nothing"):
            main([*args, "--report", *extra])


def test_a_run_busy_in_another_process_is_skipped_named_and_left_out(tmp_path, capsys):
    out = tmp_path / "r"
    busy = out / "runs" / "arith" / "opsd" / "seed0"
    busy.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (busy / "run.lock").write_text(f"{holder.pid}@{socket.gethostname()}")
        summary = run_experiment(str(out), "ci", 1, methods=("grpo", "opsd"), tasks=("arith",), progress=False)
        assert summary["missing"] == ["arith/opsd/seed0"] and summary["runs"] == 1
        assert "skipped arith/opsd/seed0 busy" in capsys.readouterr().out
        assert (busy / "run.lock").read_text() == f"{holder.pid}@{socket.gethostname()}"   # not taken, not removed
        report = (out / "REPORT.md").read_text()
        assert "**An interim report**: 1 of the plan's 2 runs are not finished" in report
        assert "arith/opsd/seed0" in report.split("**An interim report**")[1].split("\n")[0]
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_run_in_a_worker_stops_the_experiment_with_its_error(tmp_path):
    out = tmp_path / "r"
    bad = out / "runs" / "split" / "grpo" / "seed0"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text(json.dumps({"method": "grpo", "steps": 1}))   # another run's config
    with pytest.raises(RunFolderError, match="holds a run with a different config"):
        run_experiment(str(out), "ci", 1, methods=("grpo",), tasks=("split",), jobs=2, progress=False)
    assert not (out / "REPORT.md").exists()


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "1/0", "0/"])
def test_a_bad_shard_is_refused(text, tmp_path):
    with pytest.raises(ValueError, match="--shard expects i/n with 0 <= i < n"):
        run_experiment(str(tmp_path / "r"), "ci", 1, shard=text, progress=False)
    assert not (tmp_path / "r").exists()
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None


@pytest.mark.parametrize("jobs", [0, -2, 1.5])
def test_a_bad_job_count_is_refused(jobs, tmp_path):
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        run_experiment(str(tmp_path / "r"), "ci", 1, jobs=jobs, progress=False)
    assert not (tmp_path / "r").exists()


def test_unknown_variants_and_variants_without_their_task_are_refused():
    with pytest.raises(ValueError, match="unknown variant.*'rlsd_nope'"):
        experiment_config("ci", 1, variants=("rlsd_nope",))
    with pytest.raises(ValueError, match="variants run on the tasks \\('mul7',\\) only"):
        experiment_config("ci", 1, tasks=("arith",), variants=("all",))


def test_variants_are_their_method_with_the_named_settings_on_mul7_only():
    exp = experiment_config("ci", 2, methods=("grpo", "rlsd"), tasks=("arith", "mul7"),
                            variants=("rlsd_epsw0.9", "opsd_live"))
    assert set(exp["configs"]) == {"arith/grpo", "arith/rlsd", "mul7/grpo", "mul7/rlsd", "mul7/rlsd_epsw0.9",
                                   "mul7/opsd_live"}
    v = exp["configs"]["mul7/rlsd_epsw0.9"]
    assert v["method"] == "rlsd" and v["rlsd_eps_w"] == 0.9
    assert {k for k in v if v[k] != exp["configs"]["mul7/rlsd"][k]} == {"rlsd_eps_w"}
    assert exp["configs"]["mul7/opsd_live"]["teacher_mode"] == "live"
    assert len(plan(exp)) == 2 * 6
    assert "variants" not in experiment_config("ci", 1)                         # absent without variants
    fewer = experiment_config("ci", 5, methods=("grpo", "rlsd"), tasks=("mul7",), variants=("rlsd_epsw0.9",),
                              variant_seeds=3)
    assert fewer["variant_seeds"] == [0, 1, 2] and len(plan(fewer)) == 5 + 5 + 3
    assert "variant_seeds" not in experiment_config("ci", 3, tasks=("mul7",), variants=("all",), variant_seeds=3)
    with pytest.raises(ValueError, match="variant_seeds must be an integer >= 1, got 0"):
        experiment_config("ci", 3, tasks=("mul7",), variants=("all",), variant_seeds=0)


def test_an_older_folder_with_one_threshold_verifies_without_being_rewritten(tmp_path):
    out = str(tmp_path / "r")
    run_experiment(out, "ci", 1, methods=("grpo",), tasks=("split",), progress=False)
    path = os.path.join(out, "experiment.json")
    exp = json.load(open(path))
    exp["threshold"] = 0.8                                                   # the form before per-task thresholds
    json.dump(exp, open(path, "w"))
    before = open(path).read()
    summary = run_experiment(out, "ci", 1, methods=("grpo",), tasks=("split",), progress=False)
    assert summary["runs"] == 1 and summary["threshold"] == {"split": 0.8}
    assert open(path).read() == before


def test_a_config_field_added_later_does_not_orphan_a_results_folder(tmp_path):
    out = str(tmp_path / "r")
    run_experiment(out, "ci", 1, methods=("grpo",), tasks=("split",), progress=False)
    path = os.path.join(out, "experiment.json")
    exp = json.load(open(path))
    for cfg in exp["configs"].values():
        del cfg["bf16_autocast"]                        # as if the folder predates the field (default False)
    json.dump(exp, open(path, "w"))
    assert run_experiment(out, "ci", 1, methods=("grpo",), tasks=("split",), progress=False)["runs"] == 1


def test_a_variant_runs_beside_its_method_and_the_report_compares_them(tmp_path):
    out = str(tmp_path / "r")
    summary = run_experiment(out, "ci", 2, methods=("grpo", "rlsd"), tasks=("mul7",), variants=("rlsd_epsw0.9",),
                             variant_seeds=3, progress=False)
    assert summary["runs"] == 7 and summary["variant_seeds"] == 3 and summary["variants"] == {"rlsd_epsw0.9": {"method": "rlsd",
                                                                            "sets": {"rlsd_eps_w": 0.9}}}
    assert json.load(open(os.path.join(out, "runs", "mul7", "rlsd_epsw0.9", "seed2", "config.json")))["rlsd_eps_w"] == 0.9
    report = open(os.path.join(out, "REPORT.md")).read()
    recorded = json.load(open(os.path.join(out, "runs", "mul7", "grpo", "seed0", "provenance.json")))["starts"][0]
    assert f"Generated by `{' '.join(recorded['command'])}` (the command line the runs' provenance.json" in report
    assert "## Sensitivity of each method's knobs" in report and "| rlsd_epsw0.9 (rlsd_eps_w=0.9) vs RLSD |" in report
    assert "| RLSD ends above GRPO (= RLSD's teacher term helps" in report and "## Sample efficiency against GRPO" in report
    assert os.path.exists(os.path.join(out, "sensitivity_mul7.png"))
    cells = summary["table"]["mul7"]["grpo"]["final_acc"]
    assert len(cells["values"]) == 2 and cells["n"] == 2                   # per-seed values, for the statistics


def _timed_run(path, starts, seconds):
    os.makedirs(path)
    with open(os.path.join(path, "provenance.json"), "w") as f:
        json.dump({"starts": [{"started": s} for s in starts]}, f)
    with open(os.path.join(path, "wall_s.json"), "w") as f:
        json.dump({"wall_s": seconds}, f)
    return str(path)


def test_clock_span_reads_the_elapsed_time_and_the_runs_at_once_from_the_folders(tmp_path):
    a = _timed_run(tmp_path / "a", ["2026-01-01T00:00:00+00:00"], 100.0)    # 0-100 s
    b = _timed_run(tmp_path / "b", ["2026-01-01T00:00:50+00:00"], 100.0)    # 50-150 s, beside a
    c = _timed_run(tmp_path / "c", ["2026-01-01T00:02:30+00:00"], 30.0)     # 150-180 s, after a and b
    assert clock_span([a, b, c]) == {"elapsed_s": 180.0, "at_once": 2}
    assert clock_span([a, c]) == {"elapsed_s": 180.0, "at_once": 1}
    resumed = _timed_run(tmp_path / "d", ["2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00"], 10.0)
    assert clock_span([a, resumed]) is None and clock_span([]) is None
    os.makedirs(tmp_path / "e")
    assert clock_span([a, str(tmp_path / "e")]) is None                     # a folder without provenance.json


def test_rlsd_with_lambda_zero_is_grpo_step_for_step(tmp_path):
    """RLSD's token advantage A_i ((1 - lam) + lam clip(w_t)) is A_i at lam = 0: the same updates as GRPO."""
    from rlsd_min.config import train_config
    from rlsd_min.loop import train
    from rlsd_min.model import load
    from rlsd_min.tasks import TASKS

    runs = {m: train(train_config("ci", method=m, seed=3, **sets), str(tmp_path / m), progress=False)
            for m, sets in (("grpo", {}), ("rlsd", {"rlsd_lam": 0.0}))}
    shared = ("loss", "loss_pg", "clip_frac", "grad_norm", "entropy", "reward_mean", "completion_len", "eval_acc")
    for g, r in zip(runs["grpo"], runs["rlsd"], strict=True):
        assert {k: g[k] for k in shared if k in g} == {k: r[k] for k in shared if k in g}
    assert sum("loss_pg" in r for r in runs["rlsd"]) == 4 and "teacher_kl" in runs["rlsd"][-1]   # the teacher ran
    weights = {m: load(str(tmp_path / m / "checkpoint"))[0].state_dict() for m in runs}
    base = load(str(TASKS["arith"].base_checkpoint))[0].state_dict()
    assert all(torch.equal(weights["grpo"][k], weights["rlsd"][k]) for k in weights["grpo"])
    assert not all(torch.equal(weights["grpo"][k], base[k]) for k in base)          # and they did move


def test_an_experiment_that_extends_the_recorded_one_keeps_its_runs_and_another_is_refused():
    old = experiment_config("ci", 2, methods=("grpo", "rlsd"), tasks=("mul7",), variants=("rlsd_epsw0.9",),
                            variant_seeds=1)
    new = experiment_config("ci", 2, methods=("grpo", "rlsd"), tasks=("mul7",),
                            variants=("rlsd_epsw0.9", "sdpg_nodistill"), label_seeds={"grpo": 4, "rlsd_epsw0.9": 3})
    assert new["label_seeds"] == {"grpo": [0, 1, 2, 3], "rlsd_epsw0.9": [0, 1, 2]}
    assert len(plan(new)) == 4 + 2 + 3 + 2 and extends(new, old) and not extends(old, new)
    changed = experiment_config("ci", 2, methods=("grpo", "rlsd"), tasks=("mul7",), sets={"lr": 2e-4},
                                variants=("rlsd_epsw0.9",), label_seeds={"grpo": 4})
    assert not extends(changed, old)                                            # another config: another experiment
    assert new["configs"]["mul7/sdpg_nodistill"]["distill_coef"] == 0.0
    with pytest.raises(ValueError, match="label_seeds names \\['opsd'\\]"):
        experiment_config("ci", 2, methods=("grpo",), tasks=("mul7",), label_seeds={"opsd": 5})
    with pytest.raises(ValueError, match="label_seeds\\['grpo'\\] must be an integer >= 1, got 0"):
        experiment_config("ci", 2, methods=("grpo",), tasks=("mul7",), label_seeds={"grpo": 0})


def test_the_final_plan_lists_its_runs_counts_and_time(tmp_path, capsys):
    from rlsd_min.lab.cli import main
    from rlsd_min.lab.design import FINAL, final_plan

    methods, variants, seeds = final_plan()
    assert set(methods) | set(variants) == set(seeds) == set(FINAL)
    assert min(FINAL[m] for m in ("grpo", "rlsd", "sdpg", "grpo_opsd", "sdpg_nodistill")) >= 20
    assert min(FINAL.values()) >= 5
    main(["verify", "--profile", "ci", "--final", "--list", "--out", str(tmp_path / "r")])
    lines = capsys.readouterr().out.splitlines()
    total = sum(seeds.values())
    assert f"total: {total} runs, 0 finished, {total} to do: 0.0 h of training (not counting" in lines[-1]
    assert "mul7/grpo: 20 seeds, 0 finished, 20 to do; no finished run to time it by" in lines
    assert not (tmp_path / "r").exists()                                        # a listing writes nothing


def test_the_report_says_what_one_evaluation_samples():
    from rlsd_min.lab.report import _evaluation

    same = {"settings": {"mul7/grpo": {"eval_samples": 4, "eval_problems": 256},
                         "mul7/rlsd": {"eval_samples": 4, "eval_problems": 256}}}
    assert _evaluation(same) == "4 sampled completions of each of 256 validation problems"
    mixed = {"settings": {**same["settings"], "mul7/sdpg": {"eval_samples": 1, "eval_problems": 256}}}
    assert _evaluation(mixed) == ("4 sampled completions of each of 256 validation problems for mul7/grpo, mul7/rlsd; "
                                  "1 sampled completion of each of 256 validation problems for mul7/sdpg")


def test_a_refused_folder_is_told_the_command_its_runs_record_with_its_own_out():
    from rlsd_min.lab.experiment import _resume_command

    assert _resume_command("__main__.py verify --profile cpu --out /scratch/v --jobs 2", "results") == \
        "python -m rlsd_min verify --profile cpu --jobs 2 --out results"
    assert _resume_command("__main__.py verify --seeds 3", "r") == "python -m rlsd_min verify --seeds 3 --out r"


def test_the_teacher_kl_basis_names_the_rows_each_context_scores():
    from rlsd_min.lab.report import teacher_kl_basis

    def basis(method, context, agg="token-mean"):
        return teacher_kl_basis({"method": method, "teacher_context": context, "loss_agg": agg,
                                 "sdpg_gate": "positive"})

    assert basis("grpo", None) == ""
    assert basis("grpo_opsd", "solution") == "all rows, solution, token-mean"
    assert basis("grpo_opsd", "sibling") == "all rows with a sibling, sibling, token-mean"
    assert basis("rlsd", "other_answer") == "rows A≠0, other_answer, token-mean"
    assert basis("sdpg", "solution", "group-token-mean") == "rows A>0, solution, group-token-mean"
