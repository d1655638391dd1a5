"""The command line: `python -m rlsd_min {data,train,eval,...}`."""

import json
import subprocess
import sys

import pytest

import dataclasses

from rlsd_min.lab.cli import _parse_sets, main
from rlsd_min.config import TrainConfig
from rlsd_min.tasks import TASKS

DATA_DIR = TASKS["arith"].data_dir
from rlsd_min.tasks import SPLITS


def run_main(argv, capsys=None) -> str:
    """main(argv) must exit with an error; return the exit message (argparse's usage errors,
    exit code 2, print theirs to stderr: pass capsys to read it)."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    code = err.value.code
    assert code not in (0, None), f"{argv} exited successfully"
    if code == 2 and capsys is not None:
        return capsys.readouterr().err.strip().splitlines()[-1].split(": ", 1)[1]
    return str(code)


def test_unknown_profile_exits_nonzero_naming_it_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlsd_min", "train", "--profile", "nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "nope" in proc.stderr
    assert "Traceback" not in proc.stderr                              # a message, not a crash
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, needle", [
    (["train", "--profile", "nope"], "'nope'"),
    (["train", "--profile", "ci", "--method", "nope"], "'nope'"),
    (["train", "--profile", "ci", "--set", "lr=abc"], "'abc'"),
    (["train", "--profile", "ci", "--set", "steps"], "'steps'"),
    (["train", "--profile", "ci", "--set", "bogus=1"], "'bogus'"),
    (["train", "--profile", "ci", "--set", "group_size=1"], "group_size"),
])
def test_train_errors_name_the_bad_value(argv, needle, tmp_path, capsys):
    message = run_main(argv + ["--out", str(tmp_path / "run")], capsys)
    assert needle in message and message.startswith("error:")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, needle", [
    (["bench", "--set", "bogus=1"], "'bogus'"),
    (["bench", "--set", "compile_scoring=maybe"], "'maybe'"),
    (["bench", "--set", "group_size=1"], "group_size"),
    (["bench", "--scaling", "--set", "compile_scoring=true"], "--set is not taken by --scaling"),
    (["bench", "--trl-trainers", "--set", "compile_scoring=true"], "--set is not taken by --trl-trainers"),
])
def test_bench_set_errors_name_the_bad_value(argv, needle, capsys):
    message = run_main(argv + ["--profile", "ci", "--rounds", "1"], capsys)
    assert needle in message and message.startswith("error:")


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


def test_eval_of_a_missing_checkpoint_names_it(tmp_path):
    message = run_main(["eval", "--ckpt", str(tmp_path / "no_ckpt")])
    assert "no_ckpt" in message


def test_data_writes_reproducible_files_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "arith"
    main(["data", "--out", str(out)])                                  # fresh folder: allowed
    for split in SPLITS:
        # default seed and sizes reproduce the shipped data files byte for byte
        assert (out / f"{split}.jsonl").read_bytes() == (DATA_DIR / f"{split}.jsonl").read_bytes(), split
    (out / "train.jsonl").write_text("sentinel\n")
    message = run_main(["data", "--out", str(out)])
    assert "--force" in message and "train" in message
    assert (out / "train.jsonl").read_text() == "sentinel\n"             # untouched
    main(["data", "--out", str(out), "--force"])
    assert (out / "train.jsonl").read_bytes() == (DATA_DIR / "train.jsonl").read_bytes()


def test_data_refuses_even_if_only_one_split_exists(tmp_path):
    (tmp_path / "ood.jsonl").write_text("keep me\n")
    message = run_main(["data", "--out", str(tmp_path)])
    assert "ood" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ood.jsonl"]


def test_train_command_runs_with_typed_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--profile", "ci", "--out", str(out),
          "--set", "steps=2", "eval_every=2", "checkpoint_every=2", "lr=5e-5"])
    printed = capsys.readouterr().out
    assert "grpo: validation accuracy" in printed and str(out) in printed
    with open(out / "config.json") as f:
        cfg = json.load(f)
    assert (cfg["steps"], cfg["lr"], cfg["profile"]) == (2, 5e-5, "ci")
    assert isinstance(cfg["steps"], int) and isinstance(cfg["lr"], float)


def test_set_values_are_typed_like_their_fields():
    parsed = _parse_sets(["steps=3", "lr=2e-4", "teacher_mode=live", "temperature=1"])
    assert parsed == {"steps": 3, "lr": 2e-4, "teacher_mode": "live", "temperature": 1.0}
    assert type(parsed["steps"]) is int and type(parsed["temperature"]) is float
    with pytest.raises(ValueError, match="'2.5'"):
        _parse_sets(["steps=2.5"])
    bools = [f.name for f in dataclasses.fields(TrainConfig) if str(f.type) == "bool"]
    assert bools
    for name in bools:  # a string 'false' would be truthy: booleans must be parsed
        assert _parse_sets([f"{name}=false"])[name] is False
        assert _parse_sets([f"{name}=true"])[name] is True


def test_train_help_lists_every_field_with_its_docstring(capsys):
    import dataclasses

    from rlsd_min.lab.cli import main
    from rlsd_min.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "rlsd_eps_w = 0.2: RLSD: clip of the per-token weight" in out
    assert all(f"  {f.name} = " in out for f in dataclasses.fields(TrainConfig) if f.name not in ("profile", "method", "task"))


@pytest.mark.parametrize("argv, needle", [
    (["verify", "--profile", "ci", "--seeds", "0"], "seeds must be an integer >= 1, got 0"),
    (["verify", "--profile", "ci", "--methods", "grpo,nope"], "'nope'"),
    (["verify", "--profile", "ci", "--set", "prompts_per_step=5000"], "cannot produce 5000 distinct problems"),
    (["verify", "--profile", "ci", "--variants", "rlsd_nope", "--tasks", "mul7"], "'rlsd_nope'"),
    (["verify", "--profile", "ci", "--variants", "all", "--tasks", "arith"], "variants run on the tasks ('mul7',) only"),
    (["verify", "--profile", "ci", "--shard", "3/3"], "--shard expects i/n with 0 <= i < n"),
    (["verify", "--profile", "ci", "--jobs", "0"], "jobs must be an integer >= 1, got 0"),
    (["verify", "--profile", "ci", "--tasks", "mul7", "--variants", "all", "--variant-seeds", "0"],
     "variant_seeds must be an integer >= 1, got 0"),
])
def test_verify_errors_name_the_bad_value_before_any_work(argv, needle, tmp_path):
    message = run_main(argv + ["--out", str(tmp_path / "results")])
    assert needle in message and message.startswith("error:")
    assert not (tmp_path / "results").exists()


def test_train_on_the_split_task(tmp_path, capsys):
    main(["train", "--task", "split", "--method", "opsd", "--profile", "ci", "--out", str(tmp_path / "r"),
          "--set", "distill_floor=true"])
    assert "opsd: validation accuracy" in capsys.readouterr().out
    rows = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert all(r["distill_floor"] > 0 for r in rows[1:])      # ten references: a strictly positive floor
    assert json.load(open(tmp_path / "r" / "config.json"))["task"] == "split"


def test_warmstart_uses_the_tasks_model_and_sft_settings(tmp_path, monkeypatch):
    import rlsd_min.sft

    seen = {}
    monkeypatch.setattr(rlsd_min.sft, "warm_start", lambda out, data, model_cfg, task_cfg, cfg, device=None: (
        seen.update(model=model_cfg, cfg=cfg, task=task_cfg) or
        {"steps": 0, "seconds": 0, "params": 0, "val_acc_sampled": 0.0, "val_acc_greedy": 0.0}))
    main(["warmstart", "--task", "mul7", "--out", str(tmp_path / "a")])
    assert seen["model"].max_positions == TASKS["mul7"].model["max_positions"] == 192
    assert (seen["cfg"].target_acc, seen["cfg"].eval_every) == (0.3, 10) and seen["task"].ops == ("mul",)
    main(["warmstart", "--task", "mul7", "--out", str(tmp_path / "b"), "--target-acc", "0.25"])
    assert seen["cfg"].target_acc == 0.25                                   # the flag wins
    main(["warmstart", "--task", "arith", "--out", str(tmp_path / "c")])
    assert seen["model"].max_positions == 128 and seen["cfg"].target_acc == 0.45   # arith: the defaults


def test_verify_list_prints_the_plan_a_scheduler_shards(tmp_path, capsys):
    main(["verify", "--profile", "ci", "--seeds", "2", "--methods", "grpo", "--tasks", "mul7", "--variants",
          "rlsd_epsw0.9", "--variant-seeds", "1", "--out", str(tmp_path / "r"), "--list"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["0\tmul7/grpo/seed0\tto do", "1\tmul7/rlsd_epsw0.9/seed0\tto do",   # seed-major
                         "2\tmul7/grpo/seed1\tto do"]
    assert lines[3:] == ["mul7/grpo: 2 seeds, 0 finished, 2 to do; no finished run to time it by",
                         "mul7/rlsd_epsw0.9: 1 seeds, 0 finished, 1 to do; no finished run to time it by",
                         "total: 3 runs, 0 finished, 3 to do: 0.0 h of training (not counting mul7/grpo, mul7/rlsd_epsw0.9)"]
    assert not (tmp_path / "r").exists()                                  # listing writes nothing
