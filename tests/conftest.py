"""Shared fixtures of the rlsd_min test suite.

Session-scoped: the character tokenizer, the warm-started base model (loaded once,
read only), the data splits, and a guard that fails the session if any test wrote
into data/ (tests write only under pytest's tmp_path).
"""

from __future__ import annotations

import hashlib
import pathlib

import pytest
import torch

import rlsd_min
from rlsd_min import model as model_io
from rlsd_min.config import ModelConfig
from rlsd_min.tasks import TASKS

BASE_CHECKPOINT, DATA_DIR = TASKS["arith"].base_checkpoint, TASKS["arith"].data_dir
from rlsd_min.tasks import load_splits, problems_of

# One intra-op thread: the models are tiny, and on a shared 2-core machine two OpenMP
# threads contending with another process made generate() 5-40x slower (measured).
torch.set_num_threads(1)

REPO = pathlib.Path(rlsd_min.__file__).resolve().parent.parent
TINY = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
"""a tiny random Llama for tests that need a model but not a trained one"""


def _snapshot(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def data_dir_untouched():
    """Fail the session if any file under data/ was created, removed or changed."""
    root = REPO / "data"
    before = _snapshot(root)
    yield
    after = _snapshot(root)
    assert after == before, (
        f"tests modified data/: added {sorted(set(after) - set(before))}, "
        f"removed {sorted(set(before) - set(after))}, "
        f"changed {sorted(k for k in set(after) & set(before) if after[k] != before[k])}")


@pytest.fixture(scope="session")
def tokenizer():
    return model_io.build_tokenizer()


@pytest.fixture(scope="session")
def base():
    """(model, tokenizer) of the warm-started base checkpoint data/base. Do not modify."""
    model, tok = model_io.load(str(BASE_CHECKPOINT))
    model.eval().requires_grad_(False)
    return model, tok


@pytest.fixture(scope="session")
def splits():
    """The data splits of data/arith as lists of Problems."""
    ds = load_splits(str(DATA_DIR))
    return {name: problems_of(ds[name]) for name in ds}


@pytest.fixture
def tiny_model(tokenizer):
    """Factory: a tiny randomly initialised Llama, eval mode; ModelConfig fields overridable."""
    def make(seed: int = 0, **overrides):
        cfg = ModelConfig(**{**TINY, **overrides})
        return model_io.build_model(cfg, tokenizer, seed=seed).eval()
    return make


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global torch RNG state."""
    torch.manual_seed(1234)
