"""A run's folder: its config, lock, provenance, metrics files and checkpoint.

    config.json       the resolved config; a different config is refused, except a new `steps`
                      where nothing already done depends on the total
    provenance.json   where each start or resume came from: versions, git commit, command line, time
    metrics.jsonl     one line per step (metrics.csv: the same rows as a table)
    checkpoint/       model, tokenizer, optimiser and RNG state, written atomically
    run.lock          the pid and host of the process training in the folder

Nothing in the folder names a path of this machine, so a copied folder resumes in another
clone or install.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from . import model as model_io
from .config import TrainConfig, save_json
from .methods import METHODS


class RunFolderError(ValueError):
    """A run folder that cannot be used as it is: busy, damaged, or holding another run."""


def provenance(start_step: int) -> dict:
    """Where this start of a run came from: package, torch and transformers versions, the git
    commit of the package's checkout (None when installed from a wheel), the command line, time."""
    import torch
    import transformers

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    def git(*args):
        try:
            out = subprocess.run(["git", "-C", str(Path(__file__).parent), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "from_step": start_step, "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "rlsd_min": version("rlsd_min"), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "git_commit": commit,
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


class RunFolderBusyError(RunFolderError):
    """A run folder that another live process trains in (it holds run.lock there)."""


class RunDir:
    """A run's folder: config check, lock, metrics files, atomic checkpoints."""

    def __init__(self, path: str, cfg: TrainConfig):
        self.path, self.cfg = str(path), cfg
        self.ckpt = os.path.join(self.path, "checkpoint")
        self.cfg_path = os.path.join(self.path, "config.json")
        self.lock_path = os.path.join(self.path, "run.lock")
        self.provenance_path = os.path.join(self.path, "provenance.json")
        self.saved_step = None  # the step of the checkpoint on disk
        self.held = False  # whether this process holds run.lock
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunFolderError(f"{self.path} is a file, not a run folder; pass another output folder")
        self.old_steps = None  # the recorded total, when this call asks for another one
        if os.path.exists(self.cfg_path):
            old = self._read_json(self.cfg_path)
            new = cfg.to_dict()
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff == ["steps"]:
                reason = METHODS[cfg.method].uses_total_steps(cfg)
                if reason:
                    raise RunFolderError(f"{self.path} holds a run of {old['steps']} steps and cannot go on to "
                                         f"{cfg.steps}: {reason}; start a new run folder for {cfg.steps} steps")
                self.old_steps = old["steps"]
            elif diff:
                raise RunFolderError(
                    f"{self.path} holds a run with a different config (fields {diff} differ); "
                    "resume it with the same config, or pass a new output folder")

    def _read_json(self, path: str) -> dict:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise RunFolderError(f"{path} is damaged ({e}); restore it, or delete the run folder "
                                 f"{self.path} to start again") from None

    def start(self, start_step: int) -> None:
        """Create the folder, take its lock, record the config and this start's provenance (once
        every check has passed; earlier starts' provenance is kept)."""
        os.makedirs(self.path, exist_ok=True)
        if not self.held:
            self.lock()
        if not os.path.exists(self.cfg_path) or self.old_steps is not None:
            save_json(self.cfg.to_dict(), self.cfg_path)
        starts = self._read_json(self.provenance_path)["starts"] if os.path.exists(self.provenance_path) else []
        save_json({"starts": starts + [provenance(start_step)]}, self.provenance_path)

    def lock(self) -> None:
        """Take run.lock (pid and host of the holder); refuse while a live process holds it."""
        me = f"{os.getpid()}@{socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                with open(self.lock_path) as f:
                    holder = f.read().strip()
                pid, _, host = holder.partition("@")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    os.remove(self.lock_path)  # left by a process that died: take it over
                    continue
                raise RunFolderBusyError(f"{self.path} is in use by process {holder} (its {self.lock_path}); wait "
                                         "for it to finish, or delete that file if the process is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return

    def release(self) -> None:
        """Remove run.lock if this process holds it (never another process's)."""
        if self.held and os.path.exists(self.lock_path):
            os.remove(self.lock_path)
        self.held = False

    def has_checkpoint(self) -> bool:
        return os.path.isfile(os.path.join(self.ckpt, "state.pt"))

    def save(self, policy, tokenizer, optimizer, history: list, teacher) -> None:
        state = {"optimizer": optimizer.state_dict(), "history": history,
                 "teacher": teacher.state_dict() if teacher is not None else None,
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        model_io.save(policy, tokenizer, self.ckpt, extra={"state.pt": state})
        self.saved_step = history[-1]["step"]
        self.write_metrics(history)

    def load(self, device) -> tuple:
        """(policy, tokenizer, training state) of the checkpoint; a damaged one is named."""
        try:
            policy, tokenizer = model_io.load(self.ckpt, device)
            state = torch.load(os.path.join(self.ckpt, "state.pt"), weights_only=False)
            missing = {"optimizer", "history", "teacher", "torch_rng", "cuda_rng"} - set(state)
            if missing:
                raise KeyError(f"state.pt lacks {sorted(missing)}")
        except Exception as e:  # a truncated or foreign file fails in safetensors, torch or here
            raise RunFolderError(
                f"the checkpoint {self.ckpt} is damaged ({type(e).__name__}: {e}); delete that folder to "
                f"restart the run from step 0 (the metrics of {self.path} are then rewritten), or restore it") from None
        return policy, tokenizer, state

    def append(self, row: dict) -> None:
        with open(os.path.join(self.path, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    def write_metrics(self, history: list) -> None:
        """Rewrite metrics.jsonl and metrics.csv from the checkpointed history."""
        with open(os.path.join(self.path, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in history)
        keys = list(dict.fromkeys(k for row in history for k in row))
        with open(os.path.join(self.path, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_metrics(out_dir: str) -> list[dict]:
    """The metrics history of a run folder (metrics.jsonl)."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
