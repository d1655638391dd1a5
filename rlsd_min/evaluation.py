"""Held-out accuracy: sample completions for problems and score them with the verifier."""

from __future__ import annotations

import torch

from .sampling import sample_group


def evaluate(model, tokenizer, problems, samples: int = 1, greedy: bool = False, seed: int = 0,
             batch_size: int = 256) -> float:
    """Mean verifier reward over problems x samples completions (T = 1, or greedy).

    Sampled accuracy (pass@1 at temperature 1) is what RL optimises; greedy accuracy is
    what the model 'knows' at its mode. The sampling RNG is forked and seeded, so an
    evaluation neither depends on nor disturbs the training RNG, and two evaluations
    with the same seed use the same random numbers (lower-variance comparisons).
    """
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    max_new = max(p.max_chars for p in problems) + 4
    was_training = model.training
    model.eval()
    correct, total = 0.0, 0
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, len(problems), batch_size):
            chunk = problems[i:i + batch_size]
            g = 1 if greedy else samples
            rollout = sample_group(model, tokenizer, [p.prompt for p in chunk], g, max_new, greedy=greedy)
            rows = [p for p in chunk for _ in range(g)]
            correct += sum(p.reward(t) for p, t in zip(rows, rollout.texts))
            total += len(rows)
    model.train(was_training)
    return correct / total
