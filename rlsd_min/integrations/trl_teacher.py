"""The privileged teacher of the TRL trainers: its prompt, its weights, its scores.

    privileged_prompt(prompt, c, template)   the teacher's prompt of one dataset row
    template_for(prompt, given)              the template: the one given, else CHAT_TEMPLATE for a
                                             conversation, rlsd_min.teacher.PRIVILEGED_TEMPLATE for text
    CopyTeacher                              its own weights (rlsd_min.teacher.Teacher), or the student's (live)
    AdapterTeacher                           a LoRA student's teacher without a second model: frozen = the
                                             adapters off, synced and ema = a second adapter
    teacher_scores(trainer, teacher, ...)    its log-probs (and logits) of the student's completion ids,
                                             through the one scoring path (trl_scoring.completion_scores)
    sdpo_template(sdpo_args)                 TRL SDPOTrainer's teacher prompt as a privileged_template
"""

from __future__ import annotations

import contextlib

import torch
from accelerate.utils import is_peft_model
from trl.trainer.utils import add_fused_lm_head, use_adapter

from ..methods import METHODS
from ..teacher import PRIVILEGED_TEMPLATE, Teacher, teacher_prompt
from ..step import scored_teacher_rows
from .trl_scoring import causal_lm, completion_scores

CONTEXT_COLUMN = "privileged_context"
"""the dataset column holding each row's privileged context c (a string)"""
CHAT_TEMPLATE = "The reference answer is: {context}\n\n{prompt}"
"""The teacher's template for a conversational dataset when none is given: the context stated
in plain language, a blank line, then the question, all inside the user's turn (a chat model
reads the tiny task's "{context}|{prompt}" as noise)."""
TEACHER_ADAPTER = "rlsd_teacher"
"""the name of a LoRA student's synced or ema teacher adapter"""


def template_for(prompt, given: str | None) -> str:
    """The privileged template of a dataset whose prompts look like `prompt`: `given` when set."""
    if given is not None:
        return given
    return PRIVILEGED_TEMPLATE if isinstance(prompt, str) else CHAT_TEMPLATE


def privileged_prompt(prompt, context: str, template: str):
    """The teacher's prompt for one dataset row: the one place where TRL prompts meet c.

    plain text     teacher_prompt(prompt, c, template)                    (rlsd_min.teacher)
    conversation   the same conversation, its last (user) turn's content replaced by
                   teacher_prompt(content, c, template); earlier turns untouched

    The context goes into the user's turn, not a system turn: every chat template renders a
    user turn (some refuse a system turn or fold it into the first user turn), and the
    conversation then differs from the student's only inside the question, as the plain-text
    template does. The generation prompt that follows (the assistant's header) is the
    student's, so the student's completion reads the same after either prompt.
    """
    if isinstance(prompt, str):
        return teacher_prompt(prompt, context, template)
    last = prompt[-1]
    if last.get("role") != "user" or not isinstance(last.get("content"), str):
        raise ValueError("a conversational prompt must end with a user turn whose content is a string, got "
                         f"role {last.get('role')!r} with content of type {type(last.get('content')).__name__}")
    return [*prompt[:-1], {**last, "content": teacher_prompt(last["content"], context, template)}]


def check_dataset(dataset, name: str = "train_dataset", context: bool = True) -> None:
    """A clear error, before any model is loaded, for a dataset the teacher cannot read
    (context False: the teacher's context comes from the group, `sibling`, not from a column)."""
    if dataset is None:
        raise ValueError(f"{name} is required")
    if not context:
        return
    columns = getattr(dataset, "column_names", None)
    if columns is not None and CONTEXT_COLUMN not in columns:
        raise ValueError(f"{name} has no {CONTEXT_COLUMN!r} column (it has {list(columns)}): the privileged "
                         f"teacher reads each row's context c from it, a string")
    first = next(iter(dataset))
    if not isinstance(first.get(CONTEXT_COLUMN), str):
        raise ValueError(f"{name}'s {CONTEXT_COLUMN!r} must be a string, got "
                         f"{type(first.get(CONTEXT_COLUMN)).__name__} in its first row")


def check_teacher_sharding(mode: str, fsdp: bool, zero_stage: int | None) -> None:
    """Refuse a teacher that needs a full copy of the weights where the weights are sharded."""
    if mode == "live":
        return
    where = "FSDP" if fsdp else "DeepSpeed ZeRO-3" if zero_stage == 3 else None
    if where:
        raise ValueError(f"teacher_mode={mode!r} keeps its own full copy of the weights, which {where} shards "
                         f"across processes: use teacher_mode='live' (the current weights), or DDP / DeepSpeed "
                         f"ZeRO-1 or ZeRO-2, where every process holds the whole model")


class CopyTeacher:
    """rlsd_min.teacher.Teacher's weights (a frozen, synced or ema copy; live: the student's),
    the copy given TRL's fused LM head as the student and the reference model have it."""

    def __init__(self, student, mode: str, sync_every: int, ema_rate: float, args):
        self.teacher = Teacher(student, mode, sync_every, ema_rate)
        self.mode = mode
        if mode != "live":
            # TRL patches `forward` on the student's module instances (its fused LM head, the fp32
            # LM-head cast), closures over the student's own modules: the copy takes its classes'
            # forwards back, then a fused head of its own
            for module in self.teacher.model.modules():
                module.__dict__.pop("forward", None)
            add_fused_lm_head(self.teacher.model, temperature=args.temperature,
                              cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)

    @contextlib.contextmanager
    def scoring(self, student):
        """The module whose forward is the teacher's (`student`, as the loss calls it, when live)."""
        yield student if self.mode == "live" else self.teacher.model

    def update(self, student, steps_done: int) -> None:
        self.teacher.update(causal_lm(student), steps_done)

    def state_dict(self):
        return self.teacher.state_dict()

    def load_state_dict(self, state) -> None:
        self.teacher.load_state_dict(state)


