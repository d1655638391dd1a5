"""The decoding engine under rlsd_min.sampling: the KV-cached decoding loop, its caches, the
compiled forwards, bfloat16 autocast, and the look through distributed wrappers.

    decode              one prompt forward per group, then one cached forward per new token
    FilledPrefixCache   a cache allocated once, attention over the written positions only
    compiled_forward    a model's forward through torch.compile, made once per model and kind
    bf16_autocast       forwards in bfloat16 (log-probs and losses stay float32)
    cache_argument, checkpointed, unwrap    what transformers' and torch's wrappers need

None of it changes what is computed: the same tokens from the same seed as transformers'
`generate` with DynamicCache, up to kernel rounding when compiled or under autocast.
"""

from __future__ import annotations

import inspect
import weakref

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache, StaticLayer


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

    dynamic=None (compile_decoding's decoding step): fixed shapes first; with the static
    cache every decoding step of a batch has the same shapes, so one graph serves them all, and
    the first batch of another width makes torch mark that size dynamic (one more compile, not
    one per width). dynamic=True (compile_scoring): the batch and sequence widths are symbolic
    from the start, so one graph serves the scoring forwards of every batch (a second one the
    no-grad forwards of a model that is also trained)."""
    kinds = _COMPILED.setdefault(model, {})
    if dynamic not in kinds:
        kinds[dynamic] = torch.compile(model, dynamic=dynamic)
    return kinds[dynamic]


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
    produced <eos> or max_new_tokens. Returns the new tokens (N, T), T <= max_new_tokens (a row
    that has ended gets pad_id), and the entropy (N, T) of the distribution each was drawn from
    (None when greedy).

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
    tokens, entropies = [], []
    for t in range(max_new_tokens):
        if greedy:
            token = logits.argmax(dim=-1)                                   # (N,)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)    # (N, V)
            token = torch.multinomial(probs, 1).squeeze(1)                  # (N,)
            entropies.append(torch.special.entr(probs).sum(-1))             # (N,) -sum p log p
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
    return torch.stack(tokens, dim=1), torch.stack(entropies, dim=1) if entropies else None   # (N, T), (N, T)


def cache_argument(model) -> str:
    """The name under which this transformers version passes a KV cache to a model's forward
    and returns it: `cache` (transformers 5.x deprecates `past_key_values`, to be removed in
    5.40) where the forward takes it, else `past_key_values`. A wrapped model (DDP, FSDP, a
    DeepSpeed engine) passes its arguments on: the wrapped model's forward decides."""
    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"


def split_head(model) -> tuple:
    """(body, head) of a causal LM: the model without its output layer (its forward returns
    `last_hidden_state`, the final norm applied) and the output layer (logits = head(hidden)).
    A model compiled by `compiled_forward` gives its body compiled the same way (dynamic shapes);
    a wrapped one (DDP, FSDP, DeepSpeed) the wrapped model's parts."""
    inner = unwrap(model)
    body, head = inner.get_decoder(), inner.get_output_embeddings()
    if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):   # torch.compile's wrapper
        body = compiled_forward(body, dynamic=True)
    return body, head


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
