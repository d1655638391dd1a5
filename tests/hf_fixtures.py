"""A realistic model for the TRL trainers' tests, built offline: a Qwen2-shape model at random
init, a byte-level BPE tokenizer trained here on generated text, and Qwen's ChatML chat template.

    build_qwen2_chat_model(path)   save_pretrained of the model and its tokenizer; returns path
    rows(n, conversational)        dataset rows whose prompts vary in length (1 to 3 lead-in phrases)
    completions(tokenizer, row)    G chosen completions of a row: different lengths, one cut off
    inject(trainer, rows)          replace TRL's sampling by those completions

The same special tokens as Qwen2's: <|endoftext|> pads, <|im_end|> ends a turn (eos). Nothing
is downloaded.
"""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""Qwen2's ChatML: each turn is <|im_start|>role, a newline, the content, <|im_end|>"""
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LEAD_INS = ["Please work this out.", "Show your steps and be careful.", "Answer with a number."]
G = 4


def problem(i: int) -> tuple[str, int]:
    """The i-th question and its answer: a sum of two numbers of 1 to 3 digits."""
    r = random.Random(i)
    a, b = r.randrange(10 ** r.randint(0, 2), 1000), r.randrange(1, 100)
    return f"What is {a} + {b}?", a + b


def _corpus() -> list[str]:
    lines = []
    for i in range(300):
        q, ans = problem(i)
        lines += [" ".join(LEAD_INS[:i % 4]) + " " + q, f"The answer is {ans}.", f"{ans}"]
    return lines + ["The reference answer is:", "user", "assistant", "system"] * 20


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                  padding_side="left")
    out.chat_template = CHATML
    return out


def build_qwen2_chat_model(path: str, seed: int = 0) -> str:
    """A random 2-layer Qwen2 (grouped-query attention, untied head) and its ChatML BPE tokenizer."""
    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def rows(n: int, conversational: bool = False) -> list[dict]:
    """n rows {prompt, privileged_context, answer}; prompt i has i % 4 lead-in phrases in front."""
    out = []
    for i in range(n):
        q, ans = problem(i)
        text = " ".join(LEAD_INS[:i % 4] + [q])
        out.append({"prompt": [{"role": "user", "content": text}] if conversational else text,
                    "privileged_context": str(ans), "answer": ans})
    return out


def reward(completions, answer, **kwargs) -> list[float]:
    """1 where the completion (text, or an assistant turn) contains the answer."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(str(a) in t) for t, a in zip(texts, answer)]


def completions(tokenizer, row: dict) -> list[list[int]]:
    """G completions: the answer, a wrong one, a sentence with the answer, a cut-off row (no eos)."""
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids
    eos, a = tokenizer.eos_token_id, row["answer"]
    return [ids(f"{a}") + [eos], ids(f"{a + 1}") + [eos], ids(f"The answer is {a}.") + [eos],
            ids(f"Let me think about {a - 1} and more")]


def inject(trainer, dataset_rows: list[dict]) -> None:
    """TRL's sampling replaced by `completions` of each row (looked up by the prompt's ids)."""
    tok = trainer.processing_class
    table = {tuple(trainer._tokenize_prompts([r["prompt"]])[0][0]): completions(tok, r) for r in dataset_rows}

    def generate(prompt_ids, images, multimodal_fields, num_generations, **kwargs):
        return [table[tuple(ids)][i % num_generations] for i, ids in enumerate(prompt_ids)], None
    trainer._generate_single_turn = generate