class AdapterTeacher:
    """The teacher of a LoRA (PEFT) student, without a second model.

    live    the student as it is
    frozen  the student with its adapters disabled (peft's `disable_adapter()`): theta_0 when the
            adapter starts at zero, peft's LoRA initialisation (B = 0); an adapter that does not
            is copied into a second adapter instead, kept as it was
    synced  a second adapter, TEACHER_ADAPTER, copied from the student's every `sync_every` steps
    ema     TEACHER_ADAPTER, the moving average of the student's adapter at rate `ema_rate`

    Only the second adapter's weights are added (none for live and frozen), and only they are
    checkpointed."""

    def __init__(self, peft_model, mode: str, sync_every: int, ema_rate: float):
        self.model, self.mode, self.sync_every, self.ema_rate = peft_model, mode, sync_every, ema_rate
        self.student_adapter = peft_model.active_adapter
        starts_at_base = all(not p.any() for n, p in peft_model.named_parameters()
                             if ".lora_B." in n and f".{self.student_adapter}." in n)
        self.adapter = None if mode == "live" or (mode == "frozen" and starts_at_base) else TEACHER_ADAPTER
        if self.adapter is not None:
            peft_model.add_adapter(self.adapter, peft_model.peft_config[self.student_adapter])
            peft_model.set_adapter(self.student_adapter)                 # the student stays the active one
            self._copy(1.0)

    def _pairs(self):
        """(student's adapter parameter, the teacher adapter's) of each adapted weight."""
        params = dict(self.model.named_parameters())
        tag, own = f".{self.student_adapter}.", f".{self.adapter}."
        return [(p, params[n.replace(tag, own)]) for n, p in params.items() if tag in n and ".lora_" in n]

    @torch.no_grad()
    def _copy(self, rate: float) -> None:
        for student, teacher in self._pairs():
            teacher.requires_grad_(False).lerp_(student, rate)

    @contextlib.contextmanager
    def scoring(self, student):
        """`student` (the module the loss calls) with the teacher's adapter active, or the
        adapters disabled (frozen at the base); live: as it is."""
        if self.mode == "live":
            yield student
            return
        with use_adapter(self.model, self.adapter):
            yield student
        for _, teacher in self._pairs() if self.adapter else ():   # set_adapter made it trainable
            teacher.requires_grad_(False)

    def update(self, student, steps_done: int) -> None:
        if self.mode == "synced" and steps_done % self.sync_every == 0:
            self._copy(1.0)
        elif self.mode == "ema":
            self._copy(self.ema_rate)

    def state_dict(self):
        """The teacher adapter's weights only (None: nothing of its own, live or the base)."""
        if self.adapter is None:
            return None
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if f".{self.adapter}." in n}

    def load_state_dict(self, state) -> None:
        if state is not None:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for n, v in state.items():
                    params[n].copy_(v)


def make_teacher(trainer):
    """The trainer's teacher: an AdapterTeacher for a PEFT student, else a CopyTeacher."""
    args, student = trainer.args, trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(student):
        return AdapterTeacher(student, args.teacher_mode, args.sync_every, args.ema_rate)
    return CopyTeacher(student, args.teacher_mode, args.sync_every,
                       args.ema_rate, args)


def teacher_scores(trainer, teacher, student, inputs, rollout, advantages, cfg):
    """(log q_t(y_t) (N, T), full-vocabulary logits (N, T, V) or None, rows) of the teacher on the
    student's completion ids after each row's teacher prompt, by the one scoring path; the rows
    scored are rlsd_min.step.scored_teacher_rows' (those whose loss the teacher can change, among
    the rows that have a teacher: inputs["teacher_context_rows"] (N,) bool for `sibling`)."""
    full_vocab = METHODS[cfg.method].needs_logits(cfg)
    ids, mask = inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"]         # (N, P')
    cids, cmask = rollout.completion_ids, rollout.completion_mask                   # (N, T)

    def score(rows):
        picked = slice(None) if rows is None else rows                              # the n rows scored
        with torch.no_grad(), teacher.scoring(student) as model:
            lp, _, lg = completion_scores(trainer, model, ids[picked], mask[picked], cids[picked], cmask[picked],
                                          full_vocab=full_vocab)                   # (n, T), (n, T, V)
        return lp.float(), lg

    vocab = causal_lm(student).get_output_embeddings().weight.shape[0]
    return scored_teacher_rows(score, advantages, cfg, cids.shape, vocab, inputs.get("teacher_context_rows"))


def sdpo_template(sdpo_args) -> str:
    """trl.experimental.sdpo.SDPOConfig's teacher prompt as a privileged_template: its
    reprompt_template with {solution} its solution_template around the sibling ({context}) and
    {feedback} empty (include_environment_feedback=False), other braces escaped. With it, a
    `sibling` teacher's prompt is SDPOTrainer's, for text and chat rows alike."""
    prompt, context = "\0prompt\0", "\0context\0"                # placeholders no template holds
    text = sdpo_args.reprompt_template.format(
        prompt=prompt, solution=sdpo_args.solution_template.format(successful_previous_attempt=context), feedback="")
    text = text.replace("{", "{{").replace("}", "}}")
    return text.replace(prompt, "{prompt}").replace(context, "{context}")
