"""The machine's own limit, and how far each phase of an RL step is from it.

`matmul_rate` times float32 matrix products of the step's own shapes (a batch of token
vectors through the MLP's up- and down-projections) on the device: the rate the step could
reach if all of its work were such products. `phase_flops` counts the arithmetic each phase
needs, and `bench` divides the two by the measured phase times.

What is counted (simplified, as in the usual 6 N D estimate): every matrix product with the
weights, 2 FLOPs per multiply-add, per token: 2 * (L * (4 d^2 + 3 d f) + d V) for a Llama
block of width d, MLP width f, L layers and vocabulary V (the tied output projection
included); plus attention, 4 d c per token per layer for a context of c tokens (the scores and
the weighted sum). Norms, activations and softmax are left out (a few percent here). The
tokens counted are the ones the computation needs: a completion's real tokens, not the
padding after its <eos>, so work spent on padding shows up as a lower rate. A backward pass
costs twice its forward.
"""

from __future__ import annotations

import statistics
import time

import torch


def forward_flops(config, tokens: float, context: float) -> float:
    """FLOPs of a forward pass over `tokens` tokens attending to `context` tokens on average."""
    d, f, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    per_token = 2 * (L * (4 * d * d + 3 * d * f) + d * V) + 4 * d * context * L
    return per_token * tokens


def phase_flops(config, n_prompts: int, group_size: int, prompt_len: float, completion_len: float) -> dict:
    """{'sample': FLOPs of sampling, 'update': of the student's forward + backward} for one step
    of n_prompts x group_size rows, prompts of prompt_len tokens, completions of completion_len
    tokens on average.

    Sampling: a forward over every row's prompt, then one token at a time, each attending to
    the prompt and the tokens before it. The update: the prompts once per group (their cache
    shared), the completions after them, forward and backward (x 3)."""
    rows = n_prompts * group_size
    prefill = forward_flops(config, rows * prompt_len, prompt_len / 2)
    decode = forward_flops(config, rows * completion_len, prompt_len + completion_len / 2)
    student = (forward_flops(config, n_prompts * prompt_len, prompt_len / 2)
               + forward_flops(config, rows * completion_len, prompt_len + completion_len / 2))
    return {"sample": prefill + decode, "update": 3 * student}


def matmul_rate(config, rows: int, device, rounds: int = 7) -> float:
    """Median GFLOP/s of float32 products (rows x d) @ (d x f) and (rows x f) @ (f x d) on `device`:
    the shapes of the MLP over a step's tokens."""
    device = torch.device(device)
    d, f = config.hidden_size, config.intermediate_size
    x, up = torch.randn(rows, d, device=device), torch.randn(d, f, device=device)
    h, down = torch.randn(rows, f, device=device), torch.randn(f, d, device=device)
    flops, times = 2 * 2 * rows * d * f, []
    for r in range(rounds + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            x @ up
            h @ down
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r:  # the first round warms up
            times.append((time.perf_counter() - start) / 10)
    return flops / statistics.median(times) / 1e9
