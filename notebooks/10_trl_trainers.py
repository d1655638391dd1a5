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
# # 10 · The TRL trainers: the same loss, past one machine
#
# Notebooks 02–09 verify each method on the 0.5M character-level model. To train a real model on
# many GPUs, `rlsd_min.integrations.trl` runs the same losses inside TRL's `GRPOTrainer`
# (`pip install '.[trl]'`): `RLSDTrainer`, `SDPGTrainer`, `OPSDTrainer` (and GRPO+OPSD with
# `OPSDConfig(with_reward=True)`). TRL samples, rewards, computes the group advantages, runs the
# optimiser and the distributed machinery; rlsd_min builds the teacher's prompt, scores the
# student's own completion ids under it, and computes the loss: the trainer turns TRL's batch into
# rlsd_min's `StepBatch` and calls `rlsd_min.step.method_loss`, the function the tiny loop calls.
#
# This notebook: (1) a tiny model with a *real* subword tokenizer and a chat template, built here;
# (2) the teacher's prompt for plain and chat prompts; (3) one `RLSDTrainer` step on chosen
# completions against rlsd_min's own `update` on the same completions: the same loss and the same
# gradients; (4) a few steps with sampling, logged under rlsd_min's metric names.
# docs/from_tiny_to_cluster.md goes on to one GPU and to a cluster.
#
# **What it trains:** a tiny chat model and a few steps of the TRL trainers on it (8 sampled steps on the `cpu` profile).
#
# <!-- generated: notebook-time -->
# **Time.** Its stored run, on the `cpu` profile: 9 s (the cells' times recorded in this notebook; the longest cell 4 s). A notebook run again reads its finished run folders back and trains nothing.
# <!-- end generated -->

# %%
# Set-up, the same first cell in every notebook: make rlsd_min importable, then pick the profile.
import importlib, importlib.util, pathlib, subprocess, sys

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
import os, warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import datasets
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
from transformers.utils import logging as hf_logging

import rlsd_min
from rlsd_min import model as model_io
from rlsd_min.config import TrainConfig, default_profile
from rlsd_min.integrations.tiny import arith_reward, arith_rows, build_tiny_chat_model
from rlsd_min.integrations.trl import RLSDConfig, RLSDTrainer, privileged_prompt
from rlsd_min.sampling import Rollout, decode_completions, encode_prompts
from rlsd_min.step import make_teacher, score_rollout, update
from rlsd_min.tasks import TASKS, load_splits, problems_of

datasets.disable_progress_bars()
hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
torch.set_num_threads(1)
PROFILE = default_profile()
STEPS = {"ci": 2, "cpu": 8, "gpu": 8}[PROFILE]    # the sampling run of section 4
WORK = RUNS / "trl"  # the tiny chat model and the trainers' output folders, beside the course's runs
print("profile", PROFILE)

# %% [markdown]
# ## 1. A tiny model with a subword tokenizer and a chat template
#
# `build_tiny_chat_model` trains a byte-level BPE tokenizer on the task's own text (`tokenizers`,
# 400 tokens), gives it a chat template (`<|user|>`, `<|assistant|>`, `<|end|>` = eos), and saves
# it with a random one-layer Llama via `save_pretrained`. Unlike rlsd_min's one-character
# tokenizer, a number is often one token here, so the teacher's alignment is exercised on real
# merges.

# %%
# NBVAL_CHECK_OUTPUT
path = build_tiny_chat_model(os.path.join(WORK, "tiny"))
tok = AutoTokenizer.from_pretrained(path)
problem = problems_of(load_splits(str(TASKS["arith"].data_dir))["train"])[0]
print(len(tok), "tokens;", problem.prompt, "->", tok.tokenize(problem.prompt + problem.solution))
chat = tok.apply_chat_template([{"role": "user", "content": problem.prompt}], add_generation_prompt=True,
                               tokenize=False)
print(repr(chat))

# %% [markdown]
# ## 2. The teacher's prompt: one place, plain or chat
#
# A TRL dataset row carries the prompt and a `privileged_context` string. `privileged_prompt`
# builds the teacher's prompt from them with TrainConfig's `privileged_template`: for plain text
# exactly rlsd_min's `teacher_prompt`; for a conversation, the last user turn's content goes
# through the same template, and the chat template then renders it as usual. The completion is
# never re-tokenised: the teacher reads the student's own completion ids after its prompt ids.

