"""A run's folder: its config, lock, provenance, metrics files and checkpoint.

    config.json       the resolved config; a different config is refused, except a new `steps`
                      where nothing already done depends on the total
    provenance.json   where each start or resume came from: versions, git commit, command line, time
    metrics.jsonl     one line per step (metrics.csv: the same rows as a table)
    checkpoint/       model, tokenizer, optimiser and RNG state, written atomically
    run.lock          the pid and host of the process training in the folder

Nothing in the folder names a path of this machine, so a copied folder resumes in another
clone or install. A folder received from elsewhere is data, never code: its state.pt is read
with torch.load(weights_only=True), its files are replaced by atomic renames that never write
through a symlink, and a full or read-only disk is one message naming the folder.

A write cut short (a power cut) leaves at most a torn last line in metrics.jsonl, which every
reader drops (`read_metrics`), and a partial checkpoint.tmp, removed at the next start. The
metrics of a checkpoint step are written once its checkpoint is complete, so a run is finished
when its metrics and its checkpoint agree on the last step (`finished_history`).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from . import model as model_io
from .config import TrainConfig, current_names, save_json, write_atomic
from .methods import METHODS
from .tasks import TASKS


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


FILES = ("config.json", "provenance.json", "metrics.jsonl", "metrics.csv", "run.lock", "wall_s.json",
         "checkpoint", "checkpoint.tmp", "checkpoint.old")
"""the names a run folder holds; none of them may be a symlink"""
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
READ_ONLY = (errno.EROFS,)


class RunFolderError(ValueError):
    """A run folder that cannot be used as it is: busy, damaged, or holding another run."""


class RunFolderBusyError(RunFolderError):
    """A run folder that another live process trains in (it holds run.lock there)."""


class RunFolderWriteError(RunFolderError):
    """A run folder that cannot be written: its disk is full or read-only."""


class RunFolderDamagedError(RunFolderError):
    """A run folder with a file that cannot be used: unreadable, malformed, holding more than data
    (a pickled object), or a symlink. The message names the file."""


@contextlib.contextmanager
def writing(folder: str):
    """Writes into `folder`: a full disk (ENOSPC, EDQUOT, EFBIG) or a read-only one (EROFS) becomes
    one RunFolderWriteError naming the folder and what to do; every other error passes unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL + READ_ONLY:
            raise
        what = ("free space on its disk (or pass another --out on a disk with room), then run the same command "
                "again: a run resumes from its last checkpoint, and nothing written before is lost"
                if e.errno in DISK_FULL else
                "its file system is read-only: copy the folder to a writable place (or pass another --out), then "
                "run the same command there")
        raise RunFolderWriteError(f"cannot write in the run folder {folder} ({e.strerror}: "
                                  f"{e.filename or folder}); {what}") from None


