"""Faults injected into run and results folders: a poisoned pickle, a symlink, a torn line, a
full or read-only disk, a final checkpoint older than the metrics, a stale lock. Each test
asserts that no code from the folder runs, nothing is written outside it, the message names
the file, nothing already written is lost, and a later run ends as an uninterrupted one."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from rlsd_min import model as model_io
from rlsd_min import train, train_config
from rlsd_min.config import save_json
from rlsd_min.lab.cli import main
from rlsd_min.lab.experiment import run_experiment
from rlsd_min.lab.results import finished_history, run_status
from rlsd_min.run_folder import (RunDir, RunFolderBusyError, RunFolderDamagedError, RunFolderWriteError,
                                 checkpoint_of, read_metrics)

CFG = dict(method="grpo")  # ci profile: 4 steps, checkpoints at 2 and 4


class Payload:
    """Unpickled, it creates the folder `marker`: the proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def poison(path, marker) -> None:
    """Replace the file `path` by a torch.save file whose pickle runs Payload when loaded without
    weights_only."""
    torch.save({"history": [{"step": 2}], "x": Payload(marker)}, path)


def without_timing(history):
    return [{k: v for k, v in row.items() if not (k == "step_time_s" or k.startswith("time_"))} for row in history]


def params_of(run) -> dict:
    return {k: v.clone() for k, v in model_io.load(str(run / "checkpoint"))[0].state_dict().items()}


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_run(run, reference) -> bool:
    """The metrics (without timings) and the final weights of `run` are those of `reference`."""
    params, ref = params_of(run), reference["params"]
    return (without_timing(read_metrics(str(run))) == without_timing(reference["history"])
            and all(torch.equal(params[k], v) for k, v in ref.items()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted ci GRPO run, and a copy of its step-2 checkpoint."""
    out = tmp_path_factory.mktemp("reference") / "run"
    step2 = out.parent / "checkpoint_step2"
    real_save = RunDir.save

    def save(self, *args):
        real_save(self, *args)
        if self.saved_step == 2:
            shutil.copytree(self.ckpt, step2)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunDir, "save", save)
        history = train(train_config("ci", **CFG), str(out), progress=False)
    return {"out": out, "history": history, "params": params_of(out), "step2": step2}


@pytest.fixture(scope="module")
def halfway(reference, tmp_path_factory):
    """The reference run as it stood after step 2: config, metrics to step 2, its step-2 checkpoint."""
    run = tmp_path_factory.mktemp("halfway") / "run"
    run.mkdir()
    shutil.copy(reference["out"] / "config.json", run)
    shutil.copytree(reference["step2"], run / "checkpoint")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference["history"][:3]))
    return run


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    """A finished ci verification folder: GRPO on arith, seeds 0 and 1."""
    out = tmp_path_factory.mktemp("verified") / "results"
    run_experiment(str(out), "ci", 2, methods=("grpo",), tasks=("arith",), progress=False)
    return out


def copy_of(folder, tmp_path, name="run"):
    shutil.copytree(folder, tmp_path / name)
    return tmp_path / name


def seed_dir(results, seed):
    return results / "runs" / "arith" / "grpo" / f"seed{seed}"


def test_the_payload_is_real_when_unpickled_without_weights_only(tmp_path):
    poison(tmp_path / "state.pt", tmp_path / "ran")
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert (tmp_path / "ran").is_dir()


def test_a_poisoned_state_pt_runs_no_code_in_train_or_eval(halfway, tmp_path, capsys):
    run = copy_of(halfway, tmp_path)
    poison(run / "checkpoint" / "state.pt", tmp_path / "ran")
    before, outside = snapshot(run), sorted(os.listdir(tmp_path))
    with pytest.raises(RunFolderDamagedError) as err:
        train(train_config("ci", **CFG), str(run), progress=False)
    assert str(run / "checkpoint" / "state.pt") in str(err.value) and "could run code" in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--ckpt", str(run), "--split", "validation", "--samples", "1"])
    assert str(run / "checkpoint" / "state.pt") in str(exit_.value) and "could run code" in str(exit_.value)
    assert not (tmp_path / "ran").exists()                                # no code ran
    assert snapshot(run) == before and sorted(os.listdir(tmp_path)) == outside   # nothing written


def test_a_poisoned_state_pt_in_a_verify_folder_is_named_and_the_other_runs_go_on(verified, halfway, reference,
                                                                                  tmp_path, capsys):
    results = copy_of(verified, tmp_path, "results")
    unfinished, finished = seed_dir(results, 0), seed_dir(results, 1)
    shutil.rmtree(unfinished)
    shutil.copytree(halfway, unfinished)
    shutil.copy(seed_dir(verified, 0) / "config.json", unfinished)
    poison(unfinished / "checkpoint" / "state.pt", tmp_path / "ran_unfinished")
    poison(finished / "checkpoint" / "state.pt", tmp_path / "ran_finished")
    assert run_status(str(finished), 4).startswith(f"damaged: the checkpoint file {finished / 'checkpoint'}")
    summary = run_experiment(str(results), "ci", 2, methods=("grpo",), tasks=("arith",), progress=False)
    printed = capsys.readouterr().out
    assert not (tmp_path / "ran_unfinished").exists() and not (tmp_path / "ran_finished").exists()
    for run in (unfinished, finished):
        assert "damaged: the checkpoint" in printed and str(run / "checkpoint" / "state.pt") in printed
    assert str(finished / "checkpoint" / "state.pt") in summary["damaged"]["arith/grpo/seed1"]
    assert summary["missing"] == ["arith/grpo/seed0", "arith/grpo/seed1"]
    assert read_metrics(str(finished)) == read_metrics(str(seed_dir(verified, 1)))   # nothing lost


def test_a_symlinked_metrics_file_is_refused_and_its_target_left_alone(halfway, tmp_path):
    for name in ("metrics.jsonl", "metrics.csv"):
        run = copy_of(halfway, tmp_path, name)
        target = tmp_path / f"target_of_{name}"
        target.write_text("precious\n")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(target)
        with pytest.raises(RunFolderDamagedError, match=f"{run / name} is a symlink"):
            train(train_config("ci", **CFG), str(run), progress=False)
        assert target.read_text() == "precious\n"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(ValueError, match=f"{link} is a symlink"):
        save_json({"x": 1}, link)
    assert target.read_text() == "precious\n"


def test_a_torn_line_in_a_verify_folder_is_dropped_and_the_run_ends_as_it_would_have(verified, tmp_path, capsys):
    results = copy_of(verified, tmp_path, "results")
    torn, damaged = seed_dir(results, 0) / "metrics.jsonl", seed_dir(results, 1) / "metrics.jsonl"
    whole = read_metrics(str(seed_dir(verified, 0)))
    torn.write_text(torn.read_text()[:-40])                              # a power cut in the last line
    lines = damaged.read_text().splitlines(keepends=True)
    damaged.write_text("".join(lines[:2] + ['{"step": 2, "eval_acc"\n'] + lines[3:]))   # not the last line
    damaged_bytes = damaged.read_bytes()
    assert read_metrics(str(seed_dir(results, 0))) == whole[:-1]
    assert run_status(str(seed_dir(results, 0)), 4) == "to do"
    assert run_status(str(seed_dir(results, 1)), 4).startswith(f"damaged: {damaged} line 3 is damaged")
    main(["verify", "--profile", "ci", "--seeds", "2", "--methods", "grpo", "--tasks", "arith", "--out",
          str(results), "--list"])
    assert "0\tarith/grpo/seed0\tto do" in capsys.readouterr().out
    summary = run_experiment(str(results), "ci", 2, methods=("grpo",), tasks=("arith",), progress=False)
    assert f"skipped arith/grpo/seed1 damaged: {damaged} line 3" in capsys.readouterr().out
    assert summary["missing"] == ["arith/grpo/seed1"] and summary["runs"] == 1
    assert without_timing(read_metrics(str(seed_dir(results, 0)))) == without_timing(whole)
    assert damaged.read_bytes() == damaged_bytes                          # the damaged file is left as it was


def full_disk(mp, when):
    """Make writes fail with ENOSPC while `when()` holds (files opened by os.fdopen)."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        if when():
            def write(_):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    mp.setattr(os, "fdopen", fdopen)


def test_enospc_on_the_lock_leaves_no_lock_and_a_later_start_resumes(halfway, reference, tmp_path):
    run = copy_of(halfway, tmp_path)
    before = snapshot(run)
    with pytest.MonkeyPatch.context() as mp:
        full_disk(mp, lambda: True)
        with pytest.raises(RunFolderWriteError) as err:
            train(train_config("ci", **CFG), str(run), progress=False)
    assert f"cannot write in the run folder {run}" in str(err.value) and "free space" in str(err.value)
    assert snapshot(run) == before                                        # no run.lock, no temporary file
    train(train_config("ci", **CFG), str(run), progress=False)            # space freed: the run goes on
    assert same_run(run, reference)


def test_enospc_on_the_final_checkpoint_keeps_the_last_one_and_a_later_start_ends_the_same(halfway, reference,
                                                                                          tmp_path):
    run = copy_of(halfway, tmp_path)
    real = torch.save

    def save(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("history", [{}])[-1].get("step") == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", save)
        with pytest.raises(RunFolderWriteError, match=f"cannot write in the run folder {run}"):
            train(train_config("ci", **CFG), str(run), progress=False)
    assert not (run / "checkpoint.tmp").exists()
    assert [r["step"] for r in read_metrics(str(run))] == [0, 1, 2, 3]   # step 4's row only with its checkpoint
    assert checkpoint_of(str(run))[2] == 2 and finished_history(str(run), 4) is None
    (run / "checkpoint.tmp").mkdir()                                       # as a kill during a save leaves it
    (run / "checkpoint.tmp" / "model.safetensors").write_bytes(b"partial")
    train(train_config("ci", **CFG), str(run), progress=False)
    assert not (run / "checkpoint.tmp").exists() and same_run(run, reference)


def test_a_read_only_folder_is_one_message(halfway, tmp_path):
    run = copy_of(halfway, tmp_path)
    real = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real(path, flags, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", read_only)
        with pytest.raises(SystemExit, match=f"cannot write in the run folder {run} .*read-only"):
            main(["train", "--profile", "ci", "--out", str(run)])


def test_a_final_checkpoint_older_than_the_metrics_is_not_finished_and_resumes(reference, tmp_path, capsys):
    run = copy_of(reference["out"], tmp_path)
    shutil.rmtree(run / "checkpoint")
    shutil.copytree(reference["step2"], run / "checkpoint")             # metrics at step 4, checkpoint at 2
    assert read_metrics(str(run))[-1]["step"] == 4 and finished_history(str(run), 4) is None
    assert checkpoint_of(str(run)) == (str(run / "checkpoint"), "arith", 2)
    main(["eval", "--ckpt", str(run), "--split", "validation", "--samples", "1"])
    assert "step 2 of the run" in capsys.readouterr().out
    train(train_config("ci", **CFG), str(run), progress=False)
    assert finished_history(str(run), 4) is not None and same_run(run, reference)


def test_a_save_stopped_between_its_renames_resumes_from_the_old_checkpoint(halfway, reference, tmp_path):
    run = copy_of(halfway, tmp_path)
    (run / "checkpoint").rename(run / "checkpoint.old")
    train(train_config("ci", **CFG), str(run), progress=False)
    assert not (run / "checkpoint.old").exists() and same_run(run, reference)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"garbled"])
def test_an_empty_or_unreadable_lock_is_stale(halfway, reference, tmp_path, content):
    run = copy_of(halfway, tmp_path)
    (run / "run.lock").write_bytes(content)
    train(train_config("ci", **CFG), str(run), progress=False)
    assert not (run / "run.lock").exists() and same_run(run, reference)


@pytest.mark.parametrize("config, message", [("[1, 2]", "a JSON list, not the object"),
                                             ('{"task": "nope"}', "names the task 'nope'")])
def test_a_config_json_that_is_no_run_config_is_named(halfway, tmp_path, config, message):
    run = copy_of(halfway, tmp_path)
    (run / "config.json").write_text(config)
    with pytest.raises(RunFolderDamagedError, match=f"{run / 'config.json'}.*{message}"):
        checkpoint_of(str(run))
    if config.startswith("["):
        with pytest.raises(RunFolderDamagedError, match=f"{run / 'config.json'} is damaged"):
            train(train_config("ci", **CFG), str(run), progress=False)


def test_save_json_from_two_writers_never_collides(tmp_path):
    code = ("import sys; from rlsd_min.config import save_json\n"
            "for i in range(150): save_json({'i': i, 'by': sys.argv[2]}, sys.argv[1])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "x.json"), str(n)],
                              stderr=subprocess.PIPE, text=True) for n in range(2)]
    assert [(p.wait(timeout=60), p.stderr.read()) for p in procs] == [(0, ""), (0, "")]
    assert json.loads((tmp_path / "x.json").read_text())["i"] == 149 and os.listdir(tmp_path) == ["x.json"]


def test_a_second_verify_says_the_runs_are_held_by_the_other(tmp_path, capsys):
    out = tmp_path / "r"
    busy = seed_dir(out, 0)
    busy.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (busy / "run.lock").write_text(f"{holder.pid}@{socket.gethostname()}")
        with pytest.raises(RunFolderBusyError):
            RunDir(str(busy), train_config("ci", **CFG)).lock()
        run_experiment(str(out), "ci", 1, methods=("grpo",), tasks=("arith",), progress=False)
        assert "1 runs are held by another process, which trains them" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
