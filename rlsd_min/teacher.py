"""Teacher conditioning: the same model, shown the privileged context c, acts as teacher.

The teacher prompt is the student prompt with a privileged block in front of it.
The template lives here, in one place:

    student  "<bos>123+045="
    teacher  "<bos>168|123+045="                                   (context = answer)
    teacher  "<bos>3+5+0=08 2+4+0=06 1+0+0=01\\n168|123+045="       (context = solution)
    teacher  "<bos>3+5+0=08 2+4+0=06 1+0+0=01\\n168|123+045="       (context = sibling: a success of its group)
    teacher  "<bos>456+111=567|123+045="                           (context = other_answer)

Because the question still ends the teacher prompt, the student's completion reads
naturally after either prompt, and the teacher can score it token by token.

The contexts (`CONTEXT_KINDS`, docs/opsd.md "Which context", docs/leakage.md):

    answer, solution   the problem's own reference (Problem.context): one prompt per group
    sibling            a successful completion of the row's own group other than the row
                       (`sibling_completions`, SDPO's rule): one prompt per row; a row whose
                       group has no other success has no teacher
    other_answer,      a worked example of a *different* problem of the same split: its question
    other_solution     followed by its answer / solution (`other_problems`, a seeded
                       derangement): one prompt per group, nothing about this problem's answer
"""

from __future__ import annotations

import copy
import random

import torch

from .decoding import split_head
from .sampling import (check_fits, chunked_logprobs, completion_hidden, encode_prompts,
                       gather_logprobs, output_logits)

PRIVILEGED_TEMPLATE = "{context}|{prompt}"
"""Teacher prompt: privileged context c, a '|' separator, then the student prompt x."""
REFERENCE_KINDS = ("answer", "solution")
"""contexts from the problem's own reference (Problem.context)"""
OTHER_KINDS = {"other_answer": "answer", "other_solution": "solution"}
"""contexts from another problem's worked example: kind -> the reference it shows"""
CONTEXT_KINDS = REFERENCE_KINDS + ("sibling",) + tuple(OTHER_KINDS)
"""the values of TrainConfig.teacher_context"""
SUCCESS_REWARD = 1.0
"""a completion whose reward is at least this (the verifier's reward of a correct answer) is a
success, which a `sibling` teacher can be shown (TRL SDPOConfig.success_reward_threshold's default)"""
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


def sibling_completions(texts: list[str], rewards, group_size: int) -> list[str | None]:
    """The `sibling` context of each row: the completion of the first row j != i of row i's group,
    in group order, whose reward is at least SUCCESS_REWARD; None where the group has no such row.

    SDPO's rule (TRL SDPOTrainer with dont_reprompt_on_self_success). The rows of a group are
    independent samples in random order, so the rule adds no randomness of its own: the
    sibling is fixed by the rollout, itself fixed by the run's seed and step. texts (N,),
    rewards (N,) in the rollout's order (group members adjacent).
    """
    N, G = len(texts), group_size
    if len(rewards) != N or N % G:
        raise ValueError(f"{N} completions and {len(rewards)} rewards do not make groups of {G}")
    success = [float(r) >= SUCCESS_REWARD for r in rewards]
    out = []
    for i in range(N):
        start = i - i % G
        others = [j for j in range(start, start + G) if j != i and success[j]]
        out.append(texts[others[0]] if others else None)
    return out


