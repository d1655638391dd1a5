"""The RL loop: a run of `steps` RL steps (rlsd_min.step) in one resumable folder.

    for each step:  draw `prompts_per_step` training problems (deterministic from seed and step)
                    collect the batch, update the policy        (rlsd_min.step.rl_step)
                    every `eval_every` steps: held-out accuracy (and the leakage probes)
                    every `checkpoint_every` steps: an atomic checkpoint

A run lives in one folder: config.json (the resolved config), provenance.json (where each
start or resume came from: versions, git commit, command line, time), metrics.jsonl (one line
per step), metrics.csv, and checkpoint/ (model, tokenizer, optimiser and RNG state), written
atomically every `checkpoint_every` steps. Nothing in it names a path of this machine, so a
copied folder resumes in another clone or install. Calling `train` again on the folder resumes from
the last checkpoint with the same config; a different config is refused, except a new
`steps` where nothing already done depends on the total. While a process trains in the
folder it holds run.lock there, and a second process is refused.
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
from tqdm.auto import tqdm

from . import model as model_io
from .config import TrainConfig, pick_device, save_json
from .evaluation import evaluate
from .leakage import leakage_probes
from .registry import METHODS
from .sampling import check_fits
from .step import NonFiniteLossError, batch_problems, make_teacher, rl_step
from .tasks import load_splits, problems_of
from .teacher import teacher_prompt


class RunFolderError(ValueError):
    """A run folder that cannot be used as it is: busy, damaged, or holding another run."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: says where the last checkpoint is and how to resume."""


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

    def save(self, policy, tokenizer, optimizer, history: list, teacher: Teacher | None) -> None:
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


