"""The command line as a new user meets it: fast answers, the resolved config, messages that say
what to do, Ctrl-C, and run folders that record where they came from and travel."""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pytest

from rlsd_min import train, train_config
from rlsd_min.lab.cli import main

CHECK_MODULES = ("import sys, runpy; sys.argv = ['rlsd_min'] + sys.argv[1:]\n"
                 "try:\n    runpy.run_module('rlsd_min', run_name='__main__')\n"
                 "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
                 "heavy = sorted(m for m in ('transformers', 'datasets', 'matplotlib', 'trl') if m in sys.modules)\n"
                 "print('HEAVY', heavy, file=sys.stderr); sys.exit(code)\n")


def cli(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-c", CHECK_MODULES, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, needle", [
    (["--help"], "COMMAND"),
    (["train", "--help"], "--print-config"),
    (["verify", "--help"], "--seeds"),
    (["train", "--method", "nope"], "invalid choice: 'nope'"),
    (["train", "--profile", "tpu"], "invalid choice: 'tpu'"),
    (["train", "--set", "lrr=1"], "did you mean lr?"),
    (["train", "--set", "sdpg_gate=maybe"], "'maybe' is not one of true/false/1/0/yes/no"),
    (["train", "--set", "steps"], "expects key=value, got 'steps'"),
    (["train", "--method", "grpo", "--set", "method=rlsd"], "pass --method rlsd instead"),
])
def test_help_and_argument_errors_import_no_heavy_library(args, needle, tmp_path):
    proc = cli(*args, cwd=tmp_path)
    assert needle in proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr[-300:]           # no model library loaded (torch is: the records)
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_every_option_of_train_shows_its_default_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "{grpo,opsd,grpo_opsd,rlsd,sdpg}" in out and "{ci,cpu,gpu}" in out and "{arith,split,mul7}" in out
    assert "(default: grpo)" in out and "(default: arith)" in out


def test_print_config_is_what_the_run_would_record(tmp_path, capsys):
    main(["train", "--method", "sdpg", "--profile", "ci", "--set", "lr=3e-4", "--print-config",
          "--out", str(tmp_path / "r")])
    printed = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "r").exists()                           # nothing written
    assert printed == train_config("ci", method="sdpg", lr=3e-4).to_dict()
    assert printed["kl_coef"] == 0.01 and printed["loss_agg"] == "group-token-mean" and printed["steps"] == 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    main(["train", "--method", "grpo", "--profile", "ci", "--out", str(out)])
    return out


def test_eval_accepts_a_run_folder_and_names_what_it_evaluates(run, capsys):
    main(["eval", "--ckpt", str(run), "--split", "validation", "--samples", "1"])
    out = capsys.readouterr().out
    assert f"evaluating {run / 'checkpoint'} (task arith)" in out and "sampled accuracy" in out
    main(["eval", "--split", "validation", "--samples", "1"])
    assert "evaluating the warm start of task 'arith'" in capsys.readouterr().out


def test_eval_under_several_seeds_prints_each_and_their_spread(run, capsys):
    main(["eval", "--ckpt", str(run), "--split", "validation", "--samples", "1", "--seeds", "3", "--seed", "5"])
    out = capsys.readouterr().out
    per_seed = [float(part.split()[1]) for part in out.split("per seed: ")[1].splitlines()[0].split(", ")]
    assert [int(part.split()[0]) for part in out.split("per seed: ")[1].splitlines()[0].split(", ")] == [5, 6, 7]
    mean, sd = map(float, re.search(r"mean ([0-9.]+), sd over 3 seeds ([0-9.]+)", out).groups())
    assert mean == pytest.approx(statistics.fmean(per_seed), abs=1e-4)         # printed to 4 decimals
    assert sd == pytest.approx(statistics.stdev(per_seed), abs=2e-4)
    main(["eval", "--ckpt", str(run), "--split", "validation", "--samples", "1", "--seed", "6"])
    alone = float(re.search(r"sampled accuracy ([0-9.]+) \(1 per problem, seed 6\)", capsys.readouterr().out)[1])
    assert alone == pytest.approx(per_seed[1], abs=6e-4)                        # seed 6 alone: the same value
    with pytest.raises(SystemExit) as err:
        main(["eval", "--ckpt", str(run), "--seeds", "0"])
    assert "--seeds must be >= 1, got 0" in str(err.value.code)


