"""A run folder under faults: bad values, a damaged checkpoint, a second process, more steps."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from rlsd_min import train, train_config
from rlsd_min.run_folder import RunFolderBusyError, RunFolderError, read_metrics


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step GRPO run on the ci profile (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(train_config("ci", method="grpo"), str(out), progress=False)
    return out


def copy_of(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_non_finite_coefficient_is_refused_before_the_folder_exists(tmp_path):
    with pytest.raises(ValueError, match="distill_coef must be a finite number, got nan"):
        train(train_config("ci", method="opsd", distill_coef=float("nan")), str(tmp_path / "r"), progress=False)
    assert not (tmp_path / "r").exists()


def test_a_truncated_checkpoint_is_named_with_what_to_do(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = snapshot(run)
    with pytest.raises(RunFolderError) as err:
        train(train_config("ci", method="grpo"), str(run), progress=False)
    message = str(err.value)
    assert str(run / "checkpoint") in message and "damaged" in message and "delete that folder" in message
    assert snapshot(run) == before                            # nothing written, nothing lost


def test_a_damaged_config_file_is_named(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "config.json").write_text('{"method": "gr')
    with pytest.raises(RunFolderError, match=f"{run / 'config.json'} is damaged"):
        train(train_config("ci", method="grpo"), str(run), progress=False)


def test_a_second_process_is_refused_naming_the_folder_and_the_holder(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(f"{holder.pid}@{os.uname().nodename}")
        before = snapshot(run)
        with pytest.raises(RunFolderError) as err:
            train(train_config("ci", method="grpo", steps=6), str(run), progress=False)
        assert str(run) in str(err.value) and f"process {holder.pid}@" in str(err.value)
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, and the run goes on (and releases the lock)
    history = train(train_config("ci", method="grpo", steps=6), str(run), progress=False)
    assert history[-1]["step"] == 6 and not (run / "run.lock").exists()


def test_a_busy_folder_is_refused_before_its_checkpoint_is_read(finished, tmp_path):
    """While another process holds the folder its checkpoint may be mid-save: the lock is checked
    first, so the answer is 'busy', never 'damaged' (with advice to delete what is in use)."""
    run = copy_of(finished, tmp_path)
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])               # as if caught in the middle of a save
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(f"{holder.pid}@{os.uname().nodename}")
        before = snapshot(run)
        with pytest.raises(RunFolderBusyError, match="in use by process"):
            train(train_config("ci", method="grpo", steps=6), str(run), progress=False)
        assert snapshot(run) == before                             # its lock is left in place
    finally:
        holder.kill()
        holder.wait()


def test_two_real_processes_on_one_folder(tmp_path):
    """Started together on one fresh folder: one trains, the other refuses with the folder's name
    (or, if the first finished before the second looked, finds the run finished)."""
    code = ("import sys, rlsd_min; rlsd_min.train(rlsd_min.train_config('ci', method='grpo', steps=6), sys.argv[1], "
            "progress=False)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in results)
    for rc, err in results:
        if rc != 0:
            assert "RunFolderBusyError" in err and str(tmp_path / "r") in err and "in use by process" in err
    assert read_metrics(str(tmp_path / "r"))[-1]["step"] == 6


def test_a_finished_run_goes_on_for_more_steps(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    history = train(train_config("ci", method="grpo", steps=6), str(run), progress=False)
    assert [r["step"] for r in history] == list(range(7)) and "eval_acc" in history[-1]
    assert json.load(open(run / "config.json"))["steps"] == 6
    assert read_metrics(str(run))[:5] == read_metrics(str(finished))         # the first 4 steps kept as they were


def test_more_steps_are_refused_where_the_method_depends_on_the_total(tmp_path):
    run = tmp_path / "sdpg"
    train(train_config("ci", method="sdpg", steps=2, checkpoint_every=2), str(run), progress=False)
    before = snapshot(run)
    with pytest.raises(RunFolderError, match="cannot go on to 4: SDPG's beta\\(k\\) schedule"):
        train(train_config("ci", method="sdpg", steps=4, checkpoint_every=2), str(run), progress=False)
    assert snapshot(run) == before


def test_fewer_steps_than_done_are_refused(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    with pytest.raises(RunFolderError, match="already done 4 steps, more than steps=2"):
        train(train_config("ci", method="grpo", steps=2), str(run), progress=False)


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a run folder"):
        train(train_config("ci", method="grpo"), str(path), progress=False)


def test_a_config_recorded_under_a_renamed_field_still_resumes(finished, tmp_path):
    """compile_decoding was static_cache_compile: a folder that recorded the old name is the same
    run, and a --set of the old name says what it is called now."""
    from rlsd_min.lab.cli import _parse_sets

    run = copy_of(finished, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["static_cache_compile"] = cfg.pop("compile_decoding")
    (run / "config.json").write_text(json.dumps(cfg))
    history = train(train_config("ci", method="grpo"), str(run), progress=False)
    assert history == read_metrics(str(finished)) and history[-1]["step"] == 4
    with pytest.raises(ValueError, match="static_cache_compile is now called compile_decoding"):
        _parse_sets(["static_cache_compile=true"])
