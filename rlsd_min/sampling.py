"""Group sampling and per-token log-probabilities of completions.

Layout used everywhere in the package: prompts are LEFT-padded to a common width P
and completions RIGHT-padded to a common width T, so completion token t of every
row sits in column P + t, and the logits that predict it sit in column P + t - 1:

    [pad pad <bos> 1 2 3 + 0 4 5 =][3 + 5 + 0 = 0 8 ... 1 6 8 <eos> pad pad]
     <------------ P ------------->  <---------------- T ----------------->

The teacher (rlsd_min.teacher) uses the same layout with a longer prompt, which is
what makes its log-probs line up with the student's column by column.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint

from .batch import Rollout
from .decoding import cache_argument, checkpointed, decode, split_head


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids, mask) of shape (B, P), each prompt starting with <bos>."""
    if tokenizer.padding_side != "left":
        raise ValueError("prompts must be left-padded: set tokenizer.padding_side = 'left'")
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def encode_completions(tokenizer, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, mask) of shape (N, T) for given completions, <eos> appended."""
    rows = [tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for t in texts]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def decode_completions(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Completion texts without their final <eos>. A special token generated *inside* a
    completion stays in the text ('16<pad>8'), so the verifier cannot be fooled by it."""
    eos = tokenizer.eos_token_id
    rows = [ids[:n] for ids, n in zip(completion_ids.tolist(), mask.sum(1).tolist())]
    return [tokenizer.decode(r[:-1] if r and r[-1] == eos else r, skip_special_tokens=False) for r in rows]


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on every token up to and including the first <eos>, 0 after it."""
    is_eos = (completion_ids == eos_id).long()               # (N, T)
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos        # (N, T) eos strictly before t
    return (eos_before == 0).long()                          # (N, T)


def check_fits(model, prompt_len: int, max_new_tokens: int) -> None:
    """A clear error when prompt + completion would exceed the model's context."""
    limit = model.config.max_position_embeddings
    if prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds the "
            f"model's context of {limit} positions; shorten the prompts or max_new_tokens")


def sample_group(model, tokenizer, prompts: list[str], group_size: int, max_new_tokens: int,
                 temperature: float = 1.0, greedy: bool = False, compile_decoding: bool = False) -> Rollout:
    """Sample G = group_size completions per prompt from pi_theta, KV-cached (`decode`).

    Pure ancestral sampling: each token is drawn from softmax(logits / temperature) with no
    truncation (no top-k, no top-p), so temperature 1 draws exactly from the model's
    distribution, which the policy gradient assumes. Rows of one group are adjacent: row i
    belongs to prompt i // G. greedy=True decodes the argmax instead (for evaluation only).
    Reproducible from torch's seed.

    The prompts' forward runs once per group, not once per row (`decode`).
    compile_decoding=True runs the decoding steps through torch.compile
    (`compiled_forward`; the prompts' forward stays eager): the same distribution, up to
    kernel rounding; the first call pays the compilation. Run under
    bf16_autocast by the caller for bfloat16 sampling.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)    # (B, P)
    check_fits(model, prompt_ids.shape[1], max_new_tokens)
    with torch.inference_mode():
        completion, ent = decode(model, prompt_ids, prompt_mask, max_new_tokens, temperature, greedy,
                                 tokenizer.eos_token_id, tokenizer.pad_token_id, compile_decoding,
                                 group_size)                                # (N, T), (N, T) or None
    ids = prompt_ids.repeat_interleave(group_size, dim=0)                   # (N, P)
    mask = prompt_mask.repeat_interleave(group_size, dim=0)                 # (N, P)
    completion = completion.clone()  # clone: a normal tensor for autograd
    cmask = completion_mask(completion, tokenizer.eos_token_id)             # (N, T)
    completion = completion.masked_fill(cmask == 0, tokenizer.pad_token_id)
    texts = decode_completions(tokenizer, completion, cmask)
    ent = None if ent is None else ent.clone().masked_fill(cmask == 0, 0.0)   # (N, T)
    return Rollout(ids, mask, completion, cmask, texts, group_size, ent)


def completion_hidden(body, prompt_ids, prompt_mask, completion_ids, completion_mask,
                      groups: torch.Tensor | None = None) -> torch.Tensor:
    """The final hidden states (N, T, H) from which the output layer predicts each completion
    token, for B = prompt_ids.shape[0] prompts of G = N / B completions each (group members
    adjacent), or, given `groups` (N,), the prompt index of each completion row. `body` is the
    model without its output layer (`split_head`).

    The same numbers as one forward pass over [prompt | completion], computed in two:
    the prompts once per group, their KV cache repeated for each of the group's rows, then
    the completions attending to it. A group shares its prompt, so this saves (G-1)/G of
    the prompt's cost (the teacher's privileged prompt is longer than the completion).
    Gradients flow through both passes, the shared prompt's included. Position ids count
    real tokens only, so a left-padded row is numbered exactly as it would be alone.

    A model with gradient checkpointing on gets one pass over [prompt | completion] instead:
    transformers drops the KV cache inside checkpointed layers, so the prompt's cache cannot
    reach the second pass there. The same numbers, without the prompt saving.
    """
    B, P = prompt_ids.shape
    N, T = completion_ids.shape
    if groups is None:
        if N % B:
            raise ValueError(f"{N} completions do not split into groups over {B} prompts")
        groups = torch.arange(B, device=prompt_ids.device).repeat_interleave(N // B)   # (N,)
    if checkpointed(body):
        ids = torch.cat([prompt_ids[groups], completion_ids], dim=1)                         # (N, P+T)
        attn = torch.cat([prompt_mask[groups], completion_mask], dim=1)                      # (N, P+T)
        position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)                                 # (N, P+T)
        hidden = body(input_ids=ids, attention_mask=attn, position_ids=position_ids).last_hidden_state
        return hidden[:, P - 1:-1]                                                           # (N, T, H)
    prompt_pos = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)                 # (B, P)
    out = body(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos, use_cache=True)
    name = cache_argument(body)
    cache = getattr(out, name)
    cache.batch_select_indices(groups)                                        # keys/values (N, ...)
    attn = torch.cat([prompt_mask[groups], completion_mask], dim=1)           # (N, P+T)
    position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)[:, P:]               # (N, T)
    rest = body(input_ids=completion_ids, attention_mask=attn, position_ids=position_ids,
                **{name: cache}).last_hidden_state                            # (N, T, H)
    first = out.last_hidden_state[groups, -1:]                                # (N, 1, H) predicts token 0
    return torch.cat([first, rest[:, :-1]], dim=1)                            # (N, T, H)


def completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                      temperature: float = 1.0, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (N, T, V), float32, divided by the temperature, that predict each completion
    token: the output layer over `completion_hidden` (arguments as there)."""
    body, head = split_head(model)
    hidden = completion_hidden(body, prompt_ids, prompt_mask, completion_ids, completion_mask, groups)  # (N, T, H)
    return output_logits(head, hidden, temperature)                          # (N, T, V)


