"""Character tokenizer and the tiny Llama: encoding, save/load, size."""

import os
import random

import pytest
import torch

from rlsd_min import model as model_io
from rlsd_min.config import ModelConfig
from rlsd_min.tasks import OPS, random_problem
from rlsd_min.teacher import teacher_prompt


def _task_strings(n=60):
    rng = random.Random(0)
    out = []
    for _ in range(n):
        p = random_problem(rng, OPS, rng.randrange(1, 5))
        out += [p.prompt, p.solution, p.prompt + p.solution, teacher_prompt(p.prompt, p.context("solution"))]
    return out


def test_round_trip_one_token_per_character(tokenizer):
    for text in _task_strings():
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id                      # <bos> prepended
        assert len(ids) == len(text) + 1                             # one token per character
        assert tokenizer.bos_token_id not in ids[1:]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        plain = tokenizer(text, add_special_tokens=False).input_ids
        assert plain == ids[1:]
        # each character maps to its own token, independent of its neighbours
        assert plain == [tokenizer(ch, add_special_tokens=False).input_ids[0] for ch in text]


def test_distinct_characters_get_distinct_ids(tokenizer):
    chars = "0123456789+-*= \n|"
    ids = [tokenizer(ch, add_special_tokens=False).input_ids for ch in chars]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(chars)


def test_special_tokens(tokenizer):
    specials = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    assert None not in specials and len(set(specials)) == 4        # pad != eos in particular
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer(">", add_special_tokens=False).input_ids == [tokenizer.unk_token_id]
    eos_text = tokenizer.decode([tokenizer(c, add_special_tokens=False).input_ids[0] for c in "12"]
                                + [tokenizer.eos_token_id, tokenizer.pad_token_id], skip_special_tokens=True)
    assert eos_text == "12"


def test_padding_side_is_left(tokenizer):
    assert tokenizer.padding_side == "left"
    enc = tokenizer(["1+2=", "123+456="], padding=True, return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    assert ids.shape == (2, 9)
    assert ids[0, :4].tolist() == [tokenizer.pad_token_id] * 4 and mask[0].tolist() == [0] * 4 + [1] * 5
    assert ids[0, 4].item() == tokenizer.bos_token_id
    assert ids[0, 5:].tolist() == tokenizer("1+2=", add_special_tokens=False).input_ids
    assert mask[1].sum() == 9 and ids[1, 0].item() == tokenizer.bos_token_id


def test_save_load_round_trip_identical_logits(tmp_path, tokenizer, tiny_model):
    model = tiny_model(seed=3)
    with torch.no_grad():  # make it differ from any fresh init
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "ckpt"
    model_io.save(model, tokenizer, str(path), extra={"extra.pt": {"x": 1}})
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]                   # no .tmp / .old left behind
    assert torch.load(path / "extra.pt", weights_only=True) == {"x": 1}
    loaded, tok2 = model_io.load(str(path))
    enc = tokenizer(["1+2=", "123+456=", "9*9="], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = model(**enc).logits
        b = loaded.eval()(**enc).logits
    assert torch.equal(a, b)
    assert model_io.n_params(loaded) == model_io.n_params(model)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied
    assert tok2.padding_side == "left"
    assert (tok2.pad_token_id, tok2.bos_token_id, tok2.eos_token_id) == (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert tok2.get_vocab() == tokenizer.get_vocab()
    assert tok2("12+3=").input_ids == tokenizer("12+3=").input_ids


def test_save_replaces_an_existing_checkpoint(tmp_path, tokenizer, tiny_model):
    path = str(tmp_path / "ckpt")
    model_io.save(tiny_model(seed=1), tokenizer, path)
    second = tiny_model(seed=2)
    model_io.save(second, tokenizer, path)
    loaded, _ = model_io.load(path)
    for (n, p), q in zip(second.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), n
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_load_missing_path_names_it(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        model_io.load(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        model_io.load(str(tmp_path / "empty"))


def test_default_model_has_about_half_a_million_parameters(tokenizer):
    cfg = ModelConfig()
    model = model_io.build_model(cfg, tokenizer)
    V, h, i, L = len(tokenizer), cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    # tied embedding + per layer (q, k, v, o; gate, up, down; two RMSNorms) + final norm
    by_hand = V * h + L * (4 * h * h + 3 * h * i + 2 * h) + h
    assert V == 21 and by_hand == 527_616
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert model_io.n_params(model) == sum(unique.values()) == by_hand
    assert 400_000 < model_io.n_params(model) < 600_000


def test_base_checkpoint_is_the_default_architecture(base, tokenizer):
    model, tok = base
    assert model_io.n_params(model) == 527_616
    assert model.config.max_position_embeddings == ModelConfig().max_positions
    assert tok.get_vocab() == tokenizer.get_vocab() and tok.padding_side == "left"


def test_build_model_is_seeded(tokenizer):
    cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    a, b, c = (model_io.build_model(cfg, tokenizer, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
