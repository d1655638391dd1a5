"""Supervised warm start: the loss against an independent per-row computation, and a tiny run."""

import json

import pytest
import torch

from rlsd_min import model as model_io
from rlsd_min.config import ModelConfig, SFTConfig
from rlsd_min.tasks import TASKS, TaskConfig

DATA_DIR = TASKS["arith"].data_dir
from rlsd_min.sft import sft_loss, warm_start
from rlsd_min.tasks import Problem


def test_sft_loss_is_the_mean_completion_nll(tiny_model, tokenizer):
    model = tiny_model(seed=2)
    problems = [Problem("add", 123, 45, 3), Problem("add", 7, 8, 1), Problem("mul", 1234, 7, 4)]
    prompts, completions = [p.prompt for p in problems], [p.solution for p in problems]
    loss = sft_loss(model, tokenizer, prompts, completions)
    total, count = 0.0, 0
    for prompt, completion in zip(prompts, completions):
        p_ids = tokenizer(prompt).input_ids                                   # <bos> + prompt
        c_ids = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p_ids + c_ids])).logits[0].double()
        logp = torch.log_softmax(logits[len(p_ids) - 1:-1], -1)
        total -= logp.gather(-1, torch.tensor(c_ids)[:, None]).sum().item()
        count += len(c_ids)
    assert loss.item() == pytest.approx(total / count, abs=1e-5)


def test_tiny_warm_start_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "base"
    summary = warm_start(str(out), str(DATA_DIR),
                         ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2),
                         TaskConfig(), SFTConfig(max_steps=3, batch_size=16, eval_problems=8, warmup_steps=2),
                         progress=False)
    assert summary["steps"] == 3 and 0 <= summary["val_acc_greedy"] <= 1
    model, tok = model_io.load(str(out))
    assert model_io.n_params(model) == summary["params"]
    with open(out / "warmstart.json") as f:
        assert json.load(f)["steps"] == 3


@pytest.mark.parametrize("cfg, pattern", [(SFTConfig(target_acc=0.0), "target_acc"),
                                          (SFTConfig(target_acc=1.5), "1.5"),
                                          (SFTConfig(lr=0.0), "lr")])
def test_warm_start_rejects_bad_settings(tmp_path, cfg, pattern):
    with pytest.raises(ValueError, match=pattern):
        warm_start(str(tmp_path / "x"), str(DATA_DIR), cfg=cfg, progress=False)
    assert not (tmp_path / "x").exists()
