"""Run by tests/test_trl.py under torchrun (any number of processes, gloo on CPU): two steps of
RLSDTrainer, SDPGTrainer and GRPO+OPSD's OPSDTrainer with the `sibling` teacher (chosen among every
process's rows) on injected completions, then each rank writes rank<R>.json with
its final weights, the metrics it logged and the metrics it computed locally, each with its
weight (rlsd_min.integrations.trl_metrics.weights).

    python -m torch.distributed.run --nproc_per_node 2 tests/trl_distributed.py MODEL OUT

The global batch is the same for any number of processes (16 rows = 4 prompts x G 4 per step,
split over the processes as whole groups), and plain SGD makes the weights a linear function
of the gradients, so the test can compare 2 processes with 1.
"""

import json
import os
import sys

import torch

torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402

from rlsd_min.integrations import trl as rt  # noqa: E402
from rlsd_min.integrations.tiny import arith_reward, arith_rows  # noqa: E402

G, ROWS = 4, 16
NAMES = ("loss", "lam", "w_clip_frac", "beta", "distill_loss", "gate_frac", "teacher_kl", "kl_ref",
         "entropy", "loss_pg", "teacher_frac")


def completions(prompt_ids: list, tokenizer, answer: int) -> list:
    """G completions of one prompt: its answer, a wrong answer, the answer twice, a cut-off row."""
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    return [ids(str(answer)) + [eos], ids(str(answer + 1)) + [eos], ids(f"{answer} {answer}") + [eos],
            ids("1+1=2 " * 4)[:12]]


def main(path: str, out: str) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    rows = arith_rows(n=8)
    result = {}
    for name, Config, own in (("rlsd", rt.RLSDConfig, {}), ("sdpg", rt.SDPGConfig, dict(sdpg_schedule=False)),
                              ("sibling", rt.OPSDConfig, dict(with_reward=True, teacher_context="sibling"))):
        method = "grpo_opsd" if name == "sibling" else name
        args = Config(**own, output_dir=os.path.join(out, name), per_device_train_batch_size=ROWS // world,
                      num_generations=G, max_completion_length=16, max_steps=2, learning_rate=0.1, optim="sgd",
                      report_to="none", use_cpu=True, bf16=False, **rt.checkpointing(False),
                      logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0)
        trainer = rt.TRAINERS[method](model=path, reward_funcs=arith_reward, args=args,
                                      train_dataset=Dataset.from_list(rows))
        tok = trainer.processing_class
        table = {tuple(trainer._tokenize_prompts([r["prompt"]])[0][0]): completions(None, tok, r["answer"])
                 for r in rows}
        trainer._generate_single_turn = lambda prompt_ids, images, mm, n, **kw: (
            [table[tuple(ids)][i % n] for i, ids in enumerate(prompt_ids)], None)
        local, log = [], trainer._log_rlsd_metrics
        trainer._log_rlsd_metrics = lambda metrics, w, mode: (local.append({n: (v, w[n]) for n, v in metrics.items()}),
                                                              log(metrics, w, mode))
        start = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
        trainer.train()
        weights = torch.cat([p.detach().flatten() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()])
        logged = [{k: h[k] for k in NAMES if k in h} for h in trainer.state.log_history if "loss" in h]
        result[name] = dict(weights=weights.tolist(), moved=(weights - start).abs().sum().item(),
                              logged=logged, local=local)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
