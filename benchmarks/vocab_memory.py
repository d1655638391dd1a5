"""Peak memory of one RL step at a real vocabulary, old checkout against new.

    git worktree add /tmp/before 5fe4387
    python benchmarks/vocab_memory.py /tmp/before . --methods grpo,rlsd,sdpg

The model is the tiny Llama of the cpu profile (hidden 128, 2 layers, 4 heads) with Qwen's
vocabulary size, V = 151,936 (random embeddings and output layer); the batch is 2 prompts of
16 random tokens x 8 completions of 128 random tokens (16 rows x 128 positions), rewards
mixed in one group and equal in the other (A_i = 0 there, as in 36-46 % of mul7's groups).
For each method, in a fresh process per checkout: the reference's log-probs (when the method's
kl_coef > 0), the teacher's scores and one update (the student's forward, loss, backward and
AdamW step), under the allocator watch of rlsd_min.lab.bench.peak_memory_mb; the peak tensor
memory in MiB and the ratio new / old. Only APIs both checkouts have are used: StepBatch and
teacher_scores from rlsd_min.step, update, token_logprobs, peak_memory_mb.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys
import torch
sys.path.insert(0, {checkout!r})
from transformers import LlamaConfig, LlamaForCausalLM
from rlsd_min.advantages import group_advantages
from rlsd_min.config import train_config
from rlsd_min.lab.bench import peak_memory_mb
from rlsd_min.sampling import Rollout, token_logprobs
from rlsd_min.step import StepBatch, make_teacher, teacher_scores, update
torch.set_num_threads(2)
V, B, G, P, T = 151_936, 2, 8, 16, 128
g = torch.Generator().manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=512))
prompt = torch.randint(3, V, (B, P), generator=g)
rollout = Rollout(prompt.repeat_interleave(G, 0), torch.ones(B * G, P, dtype=torch.long),
                  torch.randint(3, V, (B * G, T), generator=g), torch.ones(B * G, T, dtype=torch.long),
                  [""] * (B * G), G)
rewards = torch.tensor([1.0, 0.0] * (G // 2) + [1.0] * G)
out = {{}}
for method in {methods!r}:
    cfg = train_config("cpu", method=method, group_size=G, max_new_tokens=T, prompts_per_step=B)
    start = {{k: v.clone() for k, v in model.state_dict().items()}}

    def step():
        model.load_state_dict(start)
        batch = StepBatch(rollout, rewards, group_advantages(rewards, G, cfg.adv_scale, cfg.adv_eps))
        if cfg.kl_coef > 0:                  # (cfg.needs_reference() where the checkout has it)
            with torch.no_grad():
                batch.ref_logp = token_logprobs(model, rollout)[0]
        teacher = make_teacher(model, cfg)
        if teacher is not None:
            t_ids = torch.cat([torch.randint(3, V, (B, 8), generator=torch.Generator().manual_seed(1)), prompt], 1)
            batch.teacher_logp, batch.teacher_logits, batch.teacher_rows = teacher_scores(
                teacher.model, t_ids, torch.ones_like(t_ids), rollout, batch.advantages, cfg)
        update(model, torch.optim.AdamW(model.parameters(), lr=cfg.lr), batch, cfg, 0)

    step()                                   # warm-up: the allocator's first-touch pages
    model.zero_grad(set_to_none=True)
    out[method] = peak_memory_mb(step, torch.device("cpu"))
print(json.dumps(out))
"""


def peaks(checkout: str, methods: list) -> dict:
    """{method: peak MiB} of one fresh process on `checkout`."""
    checkout = os.path.abspath(checkout)
    if not os.path.isdir(os.path.join(checkout, "rlsd_min")):
        raise SystemExit(f"error: {checkout!r} is not a checkout of rlsd_min (no rlsd_min/ folder in it)")
    env = dict(os.environ, PYTHONPATH=checkout, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", CHILD.format(checkout=checkout, methods=methods)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"error: the step on {checkout} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the checkout to compare against")
    parser.add_argument("new", help="the checkout measured")
    parser.add_argument("--methods", default="grpo,rlsd,sdpg,opsd,grpo_opsd", help="comma-separated")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    old, new = peaks(args.old, methods), peaks(args.new, methods)
    print("| method | old peak MiB | new peak MiB | new / old |\n|---|---|---|---|")
    for m in methods:
        print(f"| {m} | {old[m]:.0f} | {new[m]:.0f} | {new[m] / old[m]:.2f} |")


if __name__ == "__main__":
    main()