def output_logits(head: torch.nn.Module, hidden: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """head(hidden) / temperature in float32 at least (bfloat16 under autocast becomes float32;
    a float64 model stays float64): (..., H) -> (..., V)."""
    logits = head(hidden)
    return (logits if logits.dtype == torch.float64 else logits.float()) / temperature


LOGITS_CHUNK_BYTES = 2 ** 26
"""the most float32 logits `chunked_logprobs` holds at once (64 MiB: 7 rows x 128 positions of a
151,936-token vocabulary; the whole batch of the character vocabulary)"""


def over_row_chunks(fn, hidden: torch.Tensor, head: torch.nn.Module, temperature: float, *per_row,
                    chunk_bytes: int | None = None) -> tuple:
    """fn(logits (n, T, V), *chunks of per_row) -> a tuple of (n, T) tensors, computed for the
    final hidden states (N, T, H) a chunk of rows at a time (at most `chunk_bytes` of float32
    logits, default LOGITS_CHUNK_BYTES), so the (N, T, V) logits are never held: the backward
    recomputes each chunk's logits (torch.utils.checkpoint) instead of keeping them. One chunk
    (the whole batch fits) runs without the recomputation. Returns the (N, T) results."""
    N, T, _ = hidden.shape
    rows = max(1, (chunk_bytes or LOGITS_CHUNK_BYTES) // max(1, T * head.out_features * 4))

    def one_chunk(h, *xs):
        return fn(output_logits(head, h, temperature), *xs)

    if rows >= N:
        return one_chunk(hidden, *per_row)
    parts = [torch.utils.checkpoint.checkpoint(one_chunk, hidden[s:s + rows], *(x[s:s + rows] for x in per_row),
                                               use_reentrant=False)
             if torch.is_grad_enabled() else one_chunk(hidden[s:s + rows], *(x[s:s + rows] for x in per_row))
             for s in range(0, N, rows)]
    return tuple(torch.cat([p[k] for p in parts]) for k in range(len(parts[0])))     # (N, T) each


def token_scores(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(logits)[token], the entropy of softmax(logits), detached): (n, T, V), (n, T) -> (n, T) x 2."""
    logp = torch.log_softmax(logits, dim=-1)                                          # (n, T, V)
    ent = -(logp.exp() * logp).sum(-1).detach()                                       # (n, T)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), ent                     # (n, T), (n, T)


def chunked_logprobs(hidden: torch.Tensor, head: torch.nn.Module, tokens: torch.Tensor, temperature: float = 1.0,
                     chunk_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y_t), the entropy H_t of pi(. | x, y_<t)), both (N, T), from the final hidden states
    (N, T, H) and the output layer, without holding the (N, T, V) logits (`over_row_chunks`). The
    log-probs carry the gradient (to the hidden states and the output layer); the entropy is
    detached."""
    return over_row_chunks(token_scores, hidden, head, temperature, tokens, chunk_bytes=chunk_bytes)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at each position: (N, T, V), (N, T) -> (N, T), a chunk of rows at
    a time (at most LOGITS_CHUNK_BYTES of log-softmax held at once)."""
    rows = max(1, LOGITS_CHUNK_BYTES // max(1, logits[0].numel() * 4))
    return torch.cat([torch.log_softmax(logits[s:s + rows], dim=-1).gather(-1, tokens[s:s + rows].unsqueeze(-1)).squeeze(-1)
                      for s in range(0, logits.shape[0], rows)])


def rollout_logprobs(model, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of a rollout's tokens, (N, T), without holding its (N, T, V) logits
    (`chunked_logprobs` over `completion_hidden`); `token_logprobs` returns the logits too."""
    G = rollout.group_size
    body, head = split_head(model)
    hidden = completion_hidden(body, rollout.prompt_ids[::G], rollout.prompt_mask[::G], rollout.completion_ids,
                               rollout.completion_mask)                       # (N, T, H)
    return chunked_logprobs(hidden, head, rollout.completion_ids, temperature)[0]   # (N, T)


def token_logprobs(model, rollout: Rollout, temperature: float = 1.0):
    """(log pi(y_t | x, y_<t) of shape (N, T), logits of shape (N, T, V)) for a rollout."""
    G = rollout.group_size
    logits = completion_logits(model, rollout.prompt_ids[::G], rollout.prompt_mask[::G],
                               rollout.completion_ids, rollout.completion_mask, temperature)
    return gather_logprobs(logits, rollout.completion_ids), logits


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: (N, T, V) -> (N, T)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)
