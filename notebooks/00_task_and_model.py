# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · The task and the model
#
# This course trains a **0.5M-parameter language model from scratch** to do 3-digit addition, then
# improves it with reinforcement learning (GRPO) and with *self-distillation*: the same model, shown
# the reference answer, acts as its own teacher (OPSD, RLSD, SDPG). Everything runs on a laptop CPU.
#
# | notebook | idea |
# |---|---|
# | **00 task and model** | problems, scratchpad, verifier, tokenizer, tiny Llama, data files |
# | 01 warm start | why RL needs a model that is right *sometimes* |
# | 02 sampling and GRPO | groups, group advantages, ratio and clip, token aggregation |
# | 03 reference KL | the k1 / k2 / k3 estimators of KL(π_θ ‖ π_ref) |
# | 04 teacher and reverse KL | the privileged teacher, token-level reverse KL, OPSD |
# | 05 information leakage | the floor under OPSD's loss, a task with ten valid answers, leakage probes |
# | 06 RLSD | the verifier sets each token's direction, the teacher its magnitude |
# | 07 SDPG | outcome term + gated full-vocabulary distillation + reference KL, the β(k) schedule |
# | 08 stability and verification | the multi-seed comparison in `results/`, each paper's claims judged |
# | 09 GPU lab | the profiles, step times measured on your device, the switches for a faster GPU step |
# | 10 TRL trainers | the same losses inside TRL's `GRPOTrainer`, for any Hugging Face model on many GPUs; one step checked against the tiny loop |
#
# This notebook trains nothing. The formulas are on the method pages in [`docs/`](../docs/) (this
# notebook goes with [the tasks and the model](../docs/tasks_and_model.md)); every concept lives in a
# file of `rlsd_min/` you can open side by side.
#
# **How the notebooks run.** The first code cell is the same in each: it makes `rlsd_min` importable
# (nothing to do where it is installed, else `pip install -e` of the checkout the notebook is in) and
# picks the profile: `RLSD_PROFILE`, else `gpu` when CUDA is present, else `cpu`. Training runs that
# several notebooks need (GRPO from the warm start: notebooks 02, 04, 06 and 07; RLSD: 06 and 07) are
# one run folder each under `runs/course/<profile>/`, so the notebooks quote the same numbers, and a
# notebook run a second time reads its finished run folders instead of training again. **Exercises**
# leave the body of a function to you; the cell after each checks it against the package on fresh
# random inputs and says what is wrong (until then it stops "Run All"; `RLSD_SOLUTIONS=1` runs the
# notebooks with the solutions of `notebooks/solutions/` in). The stored outputs come from the `cpu`
# profile on 2 torch threads (the default on a 2-core CPU), with the solutions in.
#
# **What it trains:** nothing: it reads the shipped data and warm start.
#
# <!-- generated: notebook-time -->
# **Time.** Its stored run, on the `cpu` profile: 4 s (the cells' times recorded in this notebook; the longest cell 3 s). A notebook run again reads its finished run folders back and trains nothing.
# <!-- end generated -->

# %%
# Set-up, the same first cell in every notebook: make rlsd_min importable, then pick the profile.
import importlib
import importlib.util
import pathlib
import subprocess
import sys

def package_spec():  # rlsd_min's spec, or None: a clone's folder named rlsd_min in the working
    spec = importlib.util.find_spec("rlsd_min")  # directory imports as an empty namespace, no package
    return spec if spec is not None and spec.origin is not None else None

here, spec = pathlib.Path.cwd(), package_spec()
installed = [pathlib.Path(spec.origin).resolve().parents[1]] if spec else []  # an editable install's checkout
ROOT = next((d for d in (*installed, here, *here.parents, *sorted(p for p in here.iterdir() if p.is_dir()))
             if (d / "pyproject.toml").is_file() and (d / "rlsd_min" / "__init__.py").is_file()), None)
if ROOT is None:  # every path below is taken from the checkout's root, whatever the working directory
    raise ModuleNotFoundError(f"no checkout of the rlsd_min repository is in, above or just below {here}: "
                              "clone the repository, then open this notebook from its notebooks/ folder")
if spec is None:  # not installed: install the checkout this notebook is in
    print(f"rlsd_min is not installed: pip install -e {ROOT}")
    if subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(ROOT)]).returncode:
        print("pip install failed (above): this kernel imports rlsd_min from the checkout, a new one will not")
    importlib.invalidate_caches()
    if package_spec() is None:                        # the install takes effect in Python processes started
        sys.path.insert(0, str(ROOT))                 # after it: this kernel imports the checkout directly

from rlsd_min.config import default_profile

PROFILE = default_profile()  # RLSD_PROFILE if set, else gpu when CUDA is present, else cpu
RUNS = ROOT / "runs" / "course" / PROFILE  # the course's run folders, shared by its notebooks
print("profile:", PROFILE)

# %%
import warnings

warnings.filterwarnings("ignore")

import datasets
import torch

