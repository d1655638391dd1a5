"""The one scoring path of the TRL trainers: every per-token log-prob the loss reads (the
student's, the teacher's) comes from TRL's own `_get_per_token_logps_and_entropies`, the call
that gives TRL's old and reference log-probs: the same module call (the fused LM head), the same
precision context (`accelerator.autocast()`, bf16 under GRPOConfig's default), the same
[prompt | completion] layout and padding, the same temperature. At theta = theta_old = theta_ref
the PPO ratio is then exactly 1 and the reference KL exactly 0, in bf16 and fp32, for any
accumulation and prompt lengths.

    completion_scores(trainer, model, ...)   (log-probs (N, T), entropies (N, T) or None,
                                             logits (N, T, V) or None)

The full-vocabulary logits (the divergences of OPSD, GRPO+OPSD and SDPG) come from the same
forward: the backbone's last hidden state, caught by a hook, through the LM head under the
same precision as TRL's head, divided by the temperature. Only they materialise rows x T x V;
a method that reads sampled-token log-probs only (RLSD, GRPO, OPSD 'sampled') never does.
"""

from __future__ import annotations

import contextlib

import torch
from accelerate.utils import is_peft_model


def causal_lm(model):
    """The transformers causal LM inside `model` (under DDP or PEFT wrappers)."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if is_peft_model(model) else model


@contextlib.contextmanager
def last_hidden_state(model):
    """Catch the backbone's output (N, L, H) during the forwards inside; yields a list it fills."""
    backbone = causal_lm(model).base_model
    caught = []
    hook = backbone.register_forward_hook(lambda module, args, out: caught.append(out[0]))
    try:
        yield caught
    finally:
        hook.remove()


def check_full_vocab_head(model) -> None:
    """A clear error for a model whose head rescales its logits (softcapping, logit scales):
    the full-vocabulary logits here are the LM head's output over the temperature."""
    config = causal_lm(model).config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling"):
        if getattr(config, name, None) not in (None, 1.0):
            raise ValueError(f"the model's config sets {name}={getattr(config, name)}: the full-vocabulary "
                             f"divergence of this method reads the LM head's raw logits; use a method whose "
                             f"teacher reads log-probs only (rlsd, or opsd with divergence='sampled')")


def head_logits(trainer, model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on hidden states (N, T, H) -> float32 logits (N, T, V) over the temperature,
    in the precision of TRL's fused head (autocast, or float32 with cast_lm_head_to_fp32)."""
    head = causal_lm(model).get_output_embeddings()
    if trainer.args.cast_lm_head_to_fp32:
        with torch.autocast(hidden.device.type, enabled=False):
            logits = head(hidden.float())                                            # (N, T, V)
    else:
        with trainer.accelerator.autocast():
            logits = head(hidden)                                                    # (N, T, V)
    return logits.float() / trainer.temperature


def completion_scores(trainer, model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                      entropy: bool = False, full_vocab: bool = False):
    """Per-token scores of the completion ids (N, T) after the prompts (N, P), left-padded:
    (log-probs (N, T), entropies (N, T) or None, logits (N, T, V) or None), through TRL's
    `_get_per_token_logps_and_entropies` (entropy: the fused head's, as TRL's own loss reads it)."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)                      # (N, P+T)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)               # (N, P+T)
    T = completion_ids.size(1)
    catch = last_hidden_state(model) if full_vocab else contextlib.nullcontext([])
    with catch as hidden:
        logp, entropies, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, T, compute_entropy=entropy)          # (N, T), (N, T)
    logits = head_logits(trainer, model, hidden[-1][:, -T - 1:-1]) if full_vocab else None   # (N, T, V)
    return logp, entropies, logits