def check_problem_counts(cfg: TrainConfig, n_train: int, n_validation: int) -> None:
    """Fail before any work if the task has fewer distinct prompts than a step or the probes ask for."""
    for field, need, have in (("prompts_per_step", cfg.prompts_per_step, n_train),
                              ("probe_problems", cfg.probe_problems, min(n_train, n_validation))):
        if need > have:
            raise ValueError(f"task {cfg.task!r} cannot produce {need} distinct problems for {field}: "
                             f"it has {have}; lower {field}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_lengths(model, tokenizer, problems: list, cfg: TrainConfig) -> None:
    """Fail before any work if the longest (teacher) prompt + completion exceeds the context."""
    longest = max(problems, key=lambda p: len(p.prompt) + len(p.solution))
    prompt = longest.prompt
    if METHODS[cfg.method].teacher is not None:
        prompt = teacher_prompt(longest.prompt, longest.context(cfg.teacher_context), cfg.privileged_template)
    check_fits(model, len(tokenizer(prompt).input_ids), cfg.max_new_tokens)


def train(cfg: TrainConfig, out_dir: str, device=None, progress: bool = True) -> list[dict]:
    """Run (or resume) RL in `out_dir`; return the metrics history (one dict per step).

    Step 0 of the history is the evaluation of the starting policy. `cfg` is resolved and
    checked first (TrainConfig.validate), before anything is written.
    """
    cfg = cfg.validate()
    device = pick_device(device)
    run = RunDir(out_dir, cfg)
    if os.path.isdir(run.path):
        run.lock()  # before its checkpoint is read: a folder another process trains in is refused first
    try:
        return _prepare_and_loop(cfg, run, device, progress)
    finally:
        run.release()


def _prepare_and_loop(cfg, run, device, progress):
    """Load the policy (the checkpoint, else the base), check the task against the config, then
    `_loop`. A new folder is created and locked by run.start(), once every check has passed."""
    resuming = run.has_checkpoint()
    if resuming:
        policy, tokenizer, state = run.load(device)
    else:
        policy, tokenizer = model_io.load(cfg.base_path(), device)
    splits = load_splits(cfg.data_path())
    train_set, heldout = problems_of(splits["train"]), problems_of(splits["validation"])
    val_set = heldout[:cfg.eval_problems]
    check_problem_counts(cfg, len(train_set), len(heldout))
    _check_lengths(policy, tokenizer, train_set + val_set, cfg)
    if resuming and state["history"][-1]["step"] > cfg.steps:
        raise RunFolderError(f"{run.path} has already done {state['history'][-1]['step']} steps, more than "
                             f"steps={cfg.steps}; ask for at least that many, or use a new run folder")
    ref_model = None
    if cfg.kl_coef > 0:  # pi_ref: the frozen starting policy (the base, also when resuming)
        ref_model = model_io.load(cfg.base_path(), device)[0].eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    policy.train()
    run.saved_step = state["history"][-1]["step"] if resuming else None
    run.start(run.saved_step or 0)
    try:
        return _loop(cfg, run, policy, tokenizer, ref_model, optimizer, train_set, heldout, val_set,
                     state if resuming else None, progress)
    except KeyboardInterrupt:
        where = (f"the last checkpoint (step {run.saved_step}) is in {run.ckpt}" if run.saved_step
                 else "no checkpoint was written yet")
        raise RunInterrupted(f"interrupted: {where}; run the same command again to resume") from None


def _loop(cfg, run, policy, tokenizer, ref_model, optimizer, train_set, heldout, val_set, state, progress):
    teacher = make_teacher(policy, cfg)
    probe_context = cfg.teacher_context or "answer"  # a method without a teacher: the minimal context

    def evaluation() -> dict:
        row = {"eval_acc": evaluate(policy, tokenizer, val_set, seed=cfg.seed),
               "eval_acc_greedy": evaluate(policy, tokenizer, val_set, greedy=True)}
        if cfg.probe_problems:
            probes = leakage_probes(policy, tokenizer, train_set[:cfg.probe_problems], heldout[:cfg.probe_problems],
                                    probe_context, cfg.privileged_template, cfg.seed)
            row.update({f"probe_{k}": v for k, v in probes.items()})
        return row

    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history = state["history"]
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        run.write_metrics(history)  # drop lines written after the checkpoint
    else:
        torch.manual_seed(cfg.seed)
        history = [{"step": 0, **evaluation()}]
        run.append(history[0])
    start = history[-1]["step"]
    if progress and start:
        print(f"{run.path}: " + (f"finished ({start} of {cfg.steps} steps)" if start >= cfg.steps
                                 else f"resuming from step {start} of {cfg.steps}"))
    bar = tqdm(range(start, cfg.steps), desc=f"{cfg.method}", initial=start, total=cfg.steps,
               disable=not progress)
    for step in bar:
        try:
            row = rl_step(policy, tokenizer, ref_model, optimizer, batch_problems(train_set, step, cfg), cfg,
                          step, teacher)
        except NonFiniteLossError as e:
            saved = f"the last good checkpoint is intact in {run.ckpt}" if run.has_checkpoint() else "no checkpoint was written yet"
            raise NonFiniteLossError(f"{e}: training stopped before the update; {saved}") from None
        if row["step"] % cfg.eval_every == 0 or row["step"] == cfg.steps:
            row.update(evaluation())
            bar.set_postfix(reward=f"{row['reward_mean']:.2f}", acc=f"{row['eval_acc']:.2f}")
        row.update(lr=optimizer.param_groups[0]["lr"], num_tokens=history[-1].get("num_tokens", 0) + row["tokens"])
        history.append(row)
        run.append(row)
        if row["step"] % cfg.checkpoint_every == 0 or row["step"] == cfg.steps:
            run.save(policy, tokenizer, optimizer, history, teacher)
    return history


def read_metrics(out_dir: str) -> list[dict]:
    """The metrics history of a run folder (metrics.jsonl)."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def last_eval(history: list[dict]) -> float:
    """Held-out sampled accuracy at the last evaluated step."""
    return [row["eval_acc"] for row in history if "eval_acc" in row][-1]

