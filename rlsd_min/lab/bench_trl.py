"""rlsd_min's GRPO step against TRL's GRPOTrainer on the same work, interleaved in one process.

The peer a user would otherwise pick: TRL's `GRPOTrainer` (`pip install .[bench]` brings
`trl`). Both sides get the identical saved model and tokenizer (`data/base`), the same
prompts, reward (rlsd_min.tasks.verify), group size, completion length, learning rate,
temperature 1 with no top-k/top-p, no reference model (beta 0), group-scaled advantages,
token-mean aggregation (TRL's `loss_type="dapo"`) and one update per batch.

Interleaving: a TrainerCallback times each TRL step (from on_step_begin to on_step_end,
generation included) and, right after it, runs and times one rlsd_min GRPO step on its
own copy of the model: T ours T ours ..., so both sides see the same machine load.
The ratio ours/TRL is taken step by step; the median over steps is reported.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time

import torch

from ..config import train_config
from ..methods import METHODS
from ..model import load
from ..step import batch_problems, rl_step
from ..tasks import load_splits, problems_of, verify


def require_trl():
    """Import trl, or exit with how to install it."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("the TRL comparison needs trl: pip install '.[bench]' (or pip install trl)") from None
    return trl


def trl_comparison(profile: str = "cpu", rounds: int = 5, warmup: int = 1, fields: dict | None = None) -> dict:
    """{'trl': [s/step], 'ours': [s/step]} for `rounds` steps after `warmup`, interleaved; our
    GRPO step's TrainConfig with `fields` set (the speed flags)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    trl = require_trl()
    from datasets import Dataset
    from transformers import TrainerCallback

    cfg = train_config(profile, method="grpo", **(fields or {}))
    ours, tokenizer = load(cfg.base_path())
    optimizer = torch.optim.AdamW(ours.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    train_set = problems_of(load_splits(cfg.data_path())["train"])
    steps = warmup + rounds
    rows = [{"prompt": p.prompt, "answer": p.answer}
            for step in range(steps) for p in batch_problems(train_set, step, cfg)]

    def reward(completions, answer, **kwargs):
        return [verify(c, a) for c, a in zip(completions, answer)]

    times = {"trl": [], "ours": []}

    class Interleave(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times["trl"].append(time.perf_counter() - self.t0)
            step = state.global_step - 1
            row = rl_step(ours, tokenizer, None, optimizer, batch_problems(train_set, step, cfg), cfg, step)
            times["ours"].append(row["step_time_s"])

    with tempfile.TemporaryDirectory() as out:
        args = trl.GRPOConfig(
            output_dir=out, per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size,
            num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature, top_k=0, top_p=1.0, beta=0.0, loss_type="dapo",
            scale_rewards="group", epsilon=cfg.eps_low, num_iterations=1, learning_rate=cfg.lr,
            lr_scheduler_type="constant", warmup_steps=0, adam_beta2=0.98, weight_decay=0.0,
            max_grad_norm=cfg.max_grad_norm, max_steps=steps, logging_strategy="no", save_strategy="no",
            report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False,
            gradient_checkpointing=False, seed=cfg.seed, shuffle_dataset=False, disable_tqdm=True)
        trainer = trl.GRPOTrainer(model=cfg.base_path(), reward_funcs=reward, args=args,
                                  train_dataset=Dataset.from_list(rows), processing_class=copy.deepcopy(tokenizer),
                                  callbacks=[Interleave()])
        trainer.train()
    return {k: v[warmup:] for k, v in times.items()}


def format_comparison(times: dict) -> str:
    """A markdown table of both sides' step times, then ours/TRL step by step and its median."""
    ratios = [o / t for o, t in zip(times["ours"], times["trl"])]
    lines = ["| | median s/step | min-max |", "|---|---|---|"]
    for name in ("trl", "ours"):
        ts = times[name]
        lines.append(f"| {'TRL GRPOTrainer' if name == 'trl' else 'rlsd_min grpo'} | "
                     f"{statistics.median(ts):.3f} | {min(ts):.3f}-{max(ts):.3f} |")
    return ("\n".join(lines) + "\n\nours / TRL per step: " + " ".join(f"{r:.2f}" for r in ratios)
            + f"\nours / TRL (median of per-step ratios): {statistics.median(ratios):.2f}")


# --- each rlsd_min TRL trainer against GRPOTrainer -------------------------------------------

TRAINER_METHODS = tuple(n for n, m in METHODS.items() if m.trl_trainer)
"""the methods with a TRL trainer (their records' trl_trainer)"""