# %%
# NBVAL_CHECK_OUTPUT
template = TrainConfig().validate().privileged_template    # '{context}|{prompt}', TrainConfig's resolved default
row = arith_rows(n=1, conversational=True)[0]
print(row)
print(privileged_prompt(problem.prompt, row["privileged_context"], template))
teacher_chat = privileged_prompt(row["prompt"], row["privileged_context"], template)
print(teacher_chat)
print(repr(tok.apply_chat_template(teacher_chat, add_generation_prompt=True, tokenize=False)))

# %% [markdown]
# ## 3. One RLSDTrainer step against rlsd_min's own update
#
# To compare the two on *the same tokens*, TRL's sampling is replaced by chosen completions (its
# `_generate_single_turn`), four per prompt: right, wrong, the answer alone, and a cut-off one
# (rewards 1, 0, 1, 0). Both sides run in float64 from the same saved weights.
#
# TRL side: an `RLSDConfig` (RLSD's settings are TrainConfig's fields: synced teacher,
# `rlsd_lam` 0.5, `rlsd_eps_w` 0.2) and one step; a callback keeps the gradients TRL's optimiser
# is about to apply (after clipping).

# %%
problems = problems_of(load_splits(str(TASKS["arith"].data_dir))["train"])[:2]
G, T = 4, 24

def completions_of(p):
    ids = lambda text: tok(text, add_special_tokens=False).input_ids
    wrong = p.solution[:-1] + ("1" if p.solution[-1] != "1" else "2")
    return [ids(p.solution) + [tok.eos_token_id], ids(wrong) + [tok.eos_token_id],
            ids(str(p.answer)) + [tok.eos_token_id], ids(p.solution)[:-2]]

class Grads(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}

args = RLSDConfig(output_dir=str(RUNS / "trl" / "rlsd"), per_device_train_batch_size=2 * G, num_generations=G,
                  max_completion_length=T, max_steps=1, learning_rate=1e-3, report_to="none", use_cpu=True,
                  bf16=False, activation_checkpointing=False, logging_steps=1, save_strategy="no",
                  disable_tqdm=True, shuffle_dataset=False)
rows = [{"prompt": p.prompt, "privileged_context": p.context("answer"), "answer": p.answer} for p in problems]
grads = Grads()
trainer = RLSDTrainer(model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64),
                      reward_funcs=arith_reward, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tok, callbacks=[grads])
trainer.remove_callback(PrinterCallback)   # the Trainer's own print of each log line
table = {tuple(tok(p.prompt).input_ids): completions_of(p) for p in problems}
trainer._generate_single_turn = lambda prompt_ids, images, mm, n, **kw: (
    [table[tuple(ids)][i % n] for i, ids in enumerate(prompt_ids)], None)
trainer.train()
trl_row = [h for h in trainer.state.log_history if "loss" in h][0]
print({k: round(trl_row[k], 6) for k in ("loss", "lam", "w_clip_frac", "teacher_kl", "reward")})

# %% [markdown]
# rlsd_min side: the same completions laid out as rlsd_min's `Rollout` (prompts left-padded,
# completions right-padded), `score_rollout` (what `collect` does after sampling: rewards, group
# advantages, the synced teacher's log-probs) and `update`, with a TrainConfig holding the same
# settings (TRL's advantage eps is 1e-4).

# %%
cfg = TrainConfig(method="rlsd", group_size=G, prompts_per_step=2, max_new_tokens=T, lr=1e-3, adv_eps=1e-4,
                  steps=1, teacher_context="answer").validate()
policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
ids, mask = encode_prompts(tok, [p.prompt for p in problems], "cpu")                # (B, P)
comps = [c for p in problems for c in completions_of(p)]
width = max(map(len, comps))
cids = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in comps])    # (N, T)
cmask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in comps])      # (N, T)
rollout = Rollout(ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0), cids, cmask,
                  decode_completions(tok, cids, cmask), G)
