"""Information leakage of the privileged context (RLSD paper, Theorem 1 and Proposition 1).

Averaged over the references r the teacher could have been shown, the OPSD loss splits as

    E_r KL(q_t(.|r) || p_t)  =  KL(qbar_t || p_t)  +  I(Y_t ; R | X, Y_<t),
    qbar_t = E_r q_t(.|r).

The mutual-information term does not depend on the student at all: it is a floor the
OPSD loss cannot go below, and it is zero only when the teacher ignores which reference
it was shown. On a task with several valid answers it is strictly positive and can be
computed exactly by enumerating the references.
"""

from __future__ import annotations

import re

import torch

from .sampling import sample_group, token_logprobs
from .tasks import SplitProblem, parse_answer
from .objective import aggregate
from .teacher import (OTHER_KINDS, PRIVILEGED_TEMPLATE, other_problems, privileged_prompts, sibling_completions,
                      teacher_logprobs, teacher_prompt)


def mutual_information_floor(teacher_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """I(Y_t; R | x, y_<t) = sum_r w_r KL(q(.|r) || sum_r' w_r' q(.|r')) per position (RLSD Thm. 1).

    teacher_logprobs: (R, ..., V) the teacher's next-token log-probs under each reference r;
    weights: (R,) the probabilities P(r | x, y_<t), non-negative and summing to 1.
    Returns (...), in nats; 0 when every reference gives the same teacher, H(weights) when
    the teachers have disjoint supports.
    """
    R = teacher_logprobs.shape[0]
    if weights.shape != (R,):
        raise ValueError(f"weights must have shape ({R},) to match {R} references, got {tuple(weights.shape)}")
    if (weights < 0).any() or abs(weights.sum().item() - 1) > 1e-5:
        raise ValueError(f"weights must be non-negative and sum to 1, got sum {weights.sum().item():.6g}")
    keep = weights > 0                                                            # a reference of weight 0 adds nothing
    teacher_logprobs, weights, R = teacher_logprobs[keep], weights[keep], int(keep.sum())
    log_q = torch.log_softmax(teacher_logprobs.double(), dim=-1)                 # (R, ..., V) renormalised
    w = weights.double().reshape((R,) + (1,) * (log_q.dim() - 1))                 # (R, 1, ..., 1)
    log_qbar = torch.logsumexp(log_q + torch.log(w), dim=0)                       # (..., V) log sum_r w_r q_r
    q = log_q.exp()
    kl_r = torch.where(q > 0, q * (log_q - log_qbar), 0.0).sum(-1)                # (R, ...)
    return (w[..., 0] * kl_r).sum(0).to(teacher_logprobs.dtype)                   # (...)


def reverse_kl_floor(teacher_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """min_p sum_r w_r KL(p || q(.|r)) = -log sum_v exp(sum_r w_r log q(v|r)) per position.

    The floor of the *reverse*-KL OPSD loss (the package's default divergence), derived
    like Theorem 1: sum_r w_r KL(p || q_r) = KL(p || g) - log Z with g = exp(E_r log q_r) / Z,
    minimised at p = g. Zero iff all q_r agree; unlike the forward-KL floor it is not bounded
    by H(w): near-one-hot teachers that disagree make it large. Shapes as in
    `mutual_information_floor`.
    """
    R = teacher_logprobs.shape[0]
    if weights.shape != (R,):
        raise ValueError(f"weights must have shape ({R},) to match {R} references, got {tuple(weights.shape)}")
    if (weights < 0).any() or abs(weights.sum().item() - 1) > 1e-5:
        raise ValueError(f"weights must be non-negative and sum to 1, got sum {weights.sum().item():.6g}")
    log_q = torch.log_softmax(teacher_logprobs.double(), dim=-1)                 # (R, ..., V)
    w = weights.double().reshape((R,) + (1,) * (log_q.dim() - 1))                 # (R, 1, ..., 1)
    mean_log_q = (w * log_q).sum(0)                                               # (..., V) E_r log q_r
    return (-torch.logsumexp(mean_log_q, dim=-1)).to(teacher_logprobs.dtype)      # (...)


FLOORS = {"forward": mutual_information_floor, "reverse": reverse_kl_floor}
"""The exact floor of E_r D(q_r, p) over students p, for each divergence that has one."""


def reference_floor(model, tokenizer, problems: list, rollout, divergence: str,
                    template: str = PRIVILEGED_TEMPLATE, temperature: float = 1.0) -> torch.Tensor:
    """The OPSD loss floor at every completion token of a rollout, (N, T), in nats.

    For problems with several valid references (`SplitProblem.references`), the teacher
    (`model`) scores the rollout once under each reference; the student's samples do not
    depend on which reference the teacher was shown, so P(r | x, y_<t) is the uniform
    prior over the references (the data drew the reference uniformly).
    """
    if divergence not in FLOORS:
        raise ValueError(f"no closed-form floor for divergence {divergence!r}; choose from {tuple(FLOORS)}")
    refs = [p.references for p in problems]
    if any(len(r) != len(refs[0]) for r in refs):
        raise ValueError("every problem must have the same number of references")
    R = len(refs[0])
    log_q = torch.stack([
        teacher_logprobs(model, tokenizer, [teacher_prompt(p.prompt, r[k], template) for p, r in zip(problems, refs)],
                         rollout, return_logits=True, temperature=temperature)[1]
        for k in range(R)])                                                       # (R, N, T, V)
    weights = torch.full((R,), 1.0 / R, dtype=log_q.dtype, device=log_q.device)   # (R,)
    return FLOORS[divergence](log_q, weights)                                     # (N, T)


def distill_floor(teacher_model, tokenizer, batch, problems: list, cfg) -> float:
    """The floor of a run's distill_loss on one collected batch: `reference_floor` of its
    rollout under the run's teacher, aggregated as the loss is (cfg.loss_agg). The loop logs it
    as distill_floor when cfg.distill_floor (task split)."""
    floor = reference_floor(teacher_model, tokenizer, problems, batch.rollout, cfg.divergence,
                            cfg.privileged_template, cfg.temperature)           # (N, T)
    return aggregate(floor, batch.rollout.completion_mask, cfg.loss_agg, cfg.group_size).item()


# --- leakage probes ------------------------------------------------------------------

_STEP = re.compile(r"([0-9])[-+*]([0-9])[-+]([0-9])=([0-9])([0-9])")
TOKEN_KINDS = ("scratchpad", "carry", "choice", "answer", "format")
"""scratchpad: digits of the worked steps; carry: carries/borrows in and out of a step;
choice: the free digit d of a split answer; answer: digits of the final answer; format:
everything else (+ - * = space newline, special tokens)."""


def scratchpad_answer(completion: str) -> int | None:
    """The answer implied by a completion's own worked steps (arith task), or None.

    Each step 'x OP y OP c=kd' contributes its digit d (least significant first); the
    carry k of the last step leads. Lines before the last are the scratchpad.
    """
    lines = completion.rstrip("\n").split("\n")
    if len(lines) < 2:
        return None
    steps = lines[-2].split(" ")
    matches = [_STEP.fullmatch(s) for s in steps]
    if not steps or any(m is None for m in matches):
        return None
    return int(matches[-1][4] + "".join(m[5] for m in reversed(matches)))


def token_kinds(tokens: list[str], split: bool) -> list[str]:
    """The kind (TOKEN_KINDS) of each completion token; tokens are single characters or
    special tokens ('<eos>'), as the character tokenizer produces them."""
    kinds, chunk_start = [], 0
    last_newline = max((i for i, t in enumerate(tokens) if t == "\n"), default=len(tokens))
    for i, tok in enumerate(tokens):
        if tok in (" ", "\n"):
            chunk_start = i + 1
        if not (len(tok) == 1 and tok.isdigit()):
            kinds.append("format")
        elif split:
            kinds.append("choice" if i == 0 else "answer")
        elif i > last_newline:  # the final line
            kinds.append("answer")
        else:  # a step 'x+y+c=kd': c and k at offsets 4 and 6
            kinds.append("carry" if i - chunk_start in (4, 6) else "scratchpad")
    return kinds


@torch.no_grad()
def token_log_ratios(model, tokenizer, problems: list, rollout, context_kind: str,
                     template: str = PRIVILEGED_TEMPLATE, others: dict | None = None,
                     siblings: list | None = None) -> torch.Tensor:
    """Delta_t = log q(y_t | c, x, y_<t) - log p(y_t | x, y_<t) of `model` on a rollout, (N, T);
    others, siblings as teacher.privileged_prompts takes them; 0 on a row without a teacher."""
    G = rollout.group_size
    prompts = privileged_prompts(problems, context_kind, template, others=others, siblings=siblings)
    student = token_logprobs(model, rollout)[0]                                   # (N, T)
    assert len(problems) * G == student.shape[0]
    rows = torch.tensor([p is not None for p in prompts] if siblings is not None else [True] * len(student),
                        device=student.device)                                    # (N,)
    teacher = student.clone()                                                     # (N, T) Delta 0 without a teacher
    if rows.any():
        teacher[rows] = teacher_logprobs(model, tokenizer, prompts, rollout, rows=rows)   # (n, T)
    return (teacher - student) * rollout.completion_mask                          # (N, T)


def leakage_probes(model, tokenizer, train_problems: list, heldout_problems: list, context_kind: str = "answer",
                   template: str = PRIVILEGED_TEMPLATE, seed: int = 0) -> dict:
    """Leakage probes on training prompts and held-out prompts alike (one sample per prompt, T = 1).

    acc_{train,heldout}, gap = acc_train - acc_heldout; on the split task ref_match_* = the
    fraction of correct answers that are the data's reference (chance = 1/10: the student
    never sees the reference, so above chance on training prompts only means it learned
    question-to-reference shortcuts); on the arith task disagree_* = the fraction of
    completions whose final answer differs from the answer their own scratchpad implies; a
    fraction with nothing to count (no correct answer, no parsed completion) is left out;
    logratio_<kind> = the mean teacher-student log-ratio Delta_t (the current model shown
    its context of kind `context_kind` vs not) over tokens of each kind, both sets pooled. An
    other_* context is drawn within each set (teacher.other_problems, seeded by `seed`); a
    sibling context needs another success of the same prompt, which one sample per prompt never
    has, so a sibling run logs no logratio_<kind>.
    """
    was_training = model.training
    model.eval()
    out, sums = {}, {k: [0.0, 0] for k in TOKEN_KINDS}
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name, problems in (("train", train_problems), ("heldout", heldout_problems)):
            split = isinstance(problems[0], SplitProblem)
            rollout = sample_group(model, tokenizer, [p.prompt for p in problems], 1,
                                   max(p.max_chars for p in problems) + 4)
            correct = [p.reward(t) for p, t in zip(problems, rollout.texts)]
            out[f"acc_{name}"] = sum(correct) / len(problems)
            if split:
                hits = [p.chosen_digit(t) == p.ref for p, t, c in zip(problems, rollout.texts, correct) if c]
                if hits:  # a fraction of the correct answers: none, no value (not 0)
                    out[f"ref_match_{name}"] = sum(hits) / len(hits)
            else:
                pairs = [(parse_answer(t), scratchpad_answer(t)) for t in rollout.texts]
                pairs = [(a, s) for a, s in pairs if a is not None and s is not None]
                if pairs:  # a fraction of the parsed completions: none, no value (not 0)
                    out[f"disagree_{name}"] = sum(a != s for a, s in pairs) / len(pairs)
            others = other_problems(problems, seed) if context_kind in OTHER_KINDS else None
            siblings = sibling_completions(rollout.texts, correct, 1) if context_kind == "sibling" else None
            delta = token_log_ratios(model, tokenizer, problems, rollout, context_kind, template,
                                     others, siblings)                            # (N, T)
            lengths = rollout.completion_mask.sum(1).tolist()
            if siblings is not None:  # rows without a teacher have no log-ratio
                lengths = [n if s is not None else 0 for n, s in zip(lengths, siblings)]
            for row, ids, n in zip(delta.tolist(), rollout.completion_ids.tolist(), lengths):
                for d, kind in zip(row[:n], token_kinds(tokenizer.convert_ids_to_tokens(ids[:n]), split)):
                    sums[kind][0] += d
                    sums[kind][1] += 1
    model.train(was_training)
    out["gap"] = out["acc_train"] - out["acc_heldout"]
    out.update({f"logratio_{k}": s / n for k, (s, n) in sums.items() if n})
    return out