import rlsd_min
from rlsd_min import model as model_io
from rlsd_min.config import ModelConfig
from rlsd_min.tasks import TASKS, Problem, load_splits, max_completion_chars, parse_answer, scratchpad, verify
from rlsd_min.teacher import PRIVILEGED_TEMPLATE, teacher_prompt

datasets.disable_progress_bars()  # no "Generating split" bars in the stored outputs
ARITH = TASKS["arith"]  # the task's data folder and warm start: ARITH.data_dir, ARITH.base_checkpoint
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. A problem and its scratchpad
#
# A problem is `a + b` with zero-padded operands, so every prompt has the same length (`x`, the
# question). The reference completion is a **scratchpad**: one step per digit column, then the
# answer on its own line. Step `3+5+0=08` reads "digit 3 plus digit 5 plus incoming carry 0 makes
# 08": outgoing carry 0, digit 8.

# %%
# NBVAL_CHECK_OUTPUT
p = Problem("add", 123, 45, digits=3)
print("prompt x  ", repr(p.prompt))
print("solution  ", repr(p.solution))
print("answer    ", p.answer)
print("longest completion of 3-digit addition:", max_completion_chars("add", 3), "characters (+ <eos>)")

# %% [markdown]
# ### Why least-significant digit first
#
# Digit *i* of a sum depends on digits 0..*i* of both operands through the carry chain. A model
# that writes `1000` for `999+001` must know, at its **first** output token, that all three columns
# carry: the whole chain in one forward pass. Written the way a person carries (units first), each
# step needs only two digits and the carry it has just written, and the answer's digits are then
# read off the steps. (minGPT's adder writes its answers backwards for the same reason.)
#
# A hand check: the last digit of every step, reversed, behind the final carry, is the answer.

# %%
# NBVAL_CHECK_OUTPUT
for a, b in [(999, 1), (505, 495), (0, 0)]:
    q = Problem("add", a, b, 3)
    print(f"{q.prompt}  {q.solution!r}")

def answer_from_steps(steps: str) -> int:  # by hand: carry of the last step, then the digits reversed
    steps = steps.split(" ")
    return int(steps[-1][-2] + "".join(s[-1] for s in reversed(steps)))

for a in range(0, 1000, 37):
    for b in range(0, 1000, 53):
        assert answer_from_steps(scratchpad("add", a, b, 3)) == a + b
print("scratchpad digits == a + b for", len(range(0, 1000, 37)) * len(range(0, 1000, 53)), "problems")

# %% [markdown]
# The package also has subtraction (borrow) and one-digit multiplication (two-digit carry);
# the shipped data use addition only (`TaskConfig.ops = ("add",)`).

# %%
# NBVAL_CHECK_OUTPUT
for q in [Problem("sub", 503, 278, 3), Problem("mul", 478, 6, 3)]:
    print(f"{q.prompt:10s} {q.solution!r}   ({q.answer})")

# %% [markdown]
# ## 2. Privileged context and the teacher prompt
#
# Self-distillation needs a **teacher** that knows something the student does not: the privileged
# context `c`. It comes in two forms: `answer` (the final answer only: RLSD's "least demanding
# requirement") or `solution` (the full reference completion: OPSD, SDPG). The teacher is the same
# model with `c` in front of the question. The template lives in one place,
# `rlsd_min.teacher.PRIVILEGED_TEMPLATE`:

# %%
# NBVAL_CHECK_OUTPUT
print("template:", repr(PRIVILEGED_TEMPLATE))
print("student  prompt:", repr(p.prompt))
for kind in ("answer", "solution"):
    c = p.context(kind)
    print(f"{kind:8s} teacher prompt: {teacher_prompt(p.prompt, c)!r}")
    assert teacher_prompt(p.prompt, c).endswith(p.prompt)  # the question still ends the prompt

# %% [markdown]
# Because the question still ends the teacher prompt, the student's own completion reads naturally
# after either prompt, and the teacher can score it token by token (notebook 04).
#
# ## 3. The verifier
#
# The reward is `R = 1` iff the **last line** of the completion is exactly the right integer
# (`rlsd_min.verify`). It never evaluates model output, and it ignores the steps: an outcome reward.

# %%
# NBVAL_CHECK_OUTPUT
cases = [
    p.solution,                               # the reference
    "3+5+0=08 2+4+0=06 1+0+0=03\n368",        # a wrong step, and the wrong answer it leads to
    "9+9+9=99\n168",                          # nonsense steps, right last line
    "168",                                    # no scratchpad at all
    p.solution + "\n",                        # a trailing newline
    "3+5+0=08 2+4+0=06 1+0+0=01\n16 8",       # a space inside the answer
    "3+5+0=08 2+4+0=06 1+0+0=01",             # stopped before the answer
    "",                                       # empty
    None,                                     # not a string at all
]
rewards = [verify(c, p.answer) for c in cases]
for c, r in zip(cases, rewards):
    print(f"R={r:.0f}  parsed={parse_answer(c)!s:5s}  {c!r}")
assert rewards == [1, 0, 1, 1, 1, 0, 0, 0, 0]