batch = score_rollout(policy, tok, problems, rollout, cfg, teacher=make_teacher(policy, cfg))
ours = update(policy, torch.optim.AdamW(policy.parameters(), lr=cfg.lr), batch, cfg, step=0)
print("rewards", batch.rewards.tolist())
print({k: round(ours[k], 6) for k in ("loss", "lam", "w_clip_frac", "teacher_kl")})

# %%
diff = max((grads.grads[n] - p.grad).abs().max().item() for n, p in policy.named_parameters())
largest = max(p.grad.abs().max().item() for p in policy.parameters())
print(f"loss: TRL {trl_row['loss']:.12f}  rlsd_min {ours['loss']:.12f}")
print(f"largest gradient entry {largest:.3e}; largest difference between the two {diff:.1e}")
assert abs(trl_row["loss"] - ours["loss"]) <= 1e-12 and diff <= 1e-11 * max(1.0, largest)

# %% [markdown]
# The same loss and the same gradients, to the last bits of float64. `tests/test_trl.py` makes the
# same check for SDPG, OPSD (reverse and sampled), GRPO+OPSD, a reference-KL term, two accumulated
# micro-batches and gradient checkpointing, and runs RLSD and SDPG on two processes under
# `torchrun` (identical weights on both ranks, and equal to one process on the whole batch).
#
# ## 4. A few steps with sampling, on rlsd_min's warm-started model
#
# Now TRL samples (temperature 1, no top-k/top-p, as rlsd_min's loop), on rlsd_min's own tiny
# model: the shipped 0.5M warm start with its character tokenizer (`data/base`, the model of
# notebooks 02–07), plain prompts, the answer as privileged context. It is right about half the
# time, so groups have signal, and RLSD's weight w_t leaves its clip range on a few percent of
# the tokens (`w_clip_frac`; the paper reports 3–6 %). rlsd_min's metrics reach TRL's `log` under their own names (so
# `report_to` sends them to wandb or tensorboard), and `lam` decays as `rlsd_lambda` says over
# `rlsd_lam_steps`.

# %%
base = str(TASKS["arith"].base_checkpoint)
_, char_tok = model_io.load(base)                        # left padding, as rlsd_min's loop uses it
train = problems_of(load_splits(str(TASKS["arith"].data_dir))["train"])[:8 * STEPS]

class Rows(TrainerCallback):
    rows = []
    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.rows.append({"step": state.global_step, **logs})

args = RLSDConfig(output_dir=str(RUNS / "trl" / "rlsd-sampled"), per_device_train_batch_size=32, num_generations=4,
                  max_completion_length=40, max_steps=STEPS, learning_rate=1e-4, lr_scheduler_type="constant",
                  report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False, logging_steps=1,
                  save_strategy="no", disable_tqdm=True, top_k=0, top_p=1.0, rlsd_lam_steps=STEPS, seed=0)
sampled = RLSDTrainer(model=base, reward_funcs=arith_reward, args=args, processing_class=char_tok,
                      callbacks=[Rows()], train_dataset=Dataset.from_list(
                          [{"prompt": p.prompt, "privileged_context": p.context("answer"), "answer": p.answer}
                           for p in train]))
sampled.remove_callback(PrinterCallback)
sampled.train()
names = ("loss", "reward", "frac_reward_zero_std", "lam", "w_clip_frac", "teacher_kl", "entropy")
print("step " + " ".join(f"{n:>12s}" for n in names))
for r in Rows.rows:
    print(f"{r['step']:4d} " + " ".join(f"{r[n]:12.4f}" for n in names))
assert [r["lam"] for r in Rows.rows] == [rlsd_min.rlsd_lambda(k, 0.5, STEPS) for k in range(STEPS)]
assert all(0 < r["reward"] < 1 for r in Rows.rows)

# %% [markdown]
# ## Where next
#
# - `examples/trl_rlsd_gsm8k.py`: RLSD on GSM8K with a real instruct model; the same script runs
#   on one GPU, under `accelerate launch --num_processes 8`, or `torchrun`.
# - `docs/from_tiny_to_cluster.md`: the settings table (TrainConfig's names and TRL's), the chat
#   template and where the context goes, teacher modes under DeepSpeed and FSDP, what is logged.
# - `benchmarks/RESULTS.md`: each trainer's step time against `GRPOTrainer` on the same work.
