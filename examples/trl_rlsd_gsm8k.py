"""RLSD on a real instruct model and GSM8K, with TRL and accelerate: rlsd_min's verified loss, at scale.

On 8 GPUs (docs/from_tiny_to_cluster.md has the variants: DeepSpeed, vLLM, other models):

    pip install '.[trl]'
    accelerate launch --num_processes 8 examples/trl_rlsd_gsm8k.py \\
        --model Qwen/Qwen2.5-1.5B-Instruct --dataset gsm8k --output_dir runs/rlsd-gsm8k \\
        --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 512 \\
        --learning_rate 1e-6 --max_steps 200 --bf16 true --report_to wandb

(`torchrun --nproc_per_node 8 examples/trl_rlsd_gsm8k.py ...` runs the same.) On the tiny model
that the tests build, on a CPU, in seconds (CI runs this):

    python examples/trl_rlsd_gsm8k.py --model TINY_MODEL_DIR --dataset arith --max_steps 2 \\
        --output_dir runs/tiny --use_cpu --bf16 false --activation_checkpointing false \\
        --per_device_train_batch_size 8 --num_generations 4 --max_completion_length 16

(transformers before 5.23 names the checkpointing flag `--gradient_checkpointing`.)

Every RLSDConfig field is a flag (`--help` lists them with TrainConfig's docs): the method's
(`--rlsd_lam`, `--teacher_mode`, `--privileged_template`, ...) and TRL's. The dataset rows are
conversational prompts with a `privileged_context` column holding the reference answer (RLSD's
answer-only context); the reward checks the number after '####' (or the last number).
metrics.jsonl in the output folder gets one line per logged step (rank 0).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainerCallback

from rlsd_min.integrations.tiny import arith_reward, arith_rows
from rlsd_min.integrations.trl import RLSDConfig, RLSDTrainer

INSTRUCTION = "\nSolve the problem step by step, then write the final answer after '####'."
TEMPLATE = "{prompt}\n\n(The reference answer is {context}. Use it to check your work.)"
"""the teacher's user turn for GSM8K: the question, then the reference answer (privileged_prompt)"""


@dataclass
class ScriptArguments:
    model: str = field(metadata={"help": "a model name or a local save_pretrained folder"})
    dataset: str = field(default="gsm8k", metadata={"help": "gsm8k (openai/gsm8k, downloaded) or arith (local)"})
    train_rows: int = field(default=0, metadata={"help": "use only this many training rows (0 = all)"})


def gsm8k_rows(limit: int = 0) -> list[dict]:
    """GSM8K's train split as conversational rows: the question, the reference answer as context."""
    from datasets import load_dataset

    data = load_dataset("openai/gsm8k", "main", split="train")
    rows = []
    for x in data.select(range(limit)) if limit else data:
        answer = x["answer"].split("####")[-1].strip().replace(",", "")
        rows.append({"prompt": [{"role": "user", "content": x["question"] + INSTRUCTION}],
                     "privileged_context": answer, "answer": answer})
    return rows


def final_number(text: str) -> str | None:
    """The number after the last '####', else the last number in the text."""
    tail = text.rsplit("####", 1)[-1] if "####" in text else text
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", tail)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def gsm8k_reward(completions, answer, **kwargs) -> list[float]:
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(final_number(t) == str(a)) for t, a in zip(texts, answer)]


class MetricsFile(TrainerCallback):
    """One JSON line per logged training step in OUTPUT_DIR/metrics.jsonl (main process only)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, RLSDConfig))
    parser.set_defaults(per_device_train_batch_size=8, num_generations=8, max_completion_length=512,
                        learning_rate=1e-6, logging_steps=1, save_strategy="no", report_to="none",
                        privileged_template=TEMPLATE)
    script, config = parser.parse_args_into_dataclasses()
    from datasets import Dataset

    if script.dataset == "gsm8k":
        rows, reward = gsm8k_rows(script.train_rows), gsm8k_reward
    elif script.dataset == "arith":
        rows, reward = arith_rows(n=script.train_rows or None, conversational=True), arith_reward
    else:
        raise SystemExit(f"unknown --dataset {script.dataset!r}; choose gsm8k or arith")
    trainer = RLSDTrainer(model=script.model, reward_funcs=reward, args=config,
                          train_dataset=Dataset.from_list(rows), callbacks=[MetricsFile()])
    trainer.train()
    trainer.save_model(config.output_dir)


if __name__ == "__main__":
    main()