# %% [markdown]
# Note row 3: nonsense steps with the right last line get full reward. The verifier only says
# *whether* a completion is right, never *which tokens* were wrong; the privileged teacher of
# notebook 04 is one way to get that per-token signal.
#
# ## 4. The character tokenizer
#
# One token per character: 17 characters (`0-9 + - * = space newline |`) and four special tokens.
# `<bos>` starts every text; `<pad>` and `<eos>` are different tokens (keep them distinct, or
# `generate` stops at padding: [the tokenizer](../docs/tasks_and_model.md#the-tokenizer)). Prompts are padded on the **left**, so that in a batch
# every prompt ends in the same column and the completions line up.

# %%
# NBVAL_CHECK_OUTPUT
tok = model_io.build_tokenizer()
print(len(tok), "tokens:", tok.convert_ids_to_tokens(list(range(len(tok)))))
ids = tok(p.prompt).input_ids
print(repr(p.prompt), "->", ids)
print("decoded:", repr(tok.decode(ids)))
print("bos", tok.bos_token_id, "eos", tok.eos_token_id, "pad", tok.pad_token_id, "| padding side:", tok.padding_side)
assert tok.decode(ids, skip_special_tokens=True) == p.prompt
assert len(ids) == len(p.prompt) + 1  # one token per character, plus <bos>

batch = tok([p.prompt, teacher_prompt(p.prompt, p.context("answer"))], padding=True)
for row in batch.input_ids:
    print(" ".join(f"{t:2d}" for t in row), "  ", repr(tok.decode(row)))

# %% [markdown]
# ## 5. The model: a tiny Llama
#
# `rlsd_min.model.build_model` makes a real `transformers.LlamaForCausalLM` (RoPE, RMSNorm,
# SwiGLU MLP) with width 128, MLP width 512, 2 layers, 4 heads and tied input/output embeddings.
# Counting by hand: the embedding is 21 × 128; each layer has four 128 × 128 attention projections,
# three 128 × 512 MLP matrices and two RMSNorm weight vectors; one final norm; the output layer
# reuses the embedding.

# %%
# NBVAL_CHECK_OUTPUT
cfg = ModelConfig()
V, d, f, L = len(tok), cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
by_hand = V * d + L * (4 * d * d + 3 * d * f + 2 * d) + d
fresh = model_io.build_model(cfg, tok, seed=0)
print(cfg)
print(f"by hand {by_hand:,}   rlsd_min.model.n_params {model_io.n_params(fresh):,}")
assert model_io.n_params(fresh) == by_hand

# %% [markdown]
# The warm-started checkpoint shipped in the package, `data/base` (`TASKS["arith"].base_checkpoint`;
# notebook 01 makes one), has the same architecture; it loads with `rlsd_min.model.load`, a plain `from_pretrained` of a local folder.

# %%
base, base_tok = model_io.load(str(ARITH.base_checkpoint))
print(base)

# %%
# NBVAL_CHECK_OUTPUT
print(f"warm start: {model_io.n_params(base):,} parameters, same vocabulary: {base_tok.get_vocab() == tok.get_vocab()}")
assert model_io.n_params(base) == by_hand
assert base_tok.get_vocab() == tok.get_vocab()

# %% [markdown]
# What does it write for our problem? One greedy completion and four samples at temperature 1.
# The warm start is right on about half of the held-out problems at temperature 1, by design
# (notebook 01). Look at where its mistakes on this problem are: in a step, or in copying its own
# (correct) steps into the answer line. Notebook 04 shows the privileged teacher pointing at the
# first wrong token.

# %%
greedy = rlsd_min.sample_group(base, base_tok, [p.prompt], 1, max_new_tokens=40, greedy=True)
print("greedy :", repr(greedy.texts[0]), "R =", verify(greedy.texts[0], p.answer))
sampled = rlsd_min.sample_group(base, base_tok, [p.prompt], 4, max_new_tokens=40)
for t in sampled.texts:
    print("sampled:", repr(t), "R =", verify(t, p.answer))

# %% [markdown]
# ## 6. The data files
#
# `data/arith` (`TASKS["arith"].data_dir`, under `rlsd_min.data_root()`; set `RLSD_DATA` to
# use another folder) holds four JSONL splits written by `python -m rlsd_min data` (deterministic from a
# seed): `train` prompts for RL, `validation` for evaluation during training, `test` for final
# reports, and `ood`, 4-digit problems the model never trained on. They load with
# `rlsd_min.tasks.load_splits` (the `datasets` library, local files only).

# %%
splits = load_splits(str(ARITH.data_dir))

# %%
# NBVAL_CHECK_OUTPUT
for name, split in splits.items():
    print(f"{name:10s} {split.num_rows:5d} rows, digits {sorted(set(split['digits']))}")
print("columns:", splits["train"].column_names)
for row in splits["train"].select(range(3)):
    print(row)
print(splits["ood"][0])

train_prompts = set(splits["train"]["prompt"])
for name in ("validation", "test"):
    assert not train_prompts & set(splits[name]["prompt"]), name  # held out means held out
print("validation and test share no prompt with train")

# %% [markdown]
# **Next:** notebook 01 trains this model by supervised learning on reference solutions, and stops
# on purpose when it is right only about half of the time.
