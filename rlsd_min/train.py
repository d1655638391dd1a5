"""The RL loop: sample a group per prompt, score, compute advantages, update. Every method.

One step, top to bottom:
    1. draw `prompts_per_step` training problems (deterministic from seed and step)
    2. sample G completions each from the current policy            (rlsd_min.sampling)
    3. reward them with the verifier, group-normalise               (rlsd_min.advantages)
    4. score them once under the reference policy, if kl_coef > 0   (rlsd_min.reference_kl)
    5. `num_iterations` updates of the method's loss                (rlsd_min.methods)

Simplifications, as in nanochat's chat_rl: one optimiser step per iteration on the
whole batch (no minibatches), a constant learning rate, and no value function. With
num_iterations = 1 the PPO ratio is exactly 1 and the clip never acts; the first
iteration's own forward pass provides the old log-probs, so nothing is computed twice.

A run lives in one folder: config.json, metrics.jsonl (one line per step), metrics.csv,
and checkpoint/ (model, tokenizer, optimiser and RNG state), written atomically every
`checkpoint_every` steps. Calling `train` again on the folder resumes from the last
checkpoint with the same config; a different config is refused.
"""

from __future__ import annotations

import csv
import json
import os
import random
import time

import torch
from tqdm.auto import tqdm

from . import model as model_io
from .advantages import frac_zero_std, group_advantages
from .config import TrainConfig, pick_device, save_json
from .evaluate import evaluate
from .leakage import FLOORS, leakage_probes, reference_floor
from .objective import aggregate
from .methods import METHODS, StepBatch
from .sampling import bf16_autocast, check_fits, entropy, masked_mean, sample_group, token_logprobs
from .tasks import load_splits, problems_of
from .teacher import Teacher, teacher_logprobs, teacher_prompt


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became inf/nan; training stopped before the bad update."""


def _clock(device: torch.device) -> float:
    """Wall time, after waiting for queued GPU work (so phases are timed, not just launched)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def batch_problems(problems: list, step: int, cfg: TrainConfig) -> list:
    """The prompts of one step: a pure function of (seed, step), so a resumed run sees the same."""
    return random.Random(cfg.seed * 1_000_003 + step).sample(problems, cfg.prompts_per_step)


def rl_step(policy, tokenizer, ref_model, optimizer, problems: list, cfg: TrainConfig, step: int,
            teacher: Teacher | None = None) -> dict:
    """One RL step on `problems`; returns the step's metrics, the time of each phase included.

    cfg.bf16_autocast wraps each forward (sampling, reference, teacher, student) in
    bfloat16 autocast; the logits come out as float32, so log-probs, losses and the
    backward pass are float32. cfg.static_cache_compile is handed to sample_group.
    """
    device = next(policy.parameters()).device
    clock = {"start": _clock(device)}
    with bf16_autocast(device, cfg.bf16_autocast):
        rollout = sample_group(policy, tokenizer, [p.prompt for p in problems], cfg.group_size,
                               cfg.max_new_tokens, cfg.temperature, static_cache_compile=cfg.static_cache_compile)
    rows = [p for p in problems for _ in range(cfg.group_size)]
    rewards = torch.tensor([p.reward(t) for p, t in zip(rows, rollout.texts)],
                           device=rollout.completion_ids.device)                   # (N,)
    advantages = group_advantages(rewards, cfg.group_size, cfg.adv_scale, cfg.adv_eps)  # (N,)
    clock["sample"] = _clock(device)
    ref_logp = None
    if ref_model is not None:
        with torch.inference_mode(), bf16_autocast(device, cfg.bf16_autocast):
            ref_logp = token_logprobs(ref_model, rollout, cfg.temperature)[0].clone()   # (N, T)
    clock["ref"] = _clock(device)

    method, mask = METHODS[cfg.method], rollout.completion_mask
    teacher_logp = teacher_logits = None
    extra = {}  # the OPSD loss floor, on a task with several references (rlsd_min.leakage)
    if method.teacher is not None:
        prompts = [teacher_prompt(p.prompt, p.context(cfg.teacher_context), cfg.privileged_template)
                   for p in problems]
        full_vocab = method.teacher == "logits" and cfg.divergence != "sampled"
        with bf16_autocast(device, cfg.bf16_autocast):
            out = teacher_logprobs(teacher.model, tokenizer, prompts, rollout, return_logits=full_vocab,
                                   temperature=cfg.temperature)              # (N, T) [, (N, T, V)]
        teacher_logp, teacher_logits = out if full_vocab else (out, None)
        if full_vocab and cfg.divergence in FLOORS and hasattr(problems[0], "references"):
            floor = reference_floor(teacher.model, tokenizer, problems, rollout, cfg.divergence,
                                    cfg.privileged_template, cfg.temperature)            # (N, T)
            extra["distill_floor"] = aggregate(floor, mask, cfg.loss_agg, cfg.group_size).item()
    clock["teacher"] = _clock(device)
    batch, optim_s = None, 0.0
    for _ in range(cfg.num_iterations):
        with bf16_autocast(device, cfg.bf16_autocast):
            logp, logits = token_logprobs(policy, rollout, cfg.temperature)         # (N, T), (N, T, V) float32
        if batch is None:  # first update: the weights are still the sampling policy's
            batch = StepBatch(rollout, rewards, advantages, logp.detach(), ref_logp, teacher_logp, teacher_logits)
        loss, metrics = method.loss(logp, logits, batch, cfg, step)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise NonFiniteLossError(f"non-finite gradient norm at step {step}")
        t_opt = _clock(device)
        optimizer.step()
        optim_s += _clock(device) - t_opt
    if teacher is not None:
        teacher.update(policy, step + 1)
    clock["update"] = _clock(device)
    with torch.no_grad():
        ent = masked_mean(entropy(logits), mask).item()
    return {
        "step": step + 1, "loss": loss.item(), **metrics, **extra,
        "reward_mean": rewards.mean().item(),
        "frac_zero_std": frac_zero_std(rewards, cfg.group_size),
        "entropy": ent,
        "completion_len": mask.sum(1).float().mean().item(),
        "grad_norm": grad_norm.item(),
        "step_time_s": clock["update"] - clock["start"],
        "time_sample_s": clock["sample"] - clock["start"],       # generate + verify + advantages
        "time_ref_s": clock["ref"] - clock["sample"],            # reference-model forward
        "time_teacher_s": clock["teacher"] - clock["ref"],       # teacher forward (+ floor, if logged)
        "time_update_s": clock["update"] - clock["teacher"] - optim_s,  # student fwd + bwd, teacher sync
        "time_optim_s": optim_s,                                 # optimiser steps
    }


