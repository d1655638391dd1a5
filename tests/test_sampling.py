"""Group sampling and per-token log-probabilities (rlsd_min.sampling)."""

import copy
import shutil

import pytest
import torch

from rlsd_min import model as model_io
from rlsd_min import sample_group, token_logprobs
from rlsd_min.decoding import bf16_autocast
from rlsd_min.sampling import completion_mask, encode_prompts

EOS = 2


def test_completion_mask_hand_example():
    ids = torch.tensor([
        [5, 6, EOS, 7, EOS],      # eos in the middle: kept, everything after dropped
        [5, 6, 7, 8, 9],          # no eos: all kept
        [EOS, 5, 6, 7, 8],        # eos first: only the eos counts
        [EOS, EOS, 0, 0, 0],      # repeated eos: only the first
        [5, 6, 7, 8, EOS],        # eos last
    ])
    expected = torch.tensor([
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
    ])
    assert torch.equal(completion_mask(ids, EOS), expected)


def _peaky_tiny(tiny_model, scale=4.0, seed=0, **kw):
    """A tiny random model whose next-token distribution is spread but clearly not uniform."""
    model = tiny_model(seed=seed, **kw)
    with torch.no_grad():
        model.model.norm.weight.fill_(scale)
    return model


PROMPTS = ["1+2=", "12+34=", "123+456=", "1234+5678="]  # four different lengths: left padding matters


