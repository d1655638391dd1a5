"""Sampling throughput of two or more checkouts of rlsd_min, old against new in alternation.

    git worktree add /tmp/before <commit>        # the checkout to compare against
    python benchmarks/sampling_ab.py /tmp/before . --rounds 3
    python benchmarks/sampling_ab.py /tmp/before . .:compiled --rounds 3

Each entry is a checkout folder, with `:compiled` to sample with compile_decoding=True (the
name static_cache_compile in a checkout older than the rename).
Every round runs each entry once, in turn (A B C A B C ...), each in a fresh process with 2
torch threads that loads this checkout's shipped warm start (data/base), draws the cpu
profile's batch (16 arith training prompts x 8 completions, up to 40 new tokens, temperature 1),
samples it twice to warm up (a compiled entry compiles there), then times six seeded
`sample_group` calls and prints the median of their completion tokens (<eos> included) per
second. The ratio of each entry to the first is taken round by round; the table gives every
round's figures and the median ratio. Only `sample_group(model, tokenizer, prompts, G,
max_new_tokens, compile_decoding=...)` (or its old name) is asked of a checkout, so older ones run too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import random, statistics, sys, time
import torch
sys.path.insert(0, {checkout!r})
from rlsd_min.model import load
from rlsd_min.sampling import sample_group
from rlsd_min.tasks import load_splits, problems_of
torch.set_num_threads(2)
model, tok = load({base!r})
problems = problems_of(load_splits({data!r})["train"])
prompts = [p.prompt for p in random.Random(0).sample(problems, 16)]
import inspect
flag = "compile_decoding" if "compile_decoding" in inspect.signature(sample_group).parameters else "static_cache_compile"
kw = {{flag: True}} if {compiled} else {{}}
for _ in range(2):
    sample_group(model, tok, prompts, 8, 40, **kw)
rates = []
for seed in range(6):
    torch.manual_seed(seed)
    start = time.perf_counter()
    rollout = sample_group(model, tok, prompts, 8, 40, **kw)
    rates.append(rollout.completion_mask.sum().item() / (time.perf_counter() - start))
print(statistics.median(rates))
"""


def tokens_per_second(entry: str) -> float:
    """One fresh process's median tokens/s for `entry` (a checkout, optionally ':compiled')."""
    checkout, _, flag = entry.partition(":")
    if flag not in ("", "compiled"):
        raise SystemExit(f"error: {entry!r}: the only suffix is ':compiled'")
    checkout = os.path.abspath(checkout)
    if not os.path.isdir(os.path.join(checkout, "rlsd_min")):
        raise SystemExit(f"error: {checkout!r} is not a checkout of rlsd_min (no rlsd_min/ folder in it)")
    data = os.path.join(HERE, "data")
    code = CHILD.format(checkout=checkout, base=os.path.join(data, "base"), data=os.path.join(data, "arith"),
                        compiled=flag == "compiled")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("entries", nargs="+", help="checkout folders, the first is the baseline; "
                                              "append ':compiled' for static_cache_compile=True")
    p.add_argument("--rounds", type=int, default=3, help="rounds of A B ... (each entry once per round)")
    args = p.parse_args()
    if len(args.entries) < 2 or args.rounds < 1:
        raise SystemExit("error: give at least two entries and --rounds >= 1")
    rates = {e: [] for e in args.entries}
    for r in range(args.rounds):
        for e in args.entries:
            rates[e].append(tokens_per_second(e))
            print(f"round {r + 1}: {e}: {rates[e][-1]:.0f} tokens/s", flush=True)
    first = args.entries[0]
    print(f"\n| entry | tokens/s per round | median ratio to {first} |\n|---|---|---|")
    for e in args.entries:
        ratio = statistics.median(a / b for a, b in zip(rates[e], rates[first]))
        print(f"| {e} | {' / '.join(f'{x:.0f}' for x in rates[e])} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