def trainer_comparison(profile: str = "cpu", rounds: int = 5, warmup: int = 1,
                       methods: tuple = TRAINER_METHODS) -> dict:
    """{'grpo': [s/step], method: [s/step], ...}: TRL's GRPOTrainer and each rlsd_min trainer
    (rlsd_min.integrations.trl) on the same work, interleaved step by step.

    Same work as `trl_comparison` (the profile's model, prompts, group size, completion length,
    learning rate, sampling), each trainer with its method's defaults (RLSD's synced teacher,
    SDPG's live teacher and reference model, ...), the privileged context of the method's
    teacher_context. Interleaving: every trainer trains in its own thread, and a turnstile lets
    one step run at a time, in turn (GRPO, RLSD, SDPG, ... GRPO, ...), so all see the same load;
    at step k every trainer samples from the same RNG state. A step is timed from on_step_begin
    to on_step_end (sampling, teacher, loss, backward, optimiser); a trainer that has done its
    steps waits for the others before it wraps up. The ratio to GRPOTrainer is
    taken round by round; the median over rounds is reported.
    """
    import threading

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    trl = require_trl()
    from datasets import Dataset
    from transformers import TrainerCallback

    from ..integrations import trl as rt

    cfg = train_config(profile, method="grpo")
    _, tokenizer = load(cfg.base_path())
    train_set = problems_of(load_splits(cfg.data_path())["train"])
    steps = warmup + rounds
    problems = [p for step in range(steps) for p in batch_problems(train_set, step, cfg)]

    def rows(method: str | None) -> Dataset:
        kind = METHODS[method].defaults["teacher_context"] if method else "answer"
        return Dataset.from_list([{"prompt": p.prompt, "privileged_context": p.context(kind), "answer": p.answer}
                                  for p in problems])

    def reward(completions, answer, **kwargs):
        return [verify(c, a) for c, a in zip(completions, answer)]

    order = ("grpo", *methods)
    times = {name: [] for name in order}
    turn, errors = threading.Condition(), []
    state = {"next": 0, "finished": 0}

    class Turnstile(TrainerCallback):
        def __init__(self, index: int):
            self.index, self.name = index, order[index]

        def on_step_begin(self, args, st, control, **kwargs):
            with turn:
                turn.wait_for(lambda: state["next"] == self.index or errors)
            torch.manual_seed(cfg.seed * 1_000_003 + st.global_step)  # the same samples' RNG for all at step k
            self.t0 = time.perf_counter()

        def on_step_end(self, args, st, control, **kwargs):
            times[self.name].append(time.perf_counter() - self.t0)
            last = st.global_step >= st.max_steps
            with turn:
                state["next"] = (self.index + 1) % len(order)
                state["finished"] += last
                turn.notify_all()
                if last:  # a finished trainer's wrap-up would run beside the others' last steps: wait
                    turn.wait_for(lambda: state["finished"] == len(order) or errors)

    with tempfile.TemporaryDirectory() as out:
        common = dict(
            per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size, num_generations=cfg.group_size,
            max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_k=0, top_p=1.0,
            epsilon=cfg.eps_low, num_iterations=1, learning_rate=cfg.lr, lr_scheduler_type="constant",
            warmup_steps=0, adam_beta2=0.98, weight_decay=0.0, max_grad_norm=cfg.max_grad_norm, max_steps=steps,
            logging_strategy="no", save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
            bf16=False, activation_checkpointing=False, seed=cfg.seed, shuffle_dataset=False, disable_tqdm=True)
        trainers = []
        for i, name in enumerate(order):
            folder = f"{out}/{name}"
            if name == "grpo":
                args = trl.GRPOConfig(output_dir=folder, beta=0.0, loss_type="dapo", scale_rewards="group", **common)
                cls = trl.GRPOTrainer
            else:
                args = rt.CONFIGS[name](output_dir=folder, **common)
                cls = rt.TRAINERS[name]
            trainers.append(cls(model=cfg.base_path(), reward_funcs=reward, args=args,
                                train_dataset=rows(None if name == "grpo" else name),
                                processing_class=copy.deepcopy(tokenizer), callbacks=[Turnstile(i)]))

        def run(trainer):
            try:
                trainer.train()
            except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
                with turn:
                    errors.append(e)
                    turn.notify_all()

        threads = [threading.Thread(target=run, args=(t,)) for t in trainers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return {k: v[warmup:] for k, v in times.items()}


def format_trainer_comparison(times: dict) -> str:
    """A markdown table: each trainer's median s/step, its range, and its ratio to GRPOTrainer
    (the median of the per-round ratios), then the per-round ratios."""
    base = times["grpo"]
    lines = ["| trainer | median s/step | min-max | ratio to GRPOTrainer |", "|---|---|---|---|"]
    notes = []
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        label = "TRL GRPOTrainer" if name == "grpo" else trainer_name(name)
        lines.append(f"| {label} | {statistics.median(ts):.3f} | {min(ts):.3f}-{max(ts):.3f} | "
                     f"{statistics.median(ratios):.2f} |")
        if name != "grpo":
            notes.append(f"{name} / GRPOTrainer per round: " + " ".join(f"{r:.2f}" for r in ratios))
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def trainer_name(method: str) -> str:
    """The trainer that runs `method`, as the comparison's table names it: the record's
    trl_trainer, with the config settings that select the method (OPSDConfig's with_reward)."""
    from ..integrations import trl_configs

    m = METHODS[method]
    flags = getattr(trl_configs, m.trl_config).flags_for(method)
    settings = ", ".join(f"{k}={v}" for k, v in flags.items() if v)
    return f"{m.trl_trainer}({settings})" if settings else m.trl_trainer