@pytest.mark.parametrize("which", ["base", "tiny"])
def test_token_logprobs_match_unpadded_per_row_forward(which, base, tiny_model):
    if which == "base":
        model, tok = base
    else:
        model, tok = _peaky_tiny(tiny_model, scale=2.0), base[1]
    torch.manual_seed(0)
    rollout = sample_group(model, tok, PROMPTS, group_size=2, max_new_tokens=24)
    with torch.no_grad():
        logp, logits = token_logprobs(model, rollout)
    N, T = rollout.completion_ids.shape
    assert logp.shape == (N, T) and logits.shape == (N, T, len(tok))
    lengths = rollout.completion_mask.sum(1)
    assert lengths.min() >= 1
    for i in range(N):
        prompt_ids = tok(PROMPTS[i // 2]).input_ids                        # <bos> + prompt, no padding
        L = int(lengths[i])
        comp = rollout.completion_ids[i, :L].tolist()
        with torch.no_grad():
            row_logits = model(input_ids=torch.tensor([prompt_ids + comp])).logits[0].double()
        P = len(prompt_ids)
        pred = row_logits[P - 1:P - 1 + L]                                  # logits that predict comp
        ref = torch.log_softmax(pred, -1).gather(-1, torch.tensor(comp)[:, None]).squeeze(-1)
        torch.testing.assert_close(logp[i, :L].double(), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(logits[i, :L].double(), pred, rtol=0, atol=1e-4)
    if which == "base":  # the trained model stops with eos: rows really have different lengths
        assert len(set(lengths.tolist())) > 1


def test_sample_group_shapes_and_layout(base):
    model, tok = base
    G, prompts = 3, ["12+34=", "123+456=", "905+118="]
    torch.manual_seed(0)
    r = sample_group(model, tok, prompts, group_size=G, max_new_tokens=30)
    N = len(prompts) * G
    P = max(len(p) for p in prompts) + 1
    assert r.prompt_ids.shape == (N, P) and r.prompt_mask.shape == (N, P)
    assert r.completion_ids.shape[0] == N and 1 <= r.completion_ids.shape[1] <= 30
    assert r.completion_mask.shape == r.completion_ids.shape and len(r.texts) == N
    assert r.group_size == G
    # row i holds prompt i // G, left-padded, starting with <bos>
    for i in range(N):
        own = tok(prompts[i // G]).input_ids
        assert r.prompt_ids[i, P - len(own):].tolist() == own
        assert r.prompt_ids[i, :P - len(own)].eq(tok.pad_token_id).all()
        assert r.prompt_mask[i].tolist() == [0] * (P - len(own)) + [1] * len(own)
    # mask = up to and including the first eos; pad after it
    assert torch.equal(r.completion_mask, completion_mask(r.completion_ids, tok.eos_token_id))
    assert r.completion_ids[r.completion_mask == 0].eq(tok.pad_token_id).all()
    # texts decode the completion ids (independent decoder: id -> character, specials dropped)
    inv = {i: s for s, i in tok.get_vocab().items()}
    special = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    for i in range(N):
        ids = r.completion_ids[i][r.completion_mask[i] == 1].tolist()
        assert r.texts[i] == "".join(inv[t] for t in ids if t not in special)
    # completions belong to their own prompt: the base model (trained on 3-digit addition)
    # starts with the units digits of its prompt, '3+6+0=09' for 123+456, '5+8+0=13' for 905+118
    first_step = {1: "3+6+0=09", 2: "5+8+0=13"}
    own = sum(r.texts[i].startswith(first_step[i // G]) for i in range(G, N))
    assert own >= 2 * G - 1, r.texts


def test_greedy_rows_of_a_group_belong_to_their_prompt(base):
    model, tok = base
    prompts = ["123+456=", "1+2=", "905+118="]
    r = sample_group(model, tok, prompts, group_size=3, max_new_tokens=30, greedy=True)
    for k, p in enumerate(prompts):
        alone = sample_group(model, tok, [p], group_size=1, max_new_tokens=30, greedy=True).texts[0]
        assert r.texts[3 * k:3 * k + 3] == [alone] * 3, (p, r.texts[3 * k:3 * k + 3], alone)
    assert len(set(r.texts[::3])) == 3


def _chi_square(counts: torch.Tensor, probs: torch.Tensor):
    n = counts.sum()
    expected = probs * n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    df = probs.numel() - 1
    p_value = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), chi2 / 2)
    return chi2.item(), p_value.item()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampler_draws_exactly_from_pi_theta(temperature, tiny_model, tokenizer):
    """Empirical first-token distribution of many samples vs softmax(logits / T)."""
    model, prompt, n = _peaky_tiny(tiny_model), "12+34=", 4000
    with torch.no_grad():
        logits = model(**tokenizer([prompt], return_tensors="pt")).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, -1)
    assert probs.max() < 0.6 and probs.min() > 0.005            # spread, but not uniform
    assert probs.max() > 3 * probs.min()
    torch.manual_seed(0)
    r = sample_group(model, tokenizer, [prompt], group_size=n, max_new_tokens=1, temperature=temperature)
    first = r.completion_ids[:, 0]
    counts = torch.bincount(first, minlength=probs.numel()).double()
    assert counts.sum() == n
    chi2, p_value = _chi_square(counts, probs)
    assert p_value > 1e-3, (chi2, p_value)
    tv = 0.5 * (counts / n - probs).abs().sum().item()
    assert tv < 0.05
    # the test has power: the same counts reject the distribution at another temperature
    wrong = torch.softmax(logits / (temperature * 1.5), -1)
    assert _chi_square(counts, wrong)[1] < 1e-6


def test_sampler_is_exact_for_left_padded_rows(tiny_model, tokenizer):
    """A short prompt batched with a long one is left-padded; its samples must still follow
    pi_theta(. | short prompt) as computed on the prompt alone, not a distribution that
    attends to the pad tokens."""
    model, n = _peaky_tiny(tiny_model, seed=1), 3000
    with torch.no_grad():  # let the context matter more, so that attending to pads shows
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight.mul_(3.0)
        attn.o_proj.weight.mul_(3.0)
    short, long = "7+8=", "1234+5678="
    padded = tokenizer([short, long], padding=True, return_tensors="pt").input_ids[:1]
    with torch.no_grad():
        probs = torch.softmax(model(**tokenizer([short], return_tensors="pt")).logits[0, -1].double(), -1)
        sees_pads = torch.softmax(model(input_ids=padded).logits[0, -1].double(), -1)
    assert 0.5 * (probs - sees_pads).abs().sum() > 0.08            # the test can tell them apart
    torch.manual_seed(1)
    r = sample_group(model, tokenizer, [short, long], group_size=n, max_new_tokens=1)
    assert r.prompt_mask[:n, 0].eq(0).all()                        # the short rows really are padded
    counts = torch.bincount(r.completion_ids[:n, 0], minlength=probs.numel()).double()
    chi2, p_value = _chi_square(counts, probs)
    assert p_value > 1e-3, (chi2, p_value)
    assert _chi_square(counts, sees_pads)[1] < 1e-6


def test_prompt_too_long_for_context_names_the_lengths(tiny_model, tokenizer):
    model = tiny_model(max_positions=16)
    prompt = "123+456="                                           # 9 tokens with <bos>
    with pytest.raises(ValueError, match=r"9 tokens.*max_new_tokens=8.*16"):
        sample_group(model, tokenizer, [prompt], group_size=2, max_new_tokens=8)
    r = sample_group(model, tokenizer, [prompt], group_size=2, max_new_tokens=7)  # 9 + 7 = 16 fits
    assert r.completion_ids.shape[1] <= 7


def test_encode_prompts_requires_left_padding():
    tok = model_io.build_tokenizer()
    tok.padding_side = "right"
    with pytest.raises(ValueError, match="left"):
        encode_prompts(tok, ["1+2=", "12+3="], "cpu")


def test_group_size_must_be_positive(base):
    model, tok = base
    with pytest.raises(ValueError, match="got 0"):
        sample_group(model, tok, ["1+2="], group_size=0, max_new_tokens=4)


# --- speed flags (TrainConfig.bf16_autocast, compile_decoding) ---------------------

def test_bf16_autocast_keeps_float32_logprobs_close_and_greedy_answers(base, splits):
    model, tok = base
    prompts = [p.prompt for p in splits["validation"][:16]]
    torch.manual_seed(0)
    rollout = sample_group(model, tok, prompts[:4], group_size=4, max_new_tokens=40)
    with torch.no_grad():
        logp32, _ = token_logprobs(model, rollout)
        with bf16_autocast("cpu"):
            logp16, logits16 = token_logprobs(model, rollout)
    assert logp16.dtype == logits16.dtype == torch.float32          # log-probs computed in float32
    diff = (logp16 - logp32).abs()[rollout.completion_mask == 1]
    assert diff.max() > 0, "autocast changed nothing: the forward did not run in bfloat16"
    assert diff.mean() < 0.02 and diff.max() < 0.5
    # the trained model's argmax survives bfloat16: greedy completions still decode to the same text
    greedy32 = sample_group(model, tok, prompts, group_size=1, max_new_tokens=40, greedy=True).texts
    with bf16_autocast("cpu"):
        greedy16 = sample_group(model, tok, prompts, group_size=1, max_new_tokens=40, greedy=True).texts
    assert sum(a == b for a, b in zip(greedy16, greedy32)) >= 15, (greedy16, greedy32)


def test_compile_decoding_gives_the_same_greedy_completions(base, splits):
    if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile on CPU (inductor) needs a C++ compiler: no g++, c++ or clang++ on PATH")
    from torch._dynamo.utils import counters

    model, tok = copy.deepcopy(base[0]), base[1]   # a model never compiled before
    prompts = [p.prompt for p in splits["validation"][:8]] + ["1+2="]   # one left-padded row
    default = sample_group(model, tok, prompts, group_size=2, max_new_tokens=40, greedy=True)
    counters.clear()
    static = sample_group(model, tok, prompts, group_size=2, max_new_tokens=40, greedy=True,
                          compile_decoding=True)
    assert counters["stats"]["unique_graphs"] >= 1, "the decoding forward was not compiled"
    assert static.texts == default.texts
    assert torch.equal(static.completion_ids, default.completion_ids)
    assert torch.equal(static.completion_mask, default.completion_mask)


class _CacheModel(torch.nn.Module):
    """Stands for a transformers model body (its decoder) of either side of the
    `past_key_values` -> `cache` rename."""

    def __init__(self, inner, new: bool):
        super().__init__()
        self.inner, self.new, self.config = inner, new, inner.config
        self.forward = self.forward_new if new else self.forward_old

    def forward_new(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, **({"cache": cache} if cache is not None else {}))
        return out

    def forward_old(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, **({"cache": past_key_values} if past_key_values is not None else {}))
        return type("Out", (), {"last_hidden_state": out.last_hidden_state, "past_key_values": out.cache})()


@pytest.mark.parametrize("new", [True, False])
def test_completion_logits_works_on_both_sides_of_the_cache_rename(tiny_model, tokenizer, new):
    """transformers 5.x renames the forward's `past_key_values` to `cache` (removal in 5.40): the
    two-pass forward finds the name the model's body takes and gives the one-pass forward's logits."""
    from rlsd_min.decoding import cache_argument
    from rlsd_min.sampling import completion_hidden, encode_completions, encode_prompts

    model = tiny_model()
    wrapped = _CacheModel(model.get_decoder(), new)
    assert cache_argument(wrapped) == ("cache" if new else "past_key_values")
    ids, mask = encode_prompts(tokenizer, ["12+34=", "1+2="], "cpu")                   # (B, P)
    cids, cmask = encode_completions(tokenizer, ["46", "3", "99", "4"], "cpu")         # (N, T), G = 2
    with torch.no_grad():
        two_pass = model.lm_head(completion_hidden(wrapped, ids, mask, cids, cmask))   # (N, T, V)
        full = model(input_ids=torch.cat([ids.repeat_interleave(2, 0), cids], 1),
                     attention_mask=torch.cat([mask.repeat_interleave(2, 0), cmask], 1)).logits
    P = ids.shape[1]
    rows = cmask.bool()
    torch.testing.assert_close(two_pass[rows], full[:, P - 1:-1][rows], atol=1e-5, rtol=1e-5)



def test_a_seeded_draw_is_reproducible_and_another_seed_differs(tiny_model, tokenizer):
    from rlsd_min.sampling import sample_group

    model = tiny_model(seed=4)
    draws = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        draws.append(sample_group(model, tokenizer, ["12+3=", "7+8="], 8, 12).completion_ids)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_decoding_stops_when_every_row_has_ended(base, splits):
    """No step is spent once all rows have produced <eos>: the completion is as wide as the
    longest row, not max_new_tokens."""
    from rlsd_min.sampling import sample_group

    model, tok = base
    torch.manual_seed(0)
    r = sample_group(model, tok, [p.prompt for p in splits["validation"][:8]], 2, 120 - 9, greedy=True)
    assert r.completion_ids.shape[1] == int(r.completion_mask.sum(1).max()) < 60
    assert (r.completion_ids == tok.eos_token_id).any(1).all()

def test_completion_logits_with_gradient_checkpointing_is_one_pass_with_the_same_numbers(tiny_model, tokenizer):
    """transformers drops the KV cache inside checkpointed layers, so a checkpointed model is
    scored in one pass over [prompt | completion]: the two-pass logits and gradients."""
    from rlsd_min.decoding import checkpointed
    from rlsd_min.sampling import completion_logits, encode_completions, encode_prompts

    ids, mask = encode_prompts(tokenizer, ["12+34=", "1+2="], "cpu")                   # (B, P)
    cids, cmask = encode_completions(tokenizer, ["46", "3", "99", "4"], "cpu")         # (N, T), G = 2
    rows = cmask.bool()
    out = {}
    for on in (False, True):
        model = tiny_model().train()
        if on:
            model.gradient_checkpointing_enable()
        assert checkpointed(model) == on
        logits = completion_logits(model, ids, mask, cids, cmask)                       # (N, T, V)
        logits[rows].logsumexp(-1).sum().backward()
        out[on] = logits.detach()[rows], model.model.embed_tokens.weight.grad
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], atol=1e-5, rtol=1e-5)


def test_cache_argument_and_checkpointing_look_through_a_distributed_wrapper(tiny_model):
    """DDP, FSDP and DeepSpeed keep the model as `.module` and pass the forward's arguments on."""
    from rlsd_min.decoding import cache_argument, checkpointed, unwrap

    model = tiny_model()

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    wrapped = Wrapper(Wrapper(model))
    assert unwrap(wrapped) is model and unwrap(model) is model
    assert cache_argument(wrapped) == cache_argument(model)
    model.gradient_checkpointing_enable()
    assert checkpointed(wrapped)


def test_filled_prefix_cache_decodes_as_the_uncached_forward(base, splits):
    """The decoding loop's cache (allocated once, attention over the filled positions, the mask
    handed over ready-made) against recomputing every step without a cache: the same greedy
    tokens, left-padded rows included, and the same next-token logits at each step."""
    from rlsd_min.decoding import FilledPrefixCache, cache_argument, decode

    model, tok = base
    name = cache_argument(model)
    prompts = [p.prompt for p in splits["validation"][:6]] + ["1+2=", "12+3="]   # left-padded rows
    ids, mask = encode_prompts(tok, prompts, "cpu")                                # (N, P)
    with torch.no_grad():
        tokens, _ = decode(model, ids, mask, 30, greedy=True, eos_id=EOS, pad_id=tok.pad_token_id)   # (N, T)
        seq, attn, want = ids, mask, []
        for t in range(tokens.shape[1]):                   # the uncached loop: a full forward per token
            pos = (attn.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=seq, attention_mask=attn, position_ids=pos).logits[:, -1]   # (N, V)
            want.append(logits.argmax(-1))
            seq = torch.cat([seq, tokens[:, t:t + 1]], 1)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
        # the cache's logits at one step, against the uncached forward's
        cache = FilledPrefixCache(model.config, ids.shape[1] + 4)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{name: cache})
        assert [layer.filled for layer in cache.layers] == [ids.shape[1]] * len(cache.layers)
        step_attn = torch.cat([mask, torch.ones_like(mask[:, :1])], 1).bool()[:, None, None, :]  # (N, 1, 1, P + 1)
        cached = model(input_ids=tokens[:, :1], attention_mask=step_attn, position_ids=pos[:, -1:] + 1,
                       use_cache=True, **{name: cache}).logits[:, -1]                                 # (N, V)
        full = torch.cat([ids, tokens[:, :1]], 1)
        full_attn = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        uncached = model(input_ids=full, attention_mask=full_attn,
                         position_ids=(full_attn.cumsum(1) - 1).clamp(min=0)).logits[:, -1]
    ended = torch.cumsum((tokens == EOS).long(), 1) - (tokens == EOS).long() > 0    # (N, T) after <eos>
    want = torch.stack(want, 1).masked_fill(ended, tok.pad_token_id)
    assert torch.equal(tokens, want)
    torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)