class RunDir:
    """A run's folder: config check, metrics files, atomic checkpoints."""

    def __init__(self, path: str, cfg: TrainConfig):
        self.path, self.cfg = str(path), cfg
        self.ckpt = os.path.join(self.path, "checkpoint")
        self.cfg_path = os.path.join(self.path, "config.json")
        if os.path.exists(self.cfg_path):
            with open(self.cfg_path) as f:
                old = json.load(f)
            diff = sorted(k for k in set(old) | set(cfg.to_dict()) if old.get(k) != cfg.to_dict().get(k))
            if diff:
                raise ValueError(
                    f"{self.path} holds a run with a different config (fields {diff} differ); "
                    "resume it with the same config, or pass a new output folder")

    def start(self) -> None:
        """Create the folder and record the config (once every check has passed)."""
        os.makedirs(self.path, exist_ok=True)
        if not os.path.exists(self.cfg_path):
            save_json(self.cfg.to_dict(), self.cfg_path)

    def has_checkpoint(self) -> bool:
        return os.path.isfile(os.path.join(self.ckpt, "state.pt"))

    def save(self, policy, tokenizer, optimizer, history: list, teacher: Teacher | None) -> None:
        state = {"optimizer": optimizer.state_dict(), "history": history,
                 "teacher": teacher.state_dict() if teacher is not None else None,
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        model_io.save(policy, tokenizer, self.ckpt, extra={"state.pt": state})
        self.write_metrics(history)

    def load_state(self) -> dict:
        return torch.load(os.path.join(self.ckpt, "state.pt"), weights_only=False)

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


def _check_lengths(model, tokenizer, problems: list, cfg: TrainConfig) -> None:
    """Fail before any work if the longest (teacher) prompt + completion exceeds the context."""
    longest = max(problems, key=lambda p: len(p.prompt) + len(p.solution))
    prompt = longest.prompt
    if METHODS[cfg.method].teacher is not None:
        prompt = teacher_prompt(longest.prompt, longest.context(cfg.teacher_context), cfg.privileged_template)
    check_fits(model, len(tokenizer(prompt).input_ids), cfg.max_new_tokens)


def train(cfg: TrainConfig, out_dir: str, device=None, progress: bool = True) -> list[dict]:
    """Run (or resume) RL in `out_dir`; return the metrics history (one dict per step).

    Step 0 of the history is the evaluation of the starting policy.
    """
    cfg.validate()
    device = pick_device(device)
    run = RunDir(out_dir, cfg)
    resuming = run.has_checkpoint()
    policy, tokenizer = model_io.load(run.ckpt if resuming else cfg.base_checkpoint, device)
    splits = load_splits(cfg.data_dir)
    train_set, heldout = problems_of(splits["train"]), problems_of(splits["validation"])
    val_set = heldout[:cfg.eval_problems]
    check_problem_counts(cfg, len(train_set), len(heldout))
    _check_lengths(policy, tokenizer, train_set + val_set, cfg)
    ref_model = None
    if cfg.kl_coef > 0:  # pi_ref: the frozen starting policy (the base, also when resuming)
        ref_model = model_io.load(cfg.base_checkpoint, device)[0].eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    policy.train()
    run.start()
    teacher = None
    if METHODS[cfg.method].teacher is not None:
        teacher = Teacher(policy, cfg.teacher_mode, cfg.sync_every, cfg.ema_rate)

    def evaluation() -> dict:
        row = {"eval_acc": evaluate(policy, tokenizer, val_set, seed=cfg.seed),
               "eval_acc_greedy": evaluate(policy, tokenizer, val_set, greedy=True)}
        if cfg.probe_problems:
            probes = leakage_probes(policy, tokenizer, train_set[:cfg.probe_problems], heldout[:cfg.probe_problems],
                                    "answer", cfg.privileged_template, cfg.seed)
            row.update({f"probe_{k}": v for k, v in probes.items()})
        return row

    if resuming:
        state = run.load_state()
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

