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

import inspect
import weakref
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache, StaticLayer


@dataclass
class Rollout:
    """G completions for each of B prompts, N = B * G rows (group members adjacent)."""
    prompt_ids: torch.Tensor       # (N, P) left-padded, starts with <bos>
    prompt_mask: torch.Tensor      # (N, P) 1 on real prompt tokens
    completion_ids: torch.Tensor   # (N, T) right-padded with <pad> after the first <eos>
    completion_mask: torch.Tensor  # (N, T) 1 up to and including the first <eos>
    texts: list                    # N decoded completions, special tokens removed
    group_size: int


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


def bf16_autocast(device, enabled: bool = True) -> torch.autocast:
    """Context running matmuls in bfloat16 on `device` when enabled (a no-op otherwise).

    Autocast lowers only matmul-like ops, and completion_logits casts the logits to
    float32, so the log-softmax over them is float32. Wrap forwards only: the losses and
    the backward pass run outside the context, in float32.
    """
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


_COMPILED = weakref.WeakKeyDictionary()
"""model -> {dynamic: its torch.compile'd forward}, made once per model and kind"""


def compiled_forward(model, dynamic: bool | None = None):
    """The model's forward through torch.compile, made once per model and `dynamic` (default
    mode; CUDA graphs are torch's choice on a GPU). The first call pays the compilation (tens
    of seconds on a CPU).

    dynamic=None (static_cache_compile's decoding step): fixed shapes first; with the static
    cache every decoding step of a batch has the same shapes, so one graph serves them all, and
    the first batch of another width makes torch mark that size dynamic (one more compile, not
    one per width). dynamic=True (compile_scoring): the batch and sequence widths are symbolic
    from the start, so one graph serves the scoring forwards of every batch (a second one the
    no-grad forwards of a model that is also trained)."""
    kinds = _COMPILED.setdefault(model, {})
    if dynamic not in kinds:
        kinds[dynamic] = torch.compile(model, dynamic=dynamic)
    return kinds[dynamic]


def sample_group(model, tokenizer, prompts: list[str], group_size: int, max_new_tokens: int,
                 temperature: float = 1.0, greedy: bool = False, static_cache_compile: bool = False) -> Rollout:
    """Sample G = group_size completions per prompt from pi_theta, KV-cached (`decode`).

    Pure ancestral sampling: each token is drawn from softmax(logits / temperature) with no
    truncation (no top-k, no top-p), so temperature 1 draws exactly from the model's
    distribution, which the policy gradient assumes. Rows of one group are adjacent: row i
    belongs to prompt i // G. greedy=True decodes the argmax instead (for evaluation only).
    Reproducible from torch's seed.

    The prompts' forward runs once per group, not once per row (`decode`).
    static_cache_compile=True runs the decoding steps through torch.compile
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
        completion = decode(model, prompt_ids, prompt_mask, max_new_tokens, temperature, greedy,
                            tokenizer.eos_token_id, tokenizer.pad_token_id, static_cache_compile,
                            group_size)                                     # (N, T)
    ids = prompt_ids.repeat_interleave(group_size, dim=0)                   # (N, P)
    mask = prompt_mask.repeat_interleave(group_size, dim=0)                 # (N, P)
    completion = completion.clone()  # clone: a normal tensor for autograd
    cmask = completion_mask(completion, tokenizer.eos_token_id)             # (N, T)
    completion = completion.masked_fill(cmask == 0, tokenizer.pad_token_id)
    texts = decode_completions(tokenizer, completion, cmask)
    return Rollout(ids, mask, completion, cmask, texts, group_size)


class FilledPrefixCache(Cache):
    """A KV cache allocated once for the whole decode and written in place, as transformers'
    StaticCache, whose layers hand attention only the positions written so far: a decoding step
    attends over P + t keys, not over the P + max_new_tokens of a static cache, and no key is
    copied (DynamicCache concatenates at every step). The attention is the same: the static
    cache's unwritten positions are masked out and weigh exactly 0."""

    def __init__(self, config, max_cache_len: int):
        super().__init__(layers=[_FilledPrefixLayer(max_cache_len) for _ in range(config.num_hidden_layers)])


class _FilledPrefixLayer(StaticLayer):
    """One layer of FilledPrefixCache: writes new keys and values at `filled`, returns views of
    the first `filled` positions."""

    def __init__(self, max_cache_len: int):
        super().__init__(max_cache_len=max_cache_len)
        self.filled = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, self.filled = self.filled, self.filled + key_states.shape[-2]
        self.keys[:, :, start:self.filled] = key_states                        # (N, H, n, d) written in place
        self.values[:, :, start:self.filled] = value_states
        return self.keys[:, :, :self.filled], self.values[:, :, :self.filled]  # (N, H, filled, d) views

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.filled + query_length, 0

    def get_seq_length(self) -> int:
        return self.filled


