"""The course's exercise checks: a student's function against the package's, on fresh random inputs.

An exercise cell of a notebook (cell tag `exercise`) defines a function whose body is left blank
(`raise NotImplementedError`); the cell after it (tag `check`) draws new random inputs with
`fresh_generator()` and calls `compare(...)`, which says what is wrong: still blank, a wrong
shape, or the first entry that differs from the package's answer, with the inputs.

The solutions are in notebooks/solutions/ (one module per notebook, `nbNN.py`). An exercise cell
imports its solution over the blank only when the environment sets RLSD_SOLUTIONS=1, as `make test`
does: the course runs in CI with the solutions in, so a broken exercise or check fails the build.
"""

from __future__ import annotations

import os

import torch


def fresh_generator() -> torch.Generator:
    """A torch.Generator seeded from the operating system: new inputs on every run, and the global
    RNG (which the notebook's later cells may depend on) left untouched."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 12:
            return f"tensor({[round(v, 4) for v in value.double().flatten().tolist()]}, shape {tuple(value.shape)})"
        return f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (str, int, float)) for v in value):
        return repr(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return repr(value)
    return type(value).__name__


def _clone(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def compare(name: str, mine, reference, *args, atol: float = 1e-6, rtol: float = 1e-5, **kwargs):
    """Call `reference(*args, **kwargs)` and `mine(...)` (on copies of tensor inputs); raise an
    AssertionError that says what is wrong when they differ. Returns the student's value."""
    inputs = ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()])
    ref_name = getattr(reference, "__qualname__", "the package")
    if ref_name == "<lambda>" or "<locals>" in ref_name:
        ref_name = "the package's answer"
    want = reference(*[_clone(a) for a in args], **{k: _clone(v) for k, v in kwargs.items()})
    try:
        got = mine(*[_clone(a) for a in args], **{k: _clone(v) for k, v in kwargs.items()})
    except NotImplementedError as e:
        raise AssertionError(f"{name} is still blank ({e}): write its body in the exercise cell above, "
                             "run that cell, then this one") from None
    if got is None:
        raise AssertionError(f"{name}({inputs}) returned None: return the result") from None
    got_t = torch.as_tensor(got).detach().double()
    want_t = torch.as_tensor(want).detach().double()
    if got_t.shape != want_t.shape:
        raise AssertionError(f"{name}({inputs}) returned shape {tuple(got_t.shape)}, expected "
                             f"{tuple(want_t.shape)} (as {ref_name})")
    close = torch.isclose(got_t, want_t, atol=atol, rtol=rtol, equal_nan=True)
    if not bool(close.all()):
        where = tuple(int(i) for i in (~close).nonzero()[0]) if got_t.dim() else ()
        diff = (got_t - want_t).abs().nan_to_num(float("inf")).max().item()
        at = f" at index {where}" if where else ""
        raise AssertionError(f"{name}({inputs}) differs from {ref_name}{at}: got {got_t[where].item():.6g}, "
                             f"expected {want_t[where].item():.6g} (largest difference {diff:.3g}, "
                             f"{int((~close).sum())} of {close.numel()} entries wrong)")
    return got