def read_config(out_dir: str) -> dict:
    """A run folder's config.json, under today's field names (config.current_names); a
    RunFolderDamagedError naming it when it is not a JSON object."""
    path = os.path.join(out_dir, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise RunFolderDamagedError(f"{path} is damaged ({e}); restore it, or delete the run folder {out_dir} "
                                    "to start again") from None
    if not isinstance(cfg, dict):
        raise RunFolderDamagedError(f"{path} is damaged (a JSON {type(cfg).__name__}, not the object of a run's "
                                    f"config); restore it, or delete the run folder {out_dir} to start again")
    return current_names(cfg)


def read_metrics(out_dir: str) -> list[dict]:
    """The metrics history of a run folder (metrics.jsonl). A torn last line (a write cut short:
    no newline, not valid JSON) is left out; any other bad line is a RunFolderDamagedError naming
    the file and the line."""
    path = os.path.join(out_dir, "metrics.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")  # the text after the last newline is lines[-1]
    except (OSError, UnicodeDecodeError) as e:
        raise RunFolderDamagedError(f"{path} cannot be read ({e}); restore it") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if i == len(lines):  # torn: the last line, its newline never written
                break
            row, problem = None, str(e)
        else:
            problem = "a row needs an integer 'step'"
        if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
            raise RunFolderDamagedError(f"{path} line {i} is damaged ({problem}); restore the file (`train` on a "
                                        "folder with a checkpoint rewrites it from the checkpoint)")
        rows.append(row)
    return rows


def checkpoint_step(out_dir: str) -> int | None:
    """The last step in a run folder's checkpoint (None when it has none); a checkpoint that cannot
    be read, or holds more than data, is a RunFolderDamagedError naming its file."""
    path = os.path.join(out_dir, "checkpoint", "state.pt")
    if not os.path.isdir(os.path.join(out_dir, "checkpoint")):
        return None
    try:
        return model_io.load_state(path)["history"][-1]["step"]
    except Exception as e:  # missing, truncated, foreign or refused: named, with what to do
        raise RunFolderDamagedError(f"the checkpoint file {path} is damaged or refused ({type(e).__name__}: {e}); "
                                    "delete that checkpoint folder to restart the run from step 0, or restore "
                                    "it") from None


def checkpoint_of(path: str) -> tuple[str, str | None, int | None]:
    """(the model folder to load, the run's task, the run's step in it) for a checkpoint or a run
    folder: a run folder stands for its checkpoint/, whose task its config.json records."""
    if not (os.path.isdir(os.path.join(path, "checkpoint")) or os.path.isfile(os.path.join(path, "metrics.jsonl"))):
        return path, None, None
    if not os.path.isdir(os.path.join(path, "checkpoint")):
        raise FileNotFoundError(f"the run folder {path} holds no checkpoint/ (a run writes one every "
                                "checkpoint_every steps and at the end; a verification folder keeps only the "
                                "metrics); train it, or pass another checkpoint")
    task = None
    if os.path.isfile(os.path.join(path, "config.json")):
        task = read_config(path).get("task")
        if task not in TASKS:
            raise RunFolderDamagedError(f"{os.path.join(path, 'config.json')} names the task {task!r}, which is not "
                                        f"one of {tuple(TASKS)}; restore the file")
    return os.path.join(path, "checkpoint"), task, checkpoint_step(path)


class RunDir:
    """A run's folder: config check, lock, metrics files, atomic checkpoints."""

    def __init__(self, path: str, cfg: TrainConfig):
        self.path, self.cfg = str(path), cfg
        self.ckpt = os.path.join(self.path, "checkpoint")
        self.cfg_path = os.path.join(self.path, "config.json")
        self.lock_path = os.path.join(self.path, "run.lock")
        self.provenance_path = os.path.join(self.path, "provenance.json")
        self.metrics_path = os.path.join(self.path, "metrics.jsonl")
        self.saved_step = None  # the step of the checkpoint on disk
        self.held = False  # whether this process holds run.lock
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunFolderError(f"{self.path} is a file, not a run folder; pass another output folder")
        links = [name for name in FILES if os.path.islink(os.path.join(self.path, name))]
        if links:
            raise RunFolderDamagedError(f"{os.path.join(self.path, links[0])} is a symlink: a run folder's files are "
                                        "its own, never written through a link; replace it by the file itself, or "
                                        "delete it")
        self.old_steps = None  # the recorded total, when this call asks for another one
        if os.path.exists(self.cfg_path):
            old = read_config(self.path)
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

    def start(self, start_step: int) -> None:
        """Create the folder, take its lock, record the config and this start's provenance (once
        every check has passed; earlier starts' provenance is kept)."""
        with writing(self.path):
            os.makedirs(self.path, exist_ok=True)
        if not self.held:
            self.lock()
        starts = []
        if os.path.exists(self.provenance_path):
            try:
                with open(self.provenance_path) as f:
                    starts = json.load(f)["starts"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise RunFolderDamagedError(f"{self.provenance_path} is damaged ({e}); restore it, or delete it "
                                            "(the record of this folder's earlier starts goes with it)") from None
        with writing(self.path):
            if not os.path.exists(self.cfg_path) or self.old_steps is not None:
                save_json(self.cfg.to_dict(), self.cfg_path)
            save_json({"starts": starts + [provenance(start_step)]}, self.provenance_path)

    def lock(self) -> None:
        """Take run.lock (pid and host of the holder): written under a temporary name, then hard-linked
        to run.lock, which fails while the file exists, so the lock is never seen half-written. A live
        holder is refused; an empty or unreadable lock, or a dead holder's on this host, is stale and
        taken over. Then an interrupted checkpoint save is finished or undone (model.recover)."""
        me = f"{os.getpid()}@{socket.gethostname()}"
        for _ in range(3):
            with writing(self.path):
                fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".run.lock.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(me)
                    os.link(tmp, self.lock_path)
                    self.held = True
                except FileExistsError:
                    pass
                finally:
                    os.remove(tmp)
            if self.held:
                with writing(self.path):
                    model_io.recover(self.ckpt)
                return
            holder = self._holder()
            pid, _, host = (holder or "").partition("@")
            if holder is None or not pid.isdigit() or (host == socket.gethostname() and not _alive(int(pid))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.lock_path)  # stale: empty, unreadable, or left by a process that died
                continue
            break
        raise RunFolderBusyError(f"{self.path} is in use by process {holder} (its {self.lock_path}); wait "
                                 "for it to finish, or delete that file if the process is gone")

    def _holder(self) -> str | None:
        """The holder written in run.lock, or None when it is empty or cannot be read."""
        try:
            with open(self.lock_path, encoding="utf-8") as f:
                return f.read().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def release(self) -> None:
        """Remove run.lock if this process holds it (never another process's)."""
        if self.held and os.path.exists(self.lock_path):
            os.remove(self.lock_path)
        self.held = False

    def has_checkpoint(self) -> bool:
        return os.path.isfile(os.path.join(self.ckpt, "state.pt"))

    def save(self, policy, tokenizer, optimizer, history: list, teacher) -> None:
        """The checkpoint of `history[-1]`'s step, then the metrics files up to that step: a row of
        a checkpoint step is on disk only once its checkpoint is."""
        state = {"optimizer": optimizer.state_dict(), "history": history,
                 "teacher": teacher.state_dict() if teacher is not None else None,
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        with writing(self.path):
            model_io.save(policy, tokenizer, self.ckpt, extra={"state.pt": state})
        self.saved_step = history[-1]["step"]
        self.write_metrics(history)

    def load(self, device) -> tuple:
        """(policy, tokenizer, training state) of the checkpoint; a damaged one is named."""
        try:
            policy, tokenizer = model_io.load(self.ckpt, device)
            state = model_io.load_state(os.path.join(self.ckpt, "state.pt"))
            missing = {"optimizer", "history", "teacher", "torch_rng", "cuda_rng"} - set(state)
            if missing:
                raise KeyError(f"state.pt lacks {sorted(missing)}")
        except Exception as e:  # a truncated, foreign or refused file fails in safetensors, torch or here
            raise RunFolderDamagedError(
                f"the checkpoint {self.ckpt} is damaged ({type(e).__name__}: {e}); delete that folder to "
                f"restart the run from step 0 (the metrics of {self.path} are then rewritten), or restore it") from None
        return policy, tokenizer, state

    def append(self, row: dict) -> None:
        """Add one row to metrics.jsonl (never through a symlink: O_NOFOLLOW)."""
        with writing(self.path):
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(row) + "\n")

    def write_metrics(self, history: list) -> None:
        """Replace metrics.jsonl and metrics.csv by the rows of `history` (atomically, each)."""
        keys = list(dict.fromkeys(k for row in history for k in row))

        def table(f):
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)

        with writing(self.path):
            write_atomic(self.metrics_path, lambda f: f.writelines(json.dumps(row) + "\n" for row in history))
            write_atomic(os.path.join(self.path, "metrics.csv"), table)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