def test_eval_of_a_run_folder_without_checkpoint_says_what_to_do(run, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "metrics.jsonl", bare)
    with pytest.raises(SystemExit) as err:
        main(["eval", "--ckpt", str(bare)])
    assert f"the run folder {bare} holds no checkpoint/" in str(err.value.code)


def test_a_missing_checkpoint_hint_names_both_commands(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["eval", "--ckpt", str(tmp_path / "nothing")])
    message = str(err.value.code)
    assert "python -m rlsd_min warmstart --task" in message and "<run folder>/checkpoint" in message


def test_an_output_path_that_is_a_file_gets_a_message(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as err:
        main(["train", "--profile", "ci", "--out", str(tmp_path / "f")])
    assert "is a file, not a run folder" in str(err.value.code)


def test_resuming_and_finished_runs_say_so(run, tmp_path, capsys):
    main(["train", "--method", "grpo", "--profile", "ci", "--out", str(run)])
    assert f"{run}: finished (4 of 4 steps)" in capsys.readouterr().out
    copy = tmp_path / "more"
    shutil.copytree(run, copy)
    main(["train", "--method", "grpo", "--profile", "ci", "--set", "steps=6", "--out", str(copy)])
    assert f"{copy}: resuming from step 4 of 6" in capsys.readouterr().out


def test_provenance_is_recorded_and_survives_a_resume(run, tmp_path):
    record = json.load(open(run / "provenance.json"))["starts"]
    first = record[0]
    assert first["from_step"] == 0 and first["command"][1:3] == ["train", "--method"] or first["command"]
    for key in ("started", "rlsd_min", "torch", "transformers", "python", "git_commit", "git_dirty"):
        assert key in first, key
    assert first["rlsd_min"] and first["torch"] and first["transformers"]
    copy = tmp_path / "again"
    shutil.copytree(run, copy)
    train(train_config("ci", method="grpo", steps=6), str(copy), progress=False)
    starts = json.load(open(copy / "provenance.json"))["starts"]
    assert starts[:len(record)] == record and starts[-1]["from_step"] == 4


def test_a_run_folder_copied_to_another_clone_resumes_there(tmp_path):
    """The folder records no path of this machine: a copy of the repository (another clone)
    takes it over and finishes it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", repo, str(clone)], check=True, timeout=120)
    for item in ("rlsd_min",):  # the working tree's package (uncommitted changes included)
        shutil.rmtree(clone / item)
        shutil.copytree(os.path.join(repo, item), clone / item, ignore=shutil.ignore_patterns("__pycache__"))
    here = tmp_path / "run"
    train(train_config("ci", method="rlsd", steps=2, checkpoint_every=2), str(here), progress=False)
    assert str(tmp_path) not in (here / "config.json").read_text()
    moved = clone / "runs" / "run"
    shutil.copytree(here, moved)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RLSD_"))}
    code = ("import rlsd_min, sys; assert rlsd_min.__file__.startswith(sys.argv[1]), rlsd_min.__file__; "
            "h = rlsd_min.train(rlsd_min.train_config('ci', method='rlsd', steps=4, checkpoint_every=2), "
            "'runs/run', progress=False); print('steps', h[-1]['step'])")
    proc = subprocess.run([sys.executable, "-c", code, str(clone)], cwd=clone, env={**env, "PYTHONPATH": str(clone)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "steps 4" in proc.stdout


def test_ctrl_c_stops_with_one_line_saying_where_the_checkpoint_is(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "rlsd_min", "train", "--method", "grpo", "--profile", "ci",
                             "--set", "steps=400", "checkpoint_every=1", "eval_every=400", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job starts with SIGINT ignored, and Python then keeps
                            # it ignored: give the child the default, as a terminal's foreground has
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "checkpoint" / "state.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: the last checkpoint (step ") and str(out / "checkpoint") in last
    assert "run the same command again to resume" in last
    assert not (out / "run.lock").exists()