def derangement(n: int, seed: int) -> list[int]:
    """A permutation pi of range(n) with pi[i] != i for every i, uniform over all such: a seeded
    shuffle, drawn again until nothing stays in place (about e = 2.7 draws)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {n}")
    rng, perm = random.Random(seed), list(range(n))
    while True:
        rng.shuffle(perm)
        if all(p != i for i, p in enumerate(perm)):
            return perm


def other_problems(pool: list, seed: int) -> dict:
    """{question: another problem of `pool`}: the problem whose worked example an `other_*`
    teacher is shown for each question of the pool (a split's problems), by a derangement of
    the pool's distinct questions (`derangement`, seeded): no question gets its own, and no
    other problem with the same question either."""
    first = {}
    for p in pool:
        first.setdefault(p.prompt, p)
    distinct = list(first.values())
    perm = derangement(len(distinct), seed)
    return {p.prompt: distinct[perm[k]] for k, p in enumerate(distinct)}


def worked_example(problem, kind: str) -> str:
    """A problem shown as a worked example: its question followed by its `kind` reference,
    e.g. '456+111=567' (answer)."""
    return problem.prompt + problem.context(kind)


def privileged_prompts(problems: list, context_kind: str, template: str = PRIVILEGED_TEMPLATE, *,
                       others: dict | None = None, siblings: list | None = None) -> list:
    """The teacher's prompts: `teacher_prompt` of each question and its context of kind
    `context_kind` (a run's teacher_context, CONTEXT_KINDS). The loop's length check, the step and
    the leakage probes build the teacher's prompts here.

    answer, solution   one prompt per problem, from its own reference
    other_*            one prompt per problem, from the worked example of others[its question]
                       (`other_problems`)
    sibling            one prompt per *row*: siblings holds the N = len(problems) * G sibling
                       completions (`sibling_completions`, None for a row without one); the
                       prompt is None for such a row
    """
    if context_kind in REFERENCE_KINDS:
        return [teacher_prompt(p.prompt, p.context(context_kind), template) for p in problems]
    if context_kind in OTHER_KINDS:
        if others is None:
            raise ValueError(f"teacher_context={context_kind!r} needs the other problems: pass "
                             f"others=other_problems(split, seed)")
        missing = [p.prompt for p in problems if p.prompt not in others]
        if missing:
            raise ValueError(f"no other problem for question {missing[0]!r}: others was built from another split")
        kind = OTHER_KINDS[context_kind]
        return [teacher_prompt(p.prompt, worked_example(others[p.prompt], kind), template) for p in problems]
    if context_kind == "sibling":
        if siblings is None or not problems or len(siblings) % len(problems):
            raise ValueError(f"teacher_context='sibling' needs one sibling completion (or None) per row, "
                             f"got {None if siblings is None else len(siblings)} for {len(problems)} problems")
        G = len(siblings) // len(problems)
        return [None if s is None else teacher_prompt(problems[i // G].prompt, s, template)
                for i, s in enumerate(siblings)]
    raise ValueError(f"unknown teacher context {context_kind!r}; choose from {CONTEXT_KINDS}")


def longest_privileged_prompt(tokenizer, problems: list, context_kind: str, template: str,
                              max_new_tokens: int) -> int:
    """Tokens of the longest teacher prompt `privileged_prompts` can build for questions of
    `problems` (a split): a sibling is a completion of at most max_new_tokens tokens, another
    problem's example at most the longest of the split's. Token counts add over the
    concatenation (exact for the package's character tokenizer)."""
    longest = max(problems, key=lambda p: len(p.prompt) + len(p.solution))
    if context_kind == "sibling":
        empty = privileged_prompts([longest], context_kind, template, siblings=[""])[0]
        return len(tokenizer(empty).input_ids) + max_new_tokens
    if context_kind in OTHER_KINDS:
        question = max(problems, key=lambda p: len(p.prompt))
        prompt = privileged_prompts([question], context_kind, template, others={question.prompt: longest})[0]
    else:
        prompt = privileged_prompts([longest], context_kind, template)[0]
    return len(tokenizer(prompt).input_ids)


def encode_teacher_prompts(tokenizer, prompts: list, rollout, device):
    """(ids (U, P'), mask (U, P'), prompt_index, rows): teacher prompts encoded for
    `score_completions`, given one per group (B = N / G; U = B, prompt_index and rows None:
    a group's rows share its prompt's cache) or one per row (N, None for a row without a
    teacher; equal prompts are encoded once, prompt_index (N,) long is the prompt of each row
    and rows (N,) bool the rows that have one)."""
    N, G = rollout.completion_ids.shape[0], rollout.group_size
    if len(prompts) * G == N and None not in prompts:
        return (*encode_prompts(tokenizer, prompts, device), None, None)
    if len(prompts) != N:
        raise ValueError(f"{len(prompts)} teacher prompts for {N} completions in groups of {G}: "
                         f"give one per group or one per row")
    rows = torch.tensor([p is not None for p in prompts], device=device)                 # (N,)
    distinct = list(dict.fromkeys(p for p in prompts if p is not None))
    where = {p: k for k, p in enumerate(distinct)}
    prompt_index = torch.tensor([where.get(p, 0) for p in prompts], device=device)       # (N,)
    if not distinct:                                                                     # no row has a teacher
        empty = torch.zeros(0, 1, dtype=torch.long, device=device)
        return empty, empty, prompt_index, rows
    return (*encode_prompts(tokenizer, distinct, device), prompt_index, rows)


def teacher_logprobs(model, tokenizer, teacher_prompts: list, rollout, return_logits: bool = False,
                     temperature: float = 1.0, rows: torch.Tensor | None = None):
    """The teacher's log-probs of the student's own completion tokens, aligned with the student's.

    teacher_prompts holds one prompt per *group* (B = N / G), in the rollout's order, or one
    per row (N; `encode_teacher_prompts`). The teacher sees [teacher prompt | completion]; both
    are laid out like the student's batch (prompts left-padded, completions in the same
    columns), so column t of the result scores completion token t exactly where the student's
    log-probs do. One no-grad forward. rows (N,) bool scores only those rows (and only their
    prompts): the result then has one row per selected row, n = rows.sum(). Returns
    detached (n, T) log q_t(y_t), and the (n, T, V) logits too when return_logits.
    """
    ids, mask, prompt_index, has = encode_teacher_prompts(tokenizer, teacher_prompts, rollout,
                                                          rollout.completion_ids.device)   # (U, P')
    if has is not None and not bool(has.all() if rows is None else has[rows].all()):
        raise ValueError("a row without a teacher prompt (None) cannot be scored: leave it out of rows")
    return score_completions(model, ids, mask, rollout, return_logits, temperature, rows, prompt_index)


def score_completions(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rollout,
                      return_logits: bool = False, temperature: float = 1.0, rows: torch.Tensor | None = None,
                      prompt_index: torch.Tensor | None = None):
    """The log-probs of the rollout's own completion ids after given prompt ids: teacher_logprobs
    for prompts that are already tokenised (a chat template's ids, say).

    prompt_ids, prompt_mask (U, P') are left-padded; row n's prompt is prompt_index[n]
    ((N,) long), or, for prompt_index None, one prompt per group (U = B = N / G) in the
    rollout's order. The completion ids are used as they are, never re-tokenised. One no-grad
    forward over the rows asked for (rows (N,) bool, None = all N) and their prompts, each
    prompt once however many rows share it. Returns detached (n, T) log-probs, and the (n, T, V)
    logits too when return_logits.
    """
    G = rollout.group_size
    N = rollout.completion_ids.shape[0]
    if prompt_index is None:
        if prompt_ids.shape[0] * G != N:
            raise ValueError(f"{prompt_ids.shape[0]} teacher prompts x group size {G} != {N} completions")
        prompt_index = torch.arange(N, device=prompt_ids.device) // G                   # (N,)
    elif prompt_index.shape != (N,):
        raise ValueError(f"prompt_index must have shape ({N},), got {tuple(prompt_index.shape)}")
    check_fits(model, prompt_ids.shape[1], rollout.completion_ids.shape[1])
    picked = torch.arange(N, device=prompt_ids.device) if rows is None else rows.nonzero().squeeze(1)  # (n,)
    used, groups = torch.unique(prompt_index[picked], return_inverse=True)  # prompts needed; (n,) into them
    completion = rollout.completion_ids[picked]                                              # (n, T)
    body, head = split_head(model)
    with torch.no_grad():
        hidden = completion_hidden(body, prompt_ids[used], prompt_mask[used], completion,
                                   rollout.completion_mask[picked], groups)                 # (n, T, H)
        if not return_logits:  # the log-probs alone: without holding the (n, T, V) logits
            return chunked_logprobs(hidden, head, completion, temperature)[0]               # (n, T)
        logits = output_logits(head, hidden, temperature)                                   # (n, T, V)
        return gather_logprobs(logits, completion), logits                                  # (n, T), (n, T, V)


class Teacher:
    """Which weights act as teacher (`teacher_mode`; docs/opsd.md, "Implementation details").

    live    the current student weights (OPSD Algorithm 1 variant, SDPG)
    frozen  the initial weights theta_0 (OPSD paper default)
    synced  a frozen copy refreshed from the student every `sync_every` steps (RLSD)
    ema     an exponential moving average of the student, rate `ema_rate` (SDPO)

    `others` ({question: another problem}, `other_problems`) is what an other_* context shows
    for each training question; None for the other contexts.
    """

    def __init__(self, policy, mode: str, sync_every: int = 10, ema_rate: float = 0.05,
                 others: dict | None = None):
        if mode not in TEACHER_MODES:
            raise ValueError(f"unknown teacher mode {mode!r}; choose from {TEACHER_MODES}")
        self.mode, self.sync_every, self.ema_rate, self.others = mode, sync_every, ema_rate, others
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