def decode(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           greedy: bool = False, eos_id: int = 2, pad_id: int = 0, compiled: bool = False,
           group_size: int = 1) -> torch.Tensor:
    """The decoding loop: one forward over the B left-padded prompts (B, P), its KV cache and
    last logits repeated for the G = group_size rows of each prompt (N = B * G rows, group
    members adjacent), then one forward per new token through the cache, until every row has
    produced <eos> or max_new_tokens. Returns the new tokens (N, T), T <= max_new_tokens; a row
    that has ended gets pad_id.

    What it leaves out of transformers' `generate` is what this project never uses (logits
    processors, stopping criteria, beam search, the per-call argument checks). Position ids
    count real tokens only, as in completion_logits, so a left-padded row is numbered as if
    it were alone. Per decoding step, the loop hands the model its attention mask ready-made
    (N, 1, 1, width), so transformers builds none; the cache is allocated once and written in
    place (FilledPrefixCache: attention over the filled positions only). compiled=True runs the
    decoding steps through `compiled_forward` over transformers' StaticCache instead, whose
    fixed width keeps one graph for every step. Under autocast the cache grows by concatenation
    (DynamicCache): the rotary embedding's float32 keys and the bfloat16 values cannot share
    one preallocated cache.
    """
    B, P = ids.shape
    N = B * group_size
    name = cache_argument(model)
    autocast = torch.is_autocast_enabled(ids.device.type)
    if compiled and autocast:
        raise ValueError("the compiled decoding step needs the static cache, which autocast rules out")
    step = compiled_forward(model) if compiled else model
    if compiled:
        cache = StaticCache(config=model.config, max_cache_len=P + max_new_tokens)
    else:
        cache = DynamicCache() if autocast else FilledPrefixCache(model.config, P + max_new_tokens)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)                       # (B, P)
    prompt_cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                use_cache=True, cache_position=torch.arange(P, device=ids.device), **{name: prompt_cache})
    for i, layer in enumerate(prompt_cache.layers):                         # keys, values (B, H, P, d) -> (N, ...)
        cache.update(layer.keys.repeat_interleave(group_size, 0), layer.values.repeat_interleave(group_size, 0), i)
    logits = out.logits[:, -1].repeat_interleave(group_size, 0)             # (N, V) predicts token 0
    positions = positions.repeat_interleave(group_size, 0)                  # (N, P)
    attn = torch.cat([mask.bool(), mask.new_zeros(B, max_new_tokens, dtype=torch.bool)], dim=1)  # (B, P + T)
    attn = attn.repeat_interleave(group_size, 0)                            # (N, P + T) grows into the zeros
    next_pos = positions[:, -1:] + 1                                        # (N, 1)
    ended = torch.zeros(N, dtype=torch.bool, device=ids.device)
    tokens = []
    for t in range(max_new_tokens):
        if greedy:
            token = logits.argmax(dim=-1)                                   # (N,)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)    # (N, V)
            token = torch.multinomial(probs, 1).squeeze(1)                  # (N,)
        token = torch.where(ended, pad_id, token)                           # (N,)
        tokens.append(token)
        ended = ended | (token == eos_id)
        if t == max_new_tokens - 1 or bool(ended.all()):
            break
        attn[:, P + t] = True
        width = attn.shape[1] if compiled else P + t + 1
        out = step(input_ids=token[:, None], attention_mask=attn[:, None, None, :width],   # (N, 1, 1, width)
                   position_ids=next_pos + t, use_cache=True,
                   cache_position=torch.tensor([P + t], device=ids.device), **{name: cache})
        logits = out.logits[:, -1]                                          # (N, V)
    return torch.stack(tokens, dim=1)                                       # (N, T)


def completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                      temperature: float = 1.0, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (N, T, V) that predict each completion token, for B = prompt_ids.shape[0]
    prompts of G = N / B completions each (group members adjacent), or, given `groups`
    (N,), the prompt index of each completion row.

    The same numbers as one forward pass over [prompt | completion], computed in two:
    the prompts once per group, their KV cache repeated for each of the group's rows, then
    the completions attending to it. A group shares its prompt, so this saves (G-1)/G of
    the prompt's cost (the teacher's privileged prompt is longer than the completion).
    Gradients flow through both passes. Position ids count real tokens only, so a
    left-padded row is numbered exactly as it would be alone.

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
    if checkpointed(model):
        ids = torch.cat([prompt_ids[groups], completion_ids], dim=1)                         # (N, P+T)
        attn = torch.cat([prompt_mask[groups], completion_mask], dim=1)                      # (N, P+T)
        position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)                                 # (N, P+T)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits  # (N, P+T, V)
        return logits[:, P - 1:-1].float() / temperature                                      # (N, T, V)
    prompt_pos = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)                 # (B, P)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos, use_cache=True)
    name = cache_argument(model)
    cache = getattr(out, name)
    cache.batch_select_indices(groups)                                        # keys/values (N, ...)
    attn = torch.cat([prompt_mask[groups], completion_mask], dim=1)           # (N, P+T)
    position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)[:, P:]               # (N, T)
    rest = model(input_ids=completion_ids, attention_mask=attn, position_ids=position_ids,
                 **{name: cache}).logits                                      # (N, T, V)
    first = out.logits[groups, -1:]                                           # (N, 1, V) predicts token 0
    return torch.cat([first, rest[:, :-1]], dim=1).float() / temperature      # (N, T, V)


def cache_argument(model) -> str:
    """The name under which this transformers version passes a KV cache to a model's forward
    and returns it: `cache` (transformers 5.x deprecates `past_key_values`, to be removed in
    5.40) where the forward takes it, else `past_key_values`. A wrapped model (DDP, FSDP, a
    DeepSpeed engine) passes its arguments on: the wrapped model's forward decides."""
    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"


def checkpointed(model) -> bool:
    """Whether the model runs with gradient (activation) checkpointing on."""
    inner = unwrap(model)
    name = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(inner, name, False))


def unwrap(model):
    """The model inside distributed wrappers (DDP, FSDP, a DeepSpeed engine keep it as `.module`)
    and torch.compile's (`._orig_mod`)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at each position: (N, T, V), (N, T) -> (N, T)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


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


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over positions where mask is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)
