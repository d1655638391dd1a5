"""The course's exercise checks: a student's function against the package's, on fresh random inputs.

An exercise cell of a notebook (cell tag `exercise`) defines a function whose body is left blank
(`raise NotImplementedError`); the cell after it (tag `check`) draws new random inputs with
`fresh_generator()` and calls `compare(...)`, which says what is wrong: still blank, a wrong
shape, or the first entry that differs from the package's answer, with the inputs' values and the
generator's seed. `RLSD_EXERCISE_SEED=<seed>` makes `fresh_generator()` draw the failing inputs again.
`gradient_of` turns a function into the gradient of its sum, so that a check compares gradients
the same way it compares values (a missing `.detach()` shows there).

The solutions are in notebooks/solutions/ (one module per notebook, `nbNN.py`). An exercise cell
imports its solution over the blank only when the environment sets RLSD_SOLUTIONS=1, as `make test`
does: the course runs in CI with the solutions in, so a broken exercise or check fails the build.
"""

from __future__ import annotations

import os

import torch


SEED_VARIABLE = "RLSD_EXERCISE_SEED"
SHOWN = 64
"""Tensors of up to this many entries are printed in full in a failure message (larger ones by shape)."""
_last_seed: list[int] = []


def fresh_generator() -> torch.Generator:
    """A torch.Generator seeded from the operating system (or from RLSD_EXERCISE_SEED when set): new
    inputs on every run, the global RNG (which the notebook's later cells may depend on) left
    untouched. The seed is kept for `compare`'s failure message."""
    given = os.environ.get(SEED_VARIABLE, "").strip()
    if given and not given.isdigit():
        raise ValueError(f"{SEED_VARIABLE} must be a non-negative integer, got {given!r}")
    seed = int(given) if given else int.from_bytes(os.urandom(8), "little") >> 1
    _last_seed[:] = [seed]
    return torch.Generator().manual_seed(seed)


def gradient_of(fn, wrt: int):
    """The function (*args) -> the gradient of fn(*args).sum() with respect to argument `wrt`, a
    floating-point tensor (zeros where no gradient reaches it): tensor arguments are copied, the
    floating-point ones made to require grad; other arguments pass as they are."""
    def grad(*args):
        inputs = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                  for a in args]
        fn(*inputs).sum().backward()
        g = inputs[wrt].grad
        return g if g is not None else torch.zeros_like(inputs[wrt])
    grad.__qualname__ = f"the gradient of {getattr(fn, '__qualname__', 'the function')}"
    return grad


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= SHOWN:
            values = [float(f"{v:.6g}") for v in value.double().flatten().tolist()]
            return f"tensor({values}, shape {tuple(value.shape)})"
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
                             f"{tuple(want_t.shape)} (as {ref_name}){_again()}")
    close = torch.isclose(got_t, want_t, atol=atol, rtol=rtol, equal_nan=True)
    if not bool(close.all()):
        where = tuple(int(i) for i in (~close).nonzero()[0]) if got_t.dim() else ()
        diff = (got_t - want_t).abs().nan_to_num(float("inf")).max().item()
        at = f" at index {where}" if where else ""
        raise AssertionError(f"{name}({inputs}) differs from {ref_name}{at}: got {got_t[where].item():.6g}, "
                             f"expected {want_t[where].item():.6g} (largest difference {diff:.3g}, "
                             f"{int((~close).sum())} of {close.numel()} entries wrong){_again()}")
    return got


def _again() -> str:
    """How to draw the failing inputs again: the seed of the last fresh_generator()."""
    if not _last_seed:
        return ""
    return (f". The inputs came from fresh_generator() seeded {_last_seed[0]}: set {SEED_VARIABLE}={_last_seed[0]} "
            f"(`%env {SEED_VARIABLE}={_last_seed[0]}` in a notebook) and run the check again to draw the same ones")
