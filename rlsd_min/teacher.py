"""Teacher conditioning: the same model, shown the privileged context c, acts as teacher.

The teacher prompt is the student prompt with a privileged block in front of it.
The template lives here, in one place:

    student  "<bos>123+045="
    teacher  "<bos>168|123+045="                                   (context = answer)
    teacher  "<bos>3+5+0=08 2+4+0=06 1+0+0=01\\n168|123+045="       (context = solution)

Because the question still ends the teacher prompt, the student's completion reads
naturally after either prompt, and the teacher can score it token by token.
"""

from __future__ import annotations

import copy

import torch

from .decoding import split_head
from .sampling import (check_fits, chunked_logprobs, completion_hidden, completion_logits, encode_prompts,
                       gather_logprobs)

PRIVILEGED_TEMPLATE = "{context}|{prompt}"
"""Teacher prompt: privileged context c, a '|' separator, then the student prompt x."""
CONTEXT_KINDS = ("answer", "solution")
TEACHER_MODES = ("live", "frozen", "synced", "ema")


def teacher_prompt(prompt: str, context: str, template: str = PRIVILEGED_TEMPLATE) -> str:
    """The teacher's prompt for student prompt x and privileged context c. The template holds
    {context} and {prompt}, once each or more, and no other placeholder ({{ and }} write braces)."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # a lone { or }
        raise ValueError(f"privileged template {template!r} is malformed ({e}); write a literal brace as "
                         "{{ or }}") from None
    unknown = sorted({f for f in fields if f not in ("context", "prompt")})
    if unknown:
        raise ValueError(f"privileged template {template!r} has the placeholder(s) "
                         f"{', '.join('{' + f + '}' for f in unknown)}; only {{context}} and {{prompt}} are filled in")
    for field in ("context", "prompt"):
        if field not in fields:
            raise ValueError(f"privileged template {template!r} lacks the {{{field}}} placeholder")
    return template.format(context=context, prompt=prompt)


def privileged_prompts(problems: list, context_kind: str, template: str = PRIVILEGED_TEMPLATE) -> list[str]:
    """The teacher's prompt of each problem: `teacher_prompt` of its prompt and its context of
    kind `context_kind` (a run's teacher_context). The loop's length check, the step and the
    leakage probes build the teacher's prompts here."""
    return [teacher_prompt(p.prompt, p.context(context_kind), template) for p in problems]


def teacher_logprobs(model, tokenizer, teacher_prompts: list[str], rollout, return_logits: bool = False,
                     temperature: float = 1.0, rows: torch.Tensor | None = None):
    """The teacher's log-probs of the student's own completion tokens, aligned with the student's.

    teacher_prompts holds one prompt per *group* (B = N / G), in the rollout's order.
    The teacher sees [teacher prompt | completion]; both are laid out like the student's
    batch (prompts left-padded, completions in the same columns), so column t of the
    result scores completion token t exactly where the student's log-probs do.
    One no-grad forward. rows (N,) bool scores only those rows (and only their groups'
    prompts): the result then has one row per selected row, n = rows.sum(). Returns
    detached (n, T) log q_t(y_t), and the (n, T, V) logits too when return_logits.
    """
    ids, mask = encode_prompts(tokenizer, teacher_prompts, rollout.completion_ids.device)  # (B, P')
    return score_completions(model, ids, mask, rollout, return_logits, temperature, rows)


def score_completions(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rollout,
                      return_logits: bool = False, temperature: float = 1.0, rows: torch.Tensor | None = None):
    """The log-probs of the rollout's own completion ids after given prompt ids: teacher_logprobs
    for prompts that are already tokenised (a chat template's ids, say).

    prompt_ids, prompt_mask (B, P') are left-padded, one prompt per group (B = N / G), in the
    rollout's order; the completion ids are used as they are, never re-tokenised. One no-grad
    forward over the rows asked for (rows (N,) bool, None = all N) and their groups' prompts.
    Returns detached (n, T) log-probs, and the (n, T, V) logits too when return_logits.
    """
    G = rollout.group_size
    N = rollout.completion_ids.shape[0]
    if prompt_ids.shape[0] * G != N:
        raise ValueError(f"{prompt_ids.shape[0]} teacher prompts x group size {G} != {N} completions")
    check_fits(model, prompt_ids.shape[1], rollout.completion_ids.shape[1])
    picked = torch.arange(N, device=prompt_ids.device) if rows is None else rows.nonzero().squeeze(1)  # (n,)
    used, groups = torch.unique(picked // G, return_inverse=True)           # prompts needed; (n,) into them
    completion = rollout.completion_ids[picked]                                              # (n, T)
    with torch.inference_mode():
        if return_logits:
            logits = completion_logits(model, prompt_ids[used], prompt_mask[used], completion,
                                       rollout.completion_mask[picked], temperature, groups)  # (n, T, V)
            logp = gather_logprobs(logits, completion)                                       # (n, T)
        else:  # the log-probs alone: without holding the (n, T, V) logits
            body, head = split_head(model)
            hidden = completion_hidden(body, prompt_ids[used], prompt_mask[used], completion,
                                       rollout.completion_mask[picked], groups)             # (n, T, H)
            logp = chunked_logprobs(hidden, head, completion, temperature)[0]               # (n, T)
    # clone: inference tensors become ordinary (still gradient-free) tensors for the loss
    return (logp.clone(), logits.clone()) if return_logits else logp.clone()


class Teacher:
    """Which weights act as teacher (`teacher_mode`; docs/opsd.md, "Implementation details").

    live    the current student weights (OPSD Algorithm 1 variant, SDPG)
    frozen  the initial weights theta_0 (OPSD paper default)
    synced  a frozen copy refreshed from the student every `sync_every` steps (RLSD)
    ema     an exponential moving average of the student, rate `ema_rate` (SDPO)
    """

    def __init__(self, policy, mode: str, sync_every: int = 10, ema_rate: float = 0.05):
        if mode not in TEACHER_MODES:
            raise ValueError(f"unknown teacher mode {mode!r}; choose from {TEACHER_MODES}")
        self.mode, self.sync_every, self.ema_rate = mode, sync_every, ema_rate
        self.model = policy if mode == "live" else copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, policy, steps_done: int) -> None:
        """Call after each optimiser step; `steps_done` counts finished RL steps."""
        if self.mode == "synced" and steps_done % self.sync_every == 0:
            self.model.load_state_dict(policy.state_dict())
        elif self.mode == "ema":
            for t, s in zip(self.model.parameters(), policy.parameters()):
                t.lerp_(s, self.ema_rate)

    def state_dict(self):
        """Weights to checkpoint (None for live: they are the policy's)."""
        return None if self.mode == "live" else self.model.state_dict()

    def load_state_dict(self, state) -> None:
        if state is not None:
            self.model.load_state_dict(state)
