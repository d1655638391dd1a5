"""rlsd_min's GRPO step against TRL's GRPOTrainer, and rlsd_min's TRL trainers against
GRPOTrainer and TRL's SDPOTrainer, on the same work, interleaved in one process.

    trl_comparison       rlsd_min's own GRPO step against GRPOTrainer     (bench --trl)
    trainer_comparison   each rlsd_min TRL trainer against GRPOTrainer;   (bench --trl-trainers)
                         with 'sdpo' among the methods, GRPO+OPSD with a  (--methods sdpo)
                         sibling teacher against SDPOTrainer in full-logit
                         mode, live and ema teacher (sdpo_pairs)

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
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import pick_device, train_config
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

    from ..integrations.trl_configs import checkpointing

    cfg = train_config(profile, method="grpo", **(fields or {}))
    device = pick_device()                                 # TRL's trainer runs there too (use_cpu)
    ours, tokenizer = load(cfg.base_path(), device)
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
            report_to="none", use_cpu=device.type == "cpu", bf16=False,
            **checkpointing(False), seed=cfg.seed, shuffle_dataset=False, disable_tqdm=True)
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


# --- each rlsd_min TRL trainer against GRPOTrainer, and GRPO+OPSD against SDPOTrainer ---------

TRAINER_METHODS = tuple(n for n, m in METHODS.items() if m.trl_trainer)
"""the methods with a TRL trainer (their records' trl_trainer)"""
PEER = "sdpo"
"""the name in `methods` that adds TRL's SDPOTrainer side by side with our GRPO+OPSD trainer
with a `sibling` teacher (`sdpo_pairs`), one pair per teacher of SDPO_TEACHERS"""
SDPO_TEACHERS = ("live", "ema")
"""the teachers the SDPO pairs run: the current weights, and the moving average (SDPO's default)"""


@dataclass
class Contestant:
    """One trainer of the comparison: `key` in the results, `label` in the table, `pair` the key
    of the SDPOTrainer it is compared with (None: compared with GRPOTrainer only), and
    build(folder, steps, callbacks) -> a trainer ready to train `steps` steps."""
    key: str
    label: str
    build: Callable
    pair: str | None = None


def sdpo_pairs(cfg, common: dict, rows: Callable, reward: Callable, tokenizer) -> list[Contestant]:
    """TRL's SDPOTrainer and our GRPO+OPSD trainer (teacher_context='sibling') on the same work,
    per teacher of SDPO_TEACHERS, where the objectives coincide (tests/test_sdpo.py checks the
    loss and gradients): SDPO in full-logit mode with distillation_alpha 1 (our divergence
    'reverse'), distillation_weight w = beta / (1 + beta) for our distill_coef beta (GRPO+OPSD's
    default; SDPO's loss is then (1 - w) x ours), loss_type 'grpo' = loss_agg 'seq-mean', no
    importance-sampling clip (num_iterations 1), the EMA at our ema_rate every step, and our
    privileged_template SDPO's teacher prompt (trl_teacher.sdpo_template). The rows carry no
    privileged_context: both teachers are shown a success of the row's group."""
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from ..integrations import trl as rt

    beta = METHODS["grpo_opsd"].defaults["distill_coef"]
    pairs = []
    for teacher in SDPO_TEACHERS:
        def sdpo_args(folder: str, steps: int, teacher=teacher):
            return SDPOConfig(output_dir=folder, **{**common, "max_steps": steps}, distillation_mode="full_logits",
                              distillation_alpha=1.0, distillation_weight=beta / (1 + beta),
                              distillation_is_clip=None, teacher_model_kind=teacher, teacher_update_rate=cfg.ema_rate,
                              teacher_sync_steps=1, loss_type="grpo", beta=0.0, scale_rewards="group")

        def build_sdpo(folder, steps, callbacks, sdpo_args=sdpo_args):
            return SDPOTrainer(model=cfg.base_path(), reward_funcs=reward, args=sdpo_args(folder, steps),
                               train_dataset=rows(None), processing_class=copy.deepcopy(tokenizer),
                               callbacks=callbacks)

        def build_ours(folder, steps, callbacks, sdpo_args=sdpo_args, teacher=teacher):
            args = rt.CONFIGS["grpo_opsd"](
                output_dir=folder, **{**common, "max_steps": steps}, teacher_context="sibling", teacher_mode=teacher,
                ema_rate=cfg.ema_rate, divergence="reverse", distill_coef=beta, loss_agg="seq-mean",
                privileged_template=rt.sdpo_template(sdpo_args(folder, steps)))
            return rt.TRAINERS["grpo_opsd"](model=cfg.base_path(), reward_funcs=reward, args=args,
                                            train_dataset=rows(None), processing_class=copy.deepcopy(tokenizer),
                                            callbacks=callbacks)

        sdpo_key = f"sdpo {teacher}"
        pairs += [Contestant(sdpo_key, f"TRL SDPOTrainer, {teacher} teacher", build_sdpo),
                  Contestant(f"grpo_opsd sibling {teacher}", f"{trainer_name('grpo_opsd')}, sibling, {teacher} teacher",
                             build_ours, pair=sdpo_key)]
    return pairs


def trainer_comparison(profile: str = "cpu", rounds: int = 5, warmup: int = 1,
                       methods: tuple = TRAINER_METHODS) -> dict:
    """{key: {"label", "times": [s/step], "peak_mem_mb", "pair"}}: TRL's GRPOTrainer, each
    rlsd_min trainer of `methods` (rlsd_min.integrations.trl), and with PEER ('sdpo') among them
    the SDPO pairs (`sdpo_pairs`), on the same work, interleaved step by step.

    Same work as `trl_comparison` (the profile's model, prompts, group size, completion length,
    learning rate, sampling), each trainer with its method's defaults (RLSD's synced teacher,
    SDPG's live teacher and reference model, ...), the privileged context of the method's
    teacher_context. Interleaving: every trainer trains in its own thread, and a turnstile lets
    one step run at a time, in turn (GRPO, RLSD, SDPG, ... GRPO, ...: A B A B for a pair), so all
    see the same load; at step k every trainer samples from the same RNG state. A step is timed
    from on_step_begin to on_step_end (sampling, teacher, loss, backward, optimiser); a trainer
    that has done its steps waits for the others before it wraps up. The ratios are taken round
    by round; the median over rounds is reported.

    Peak memory (rlsd_min.lab.bench.peak_memory_mb, MEMORY_NOTE) comes after the timed rounds,
    from one more, untimed step of each trainer, built afresh and run alone: the peak of tensor
    memory allocated during its `train()` of one step above what was held before it. The models
    and the teachers' own weights (a copy for ema) are held before it on both sides (our teacher
    is made first, as SDPOTrainer makes its own when built); the optimiser's state is allocated
    inside it on both sides.
    """
    import threading

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    unknown = [m for m in methods if m not in (*TRAINER_METHODS, PEER)]
    if unknown:
        raise ValueError(f"no TRL trainer for {unknown}; choose from {(*TRAINER_METHODS, PEER)}")
    trl = require_trl()
    from datasets import Dataset
    from transformers import TrainerCallback

    from ..integrations import trl as rt
    from .bench import peak_memory_mb

    cfg = train_config(profile, method="grpo")
    _, tokenizer = load(cfg.base_path())
    train_set = problems_of(load_splits(cfg.data_path())["train"])
    steps = warmup + rounds
    problems = [p for step in range(steps) for p in batch_problems(train_set, step, cfg)]

    def rows(kind: str | None) -> Dataset:
        """The step's prompts and answers, with the privileged context of `kind` (None: none)."""
        return Dataset.from_list([{"prompt": p.prompt, "answer": p.answer,
                                   **({"privileged_context": p.context(kind)} if kind else {})} for p in problems])

    def reward(completions, answer, **kwargs):
        return [verify(c, a) for c, a in zip(completions, answer)]

    common = dict(
        per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size, num_generations=cfg.group_size,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_k=0, top_p=1.0,
        epsilon=cfg.eps_low, num_iterations=1, learning_rate=cfg.lr, lr_scheduler_type="constant",
        warmup_steps=0, adam_beta2=0.98, weight_decay=0.0, max_grad_norm=cfg.max_grad_norm, max_steps=steps,
        logging_strategy="no", save_strategy="no", report_to="none", use_cpu=pick_device().type == "cpu",
        bf16=False, **rt.checkpointing(False), seed=cfg.seed, shuffle_dataset=False, disable_tqdm=True)

    def grpo(folder, n, callbacks):
        args = trl.GRPOConfig(output_dir=folder, **{**common, "max_steps": n}, beta=0.0, loss_type="dapo",
                              scale_rewards="group")
        return trl.GRPOTrainer(model=cfg.base_path(), reward_funcs=reward, args=args, train_dataset=rows("answer"),
                               processing_class=copy.deepcopy(tokenizer), callbacks=callbacks)

    def ours(method: str):
        def build(folder, n, callbacks):
            return rt.TRAINERS[method](model=cfg.base_path(), reward_funcs=reward,
                                       args=rt.CONFIGS[method](output_dir=folder, **{**common, "max_steps": n}),
                                       train_dataset=rows(METHODS[method].defaults["teacher_context"]),
                                       processing_class=copy.deepcopy(tokenizer), callbacks=callbacks)
        return build

    order = [Contestant("grpo", "TRL GRPOTrainer", grpo)]
    order += [Contestant(m, trainer_name(m), ours(m)) for m in methods if m != PEER]
    if PEER in methods:
        order += sdpo_pairs(cfg, common, rows, reward, tokenizer)
    times = {c.key: [] for c in order}
    turn, errors = threading.Condition(), []
    state = {"next": 0, "finished": 0}

    class Turnstile(TrainerCallback):
        def __init__(self, index: int):
            self.index, self.key = index, order[index].key

        def on_step_begin(self, args, st, control, **kwargs):
            with turn:
                turn.wait_for(lambda: state["next"] == self.index or errors)
            torch.manual_seed(cfg.seed * 1_000_003 + st.global_step)  # the same samples' RNG for all at step k
            self.t0 = time.perf_counter()

        def on_step_end(self, args, st, control, **kwargs):
            times[self.key].append(time.perf_counter() - self.t0)
            last = st.global_step >= st.max_steps
            with turn:
                state["next"] = (self.index + 1) % len(order)
                state["finished"] += last
                turn.notify_all()
                if last:  # a finished trainer's wrap-up would run beside the others' last steps: wait
                    turn.wait_for(lambda: state["finished"] == len(order) or errors)

    with tempfile.TemporaryDirectory() as out:
        trainers = [c.build(f"{out}/{i}", steps, [Turnstile(i)]) for i, c in enumerate(order)]

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
        del trainers, threads
        peaks = {}
        for i, c in enumerate(order):                    # one more step each, alone, for its memory
            torch.manual_seed(cfg.seed * 1_000_003 + steps)
            trainer = c.build(f"{out}/memory{i}", 1, [])
            if isinstance(trainer, rt._SelfDistillationTrainer):
                trainer._teacher_of()                    # held before the step, as SDPOTrainer's is
            device = next(trainer.model.parameters()).device
            peaks[c.key] = peak_memory_mb(trainer.train, device)
            del trainer
    return {c.key: {"label": c.label, "times": times[c.key][warmup:], "peak_mem_mb": peaks[c.key], "pair": c.pair}
            for c in order}


def format_trainer_comparison(results: dict) -> str:
    """A markdown table: each trainer's median s/step, its range, its ratio to GRPOTrainer (the
    median of the per-round ratios) and its peak MiB (MEMORY_NOTE); then, for the SDPO pairs,
    ours / SDPOTrainer in time (the median of the per-round ratios) and in peak memory; then the
    per-round ratios."""
    from .bench import MEMORY_NOTE

    base = results["grpo"]["times"]
    lines = ["| trainer | median s/step | min-max | ratio to GRPOTrainer | peak MiB |", "|---|---|---|---|---|"]
    notes = []
    for key, r in results.items():
        ts = r["times"]
        ratios = [t / b for t, b in zip(ts, base)]
        lines.append(f"| {r['label']} | {statistics.median(ts):.3f} | {min(ts):.3f}-{max(ts):.3f} | "
                     f"{statistics.median(ratios):.2f} | {r['peak_mem_mb']:.1f} |")
        if key != "grpo":
            notes.append(f"{key} / GRPOTrainer per round: " + " ".join(f"{x:.2f}" for x in ratios))
    pairs = [(r, results[r["pair"]]) for r in results.values() if r["pair"]]
    if pairs:
        lines += ["", "| ours / TRL SDPOTrainer | s/step (median of per-round ratios) | peak memory |", "|---|---|---|"]
        for mine, theirs in pairs:
            ratios = [a / b for a, b in zip(mine["times"], theirs["times"])]
            lines.append(f"| {mine['label']} / {theirs['label']} | {statistics.median(ratios):.2f} | "
                         f"{mine['peak_mem_mb'] / theirs['peak_mem_mb']:.2f} |")
            notes.append(f"{mine['label']} / {theirs['label']} per round: " + " ".join(f"{x:.2f}" for x in ratios))
    return "\n".join(lines) + f"\n\n{MEMORY_NOTE}\n" + "\n".join(notes)


def trainer_name(method: str) -> str:
    """The trainer that runs `method`, as the comparison's table names it: the record's
    trl_trainer, with the config settings that select the method (OPSDConfig's with_reward)."""
    from ..integrations import trl_configs

    m = METHODS[method]
    flags = getattr(trl_configs, m.trl_config).flags_for(method)
    settings = ", ".join(f"{k}={v}" for k, v in flags.items() if v)
    return f"{m.trl_trainer}({settings})" if settings else m.trl_trainer
