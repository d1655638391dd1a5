"""The RL loop: a run of `steps` RL steps (rlsd_min.step) in one resumable folder.

    for each step:  draw `prompts_per_step` training problems (deterministic from seed and step)
                    collect the batch, update the policy        (rlsd_min.step)
                    every `eval_every` steps: held-out accuracy (and the leakage probes)
                    every `checkpoint_every` steps: an atomic checkpoint

The folder (config, lock, provenance, metrics, checkpoint) is rlsd_min.run_folder's. Calling
`train` again on the folder resumes from the last checkpoint with the same config.
"""

from __future__ import annotations

import os
from functools import partial

import torch
from tqdm.auto import tqdm

from . import model as model_io
from .config import TrainConfig, pick_device
from .evaluation import evaluate
from .leakage import distill_floor, leakage_probes
from .methods import METHODS
from .run_folder import RunDir, RunFolderError
from .sampling import check_fits
from .step import NonFiniteLossError, batch_problems, make_teacher, rl_step
from .tasks import load_splits, problems_of
from .teacher import longest_privileged_prompt


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: says where the last checkpoint is and how to resume."""


def check_problem_counts(cfg: TrainConfig, n_train: int, n_validation: int) -> None:
    """Fail before any work if the task has fewer distinct prompts than a step or the probes ask for."""
    for field, need, have in (("prompts_per_step", cfg.prompts_per_step, n_train),
                              ("eval_problems", cfg.eval_problems, n_validation),
                              ("probe_problems", cfg.probe_problems, min(n_train, n_validation))):
        if need > have:
            raise ValueError(f"task {cfg.task!r} cannot produce {need} distinct problems for {field}: "
                             f"it has {have}; lower {field}")


def _check_lengths(model, tokenizer, problems: list, cfg: TrainConfig) -> None:
    """Fail before any work if the longest (teacher) prompt + completion exceeds the context."""
    longest = max(problems, key=lambda p: len(p.prompt) + len(p.solution))
    length = len(tokenizer(longest.prompt).input_ids)
    if METHODS[cfg.method].teacher is not None:
        length = longest_privileged_prompt(tokenizer, problems, cfg.teacher_context, cfg.privileged_template,
                                           cfg.max_new_tokens)
    check_fits(model, length, cfg.max_new_tokens)


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
        return _train(cfg, run, device, progress)
    except KeyboardInterrupt:
        where = (f"the last checkpoint (step {run.saved_step}) is in {run.ckpt}" if run.saved_step
                 else "no checkpoint was written yet")
        raise RunInterrupted(f"interrupted: {where}; run the same command again to resume") from None
    finally:
        run.release()


def _train(cfg: TrainConfig, run: RunDir, device, progress: bool) -> list[dict]:
    # --- set-up: the policy (the checkpoint, else the warm start), the data, every check ---
    state = None
    if run.has_checkpoint():
        policy, tokenizer, state = run.load(device)
    else:
        policy, tokenizer = model_io.load(cfg.base_path(), device)
    splits = load_splits(cfg.data_path())
    train_set, heldout = problems_of(splits["train"]), problems_of(splits["validation"])
    val_set = heldout[:cfg.eval_problems]
    check_problem_counts(cfg, len(train_set), len(heldout))
    _check_lengths(policy, tokenizer, train_set + val_set, cfg)
    done = state["history"][-1]["step"] if state else 0
    if done > cfg.steps:
        raise RunFolderError(f"{run.path} has already done {done} steps, more than steps={cfg.steps}; "
                             "ask for at least that many, or use a new run folder")
    ref_model = None
    if cfg.needs_reference():  # pi_ref: the frozen starting policy (the base, also when resuming)
        ref_model = model_io.load(cfg.base_path(), device)[0].eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    teacher = make_teacher(policy, cfg, train_set)
    floor = partial(distill_floor, teacher.model, tokenizer, cfg=cfg) if cfg.distill_floor else None
    policy.train()
    run.saved_step = done or None
    run.start(done)

    def evaluation() -> dict:
        row = {"eval_acc": evaluate(policy, tokenizer, val_set, cfg.eval_samples, seed=cfg.seed),
               "eval_acc_greedy": evaluate(policy, tokenizer, val_set, greedy=True)}
        if cfg.probe_problems:  # a method without a teacher probes with the minimal context
            probes = leakage_probes(policy, tokenizer, train_set[:cfg.probe_problems], heldout[:cfg.probe_problems],
                                    cfg.teacher_context or "answer", cfg.privileged_template, cfg.seed)
            row.update({f"probe_{k}": v for k, v in probes.items()})
        return row

    if state is not None:
        history = _restore(state, optimizer, teacher)
        run.write_metrics(history)  # drop lines written after the checkpoint
    else:
        torch.manual_seed(cfg.seed)
        history = [{"step": 0, **evaluation()}]
        run.write_metrics(history)  # a fresh start: rows of an attempt without a checkpoint go
    if progress and done:
        print(f"{run.path}: " + (f"finished ({done} of {cfg.steps} steps)" if done >= cfg.steps
                                 else f"resuming from step {done} of {cfg.steps}"))

    # --- the loop ---
    bar = tqdm(range(done, cfg.steps), desc=cfg.method, initial=done, total=cfg.steps, disable=not progress)
    for step in bar:
        problems = batch_problems(train_set, step, cfg)
        try:
            row = rl_step(policy, tokenizer, ref_model, optimizer, problems, cfg, step, teacher, floor)
        except NonFiniteLossError as e:
            saved = f"the last good checkpoint is intact in {run.ckpt}" if run.has_checkpoint() else "no checkpoint was written yet"
            raise NonFiniteLossError(f"{e}: training stopped before the update; {saved}") from None
        if row["step"] % cfg.eval_every == 0 or row["step"] == cfg.steps:
            row.update(evaluation())
            bar.set_postfix(reward=f"{row['reward_mean']:.2f}", acc=f"{row['eval_acc']:.2f}")
        row.update(lr=optimizer.param_groups[0]["lr"], num_tokens=history[-1].get("num_tokens", 0) + row["tokens"])
        history.append(row)
        if row["step"] % cfg.checkpoint_every == 0 or row["step"] == cfg.steps:
            run.save(policy, tokenizer, optimizer, history, teacher)  # the checkpoint, then its rows
        else:
            run.append(row)
    return history


def _restore(state: dict, optimizer, teacher) -> list[dict]:
    """Put the checkpointed optimiser, RNG and teacher state back; the checkpointed history."""
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if teacher is not None:
        teacher.load_state_dict(state["teacher"])
    return state["history"]


def last_eval(history: list[dict]) -> float:
    """Held-out sampled accuracy at the last evaluated step."""
    return [row["eval_acc"] for row in history if "eval_acc" in row][-1]

