"""Supervised warm start: teach the tiny model the scratchpad format, stop at partial competence.

RL from a random model would see reward 0 everywhere, and RL from a perfect one sees
reward 1 everywhere: in both cases every group has equal rewards and zero advantage.
So the warm start trains by maximum likelihood on reference solutions and stops as
soon as *sampled* validation accuracy reaches `target_acc` (about 30-60%).

Two simplifications, both stated here:
- Problems are drawn fresh every step (the space of 3-digit additions is 10^6), but
  never one of the validation, test or ood problems, so held-out numbers stay held out.
- A fraction `privileged_frac` of sequences is shown with the teacher prompt
  (rlsd_min.teacher): a model trained from scratch has never seen a reference in
  its context, and an LLM teacher's ability to read one is what the self-distillation
  methods assume. The loss is on completion tokens only in both cases.
"""

from __future__ import annotations

import random
import time

import torch
from tqdm.auto import tqdm

from .config import ModelConfig, SFTConfig, pick_device, save_json
from .evaluation import evaluate
from .model import build_model, build_tokenizer, n_params, save
from .objective import masked_mean
from .sampling import completion_logits, encode_completions, encode_prompts, gather_logprobs
from .tasks import TaskConfig, load_splits, problems_of, random_problem
from .teacher import teacher_prompt


def sft_loss(model, tokenizer, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """Mean negative log-likelihood of the completion tokens (eos included) given prompts."""
    device = model.device
    p_ids, p_mask = encode_prompts(tokenizer, prompts, device)              # (N, P)
    c_ids, c_mask = encode_completions(tokenizer, completions, device)      # (N, T)
    logits = completion_logits(model, p_ids, p_mask, c_ids, c_mask)         # (N, T, V)
    return -masked_mean(gather_logprobs(logits, c_ids), c_mask)


def warm_start(out_path: str, data_dir: str, model_cfg: ModelConfig | None = None,
               task_cfg: TaskConfig | None = None, cfg: SFTConfig | None = None,
               device=None, progress: bool = True) -> dict:
    """Train a fresh model until sampled validation accuracy >= cfg.target_acc; save it.

    Returns a summary dict (also written to out_path/warmstart.json).
    """
    model_cfg, task_cfg, cfg = model_cfg or ModelConfig(), task_cfg or TaskConfig(), cfg or SFTConfig()
    if not 0 < cfg.target_acc <= 1:
        raise ValueError(f"target_acc must be in (0, 1], got {cfg.target_acc}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    splits = load_splits(data_dir)
    held_out = {p.prompt for name in ("validation", "test", "ood") for p in problems_of(splits[name])}
    val = problems_of(splits["validation"])[:cfg.eval_problems]

    tokenizer = build_tokenizer()
    model = build_model(model_cfg, tokenizer, seed=cfg.seed).to(pick_device(device))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)

    start, acc, history = time.time(), 0.0, []
    bar = tqdm(range(1, cfg.max_steps + 1), desc="warm start", disable=not progress)
    for step in bar:
        problems = []
        while len(problems) < cfg.batch_size:
            p = random_problem(rng, tuple(task_cfg.ops), task_cfg.digits)
            if p.prompt not in held_out:
                problems.append(p)
        prompts = [teacher_prompt(p.prompt, p.context(rng.choice(("answer", "solution"))))
                   if rng.random() < cfg.privileged_frac else p.prompt for p in problems]
        loss = sft_loss(model, tokenizer, prompts, [p.solution for p in problems])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0:
            acc = evaluate(model, tokenizer, val, seed=cfg.seed)
            history.append({"step": step, "loss": loss.item(), "val_acc_sampled": acc,
                            "time_s": time.time() - start})
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
            if acc >= cfg.target_acc:
                break
    summary = {
        "steps": step, "val_acc_sampled": acc, "target_acc": cfg.target_acc,
        "val_acc_greedy": evaluate(model, tokenizer, val, greedy=True),
        "seconds": round(time.time() - start, 1), "params": n_params(model),
        "model": vars(model_cfg), "task": {**vars(task_cfg), "ops": list(task_cfg.ops)},
        "sft": vars(cfg), "history": history,
    }
    save(model, tokenizer, out_path)
    save_json(summary, f"{out_path}/warmstart.json")
    return summary
