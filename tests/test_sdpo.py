"""The `sibling` teacher in the TRL trainers, and TRL's SDPOTrainer as its peer.

- teacher_context='sibling' through a real GRPO+OPSD trainer step on a chat dataset (the Qwen2 /
  ChatML fixture of tests/hf_fixtures.py): each row's teacher is re-prompted with the first other
  success of its own group (rlsd_min.teacher.sibling_completions), never itself; a row whose group
  has no other success has no teacher term, and teacher_frac counts the rows that have one;
- where the objectives coincide, GRPO+OPSD (opsd for pure distillation) and
  trl.experimental.sdpo.SDPOTrainer in full-logit mode give the same loss and gradients on the
  same batch, over two steps of an EMA teacher and one of a live one: loss_agg seq-mean = SDPO's
  loss_type 'grpo'; SDPO's (1 - w) * L_pg + w * L_distill = (1 - w) x ours with distill_coef
  w / (1 - w) (w = 1: opsd with distill_coef 1, no factor); distillation_alpha 1, 0, a in (0, 1)
  = divergence reverse, forward, jsd with jsd_beta a; num_iterations 1, so SDPO's
  importance-sampling clip has no old log-probs to act on (set off); the same teacher weights
  (live, or EMA at the same rate: the two EMA teachers are compared before the second step, then
  SDPO's is used by both, so the second step compares the objectives alone) and the same teacher
  prompt (trl_teacher.sdpo_template); SGD with our learning rate (1 - w) x SDPO's, the same step.

Nothing is downloaded.
"""

from __future__ import annotations

import os

import pytest
import torch

if not os.environ.get("CI"):  # CI installs the trl extra: there a missing trl fails, not skips
    pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from trl.experimental.sdpo import SDPOConfig, SDPOTrainer  # noqa: E402

import hf_fixtures as hf  # noqa: E402
from rlsd_min.integrations import trl as rt  # noqa: E402
from rlsd_min.integrations.trl_teacher import sdpo_template  # noqa: E402
from rlsd_min.methods import METHODS, distillation  # noqa: E402
from rlsd_min.objective import aggregate  # noqa: E402
from rlsd_min.teacher import SUCCESS_REWARD  # noqa: E402

G, T, PROMPTS = hf.G, 12, 4


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory):
    return hf.build_qwen2_chat_model(str(tmp_path_factory.mktemp("qwen2") / "model"))


def mixed_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """Per group of the 4 prompts of hf.rows (0 to 3 lead-ins): 0 or 2 lead-ins, hf.reward (rows
    0 and 2 succeed); 1 lead-in, only the bare answer (row 0: a lone success, which has no
    sibling of its own); 3 lead-ins, nothing (no row has a sibling)."""
    out = []
    for p, c, a in zip(prompts, completions, answer):
        question, text = p[-1]["content"], c[-1]["content"]
        lead_ins = sum(phrase in question for phrase in hf.LEAD_INS)
        out.append(0.0 if lead_ins == 3 else float(text == str(a)) if lead_ins == 1 else float(str(a) in text))
    return out


class TeacherWeights(TrainerCallback):
    """SDPOTrainer's EMA teacher's weights at the start of each step, before it scores."""

    def __init__(self, trainer):
        self.trainer, self.weights = trainer, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.weights.append({n: p.detach().clone() for n, p in self.trainer.teacher_model.named_parameters()})


class SameTeacher(TrainerCallback):
    """At the start of each step after the first, our EMA teacher's weights against SDPOTrainer's
    (`TeacherWeights`): each tensor's largest difference over its largest entry, kept; then
    SDPO's are copied in, so the step's loss compares the two objectives on one teacher."""

    def __init__(self, trainer, theirs: TeacherWeights):
        self.trainer, self.theirs, self.differences = trainer, theirs, []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:   # our copy is made at the first update, from theta_0
            return
        params = dict(self.trainer._teacher.teacher.model.named_parameters())
        theirs = self.theirs.weights[state.global_step]
        self.differences.append(max(((params[n] - v).abs().max() / v.abs().max()).item() for n, v in theirs.items()))
        with torch.no_grad():
            for n, v in theirs.items():
                params[n].copy_(v)


class Grads(TrainerCallback):
    """Each step's gradients, just before the optimiser step."""

    def __init__(self):
        self.grads, self.model = [], None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                           if p.grad is not None})


def recording(trainer, name: str) -> list:
    """Wrap trainer.<name> so that every value it returns is appended to the list returned."""
    seen, call = [], getattr(trainer, name)
    setattr(trainer, name, lambda *a, **k: seen.append(call(*a, **k)) or seen[-1])
    return seen


COMMON = dict(per_device_train_batch_size=PROMPTS * G, num_generations=G, max_completion_length=T,
              optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
              max_grad_norm=1e9, temperature=1.0, epsilon=0.2, beta=0.0, report_to="none", use_cpu=True,
              bf16=False, **rt.checkpointing(False), logging_steps=1, save_strategy="no", disable_tqdm=True, shuffle_dataset=False, seed=0)
"""The settings both trainers get. SGD, whose step is linear in the gradient (Adam's first step is
sign(g), which float rounding flips where an entry is near 0), and no clipping (max_grad_norm 1e9;
the clip is not linear in the loss either)"""


def chat_rows() -> list[dict]:
    """hf.rows' chat rows without their privileged_context column: the sibling teacher needs none."""
    return [{k: v for k, v in r.items() if k != "privileged_context"} for r in hf.rows(PROMPTS, conversational=True)]


def ours(path, tmp_path, method="grpo_opsd", reward=mixed_reward, **overrides):
    """rlsd_min's OPSDTrainer with teacher_context='sibling' on the chat rows, completions injected."""
    data = chat_rows()
    args = rt.OPSDConfig(output_dir=str(tmp_path / "ours"), with_reward=method == "grpo_opsd",
                         teacher_context="sibling", **{**COMMON, **overrides})
    grads = Grads()
    trainer = rt.OPSDTrainer(model=path, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(data),
                             processing_class=AutoTokenizer.from_pretrained(path), callbacks=[grads])
    grads.model = trainer.model
    hf.inject(trainer, data)
    return trainer, grads


def sdpo(path, tmp_path, reward=mixed_reward, **overrides):
    """TRL's SDPOTrainer on the same rows, the same completions injected into its sampling."""
    data = chat_rows()
    args = SDPOConfig(output_dir=str(tmp_path / "sdpo"), distillation_mode="full_logits", loss_type="grpo",
                      distillation_is_clip=None, **{**COMMON, **overrides})
    grads = Grads()
    trainer = SDPOTrainer(model=path, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(data),
                          processing_class=AutoTokenizer.from_pretrained(path), callbacks=[grads])
    grads.model = trainer.model
    tok = trainer.processing_class
    table = {tuple(trainer._tokenize_prompts([r["prompt"]])[0]): hf.completions(tok, r) for r in data}
    trainer._generate = lambda prompt_ids: (prompt_ids, [table[tuple(ids)][i % G] for i, ids in enumerate(prompt_ids)])
    return trainer, grads


# --- the sibling teacher in a TRL trainer ------------------------------------------------------

def test_each_row_is_taught_by_the_first_other_success_of_its_group_and_a_lone_row_by_nobody(qwen_path, tmp_path):
    trainer, _ = ours(qwen_path, tmp_path, learning_rate=1e-12, max_steps=1)   # the weights stay theta_0
    batches = recording(trainer, "_generate_and_score_completions")
    trainer.train()
    out, logged = batches[0], [h for h in trainer.state.log_history if "loss" in h][0]
    data = [r for r in chat_rows() for _ in range(G)]                                     # N rows, groups adjacent
    tok = trainer.processing_class
    texts = tok.batch_decode(out["completion_ids"], skip_special_tokens=True)             # (N,)
    rewards = mixed_reward([r["prompt"] for r in data], [[{"content": t}] for t in texts], [r["answer"] for r in data])
    assert rewards == [1, 0, 1, 0] + [1, 0, 0, 0] + [1, 0, 1, 0] + [0, 0, 0, 0]        # every kind of group
    rows = out["teacher_context_rows"]                                                     # (N,) bool
    for i, row in enumerate(data):
        start = i - i % G
        successes = [j for j in range(start, start + G) if j != i and rewards[j] >= SUCCESS_REWARD]
        assert bool(rows[i]) == bool(successes), i
        ids = out["teacher_prompt_ids"][i][out["teacher_prompt_mask"][i].bool()].tolist()
        if successes:   # the first other success of the same group: its text is the context
            j = successes[0]
            assert j != i and j // G == i // G and rewards[j] >= SUCCESS_REWARD
            prompt = rt.privileged_prompt(row["prompt"], texts[j], rt.CHAT_TEMPLATE)
            assert ids == trainer._tokenize_prompts([prompt])[0][0], i
            assert texts[j] in tok.decode(ids) and texts[j] != texts[i]
        else:           # no teacher: the row's own prompt stands in, never scored
            assert ids == trainer._tokenize_prompts([row["prompt"]])[0][0], i
    assert rows.tolist().count(True) == 11 and logged["teacher_frac"] == pytest.approx(11 / 16)

    # no teacher term on the rows without one: the logged distillation term is the one over the
    # rows with a sibling; over every row (the unscored rows' logits are 0) it would differ
    cfg = trainer._rlsd_config()
    out["num_items_in_batch"] = out["completion_mask"].sum()
    batch = trainer._step_batch(trainer.model, out, cfg)
    assert torch.equal(batch.teacher_rows, rows)
    assert not batch.teacher_logits[~rows].any() and batch.teacher_logits[rows].abs().sum() > 0
    with torch.no_grad():
        _, _, logits = trainer.student_scores(trainer.model, batch, cfg)                   # (N, T, V)
        d = distillation(cfg, logits, batch.teacher_logits)                                # (N, T)
    mask = out["completion_mask"]
    kept, every = (aggregate(x, mask, cfg.loss_agg, G).item() for x in (d * rows[:, None], d))
    print(dict(logged=logged["distill_loss"], kept=kept, every=every))
    assert logged["distill_loss"] == pytest.approx(kept, rel=1e-5) and abs(every - kept) > 0.1 * kept


@pytest.mark.parametrize("method, config", [("rlsd", rt.RLSDConfig), ("sdpg", rt.SDPGConfig)])
def test_every_trainer_with_a_teacher_takes_the_sibling(method, config, qwen_path, tmp_path):
    """RLSD's and SDPG's trainers: the rows scored are those with a sibling among the method's own
    (A_i != 0, A_i > 0 under SDPG's gate), and teacher_frac counts the rows with a sibling."""
    data = chat_rows()
    args = config(output_dir=str(tmp_path / method), teacher_context="sibling",
                  **{**COMMON, "learning_rate": 1e-12, "max_steps": 1})
    trainer = rt.TRAINERS[method](model=qwen_path, reward_funcs=mixed_reward, args=args,
                                  train_dataset=Dataset.from_list(data))
    hf.inject(trainer, data)
    batches = recording(trainer, "_generate_and_score_completions")
    trainer.train()
    out, logged = batches[0], [h for h in trainer.state.log_history if "loss" in h][0]
    cfg = trainer._rlsd_config()
    out["num_items_in_batch"] = out["completion_mask"].sum()
    batch = trainer._step_batch(trainer.model, out, cfg)
    rows = out["teacher_context_rows"]
    own = METHODS[method].teacher_rows(out["advantages"], cfg)                            # (N,) bool
    print(method, dict(context=rows.sum().item(), own=own.sum().item(), scored=batch.teacher_rows.sum().item()))
    assert torch.equal(batch.teacher_rows, rows & own) and (rows & own).any() and not rows.all()
    assert logged["teacher_frac"] == pytest.approx(rows.float().mean().item()) and logged["teacher_kl"] != 0


def test_other_contexts_are_the_datasets_column(tmp_path):
    """sibling needs no privileged_context column (the trainers above have none); every other
    context is data, the column's."""
    kw = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert rt.OPSDConfig(teacher_context="sibling", **kw).rlsd_config.teacher_context == "sibling"
    with pytest.raises(ValueError, match="privileged_context column"):
        rt.OPSDConfig(teacher_context="other_answer", **kw)
    no_column = Dataset.from_list([{"prompt": "1+2=", "answer": 3}])
    with pytest.raises(ValueError, match="no 'privileged_context' column"):   # the column's own contexts need it
        rt.RLSDTrainer("no/such-model", hf.reward, rt.RLSDConfig(**kw), no_column)
    assert SUCCESS_REWARD == SDPOConfig(**kw).success_reward_threshold


# --- GRPO+OPSD against SDPOTrainer where the objectives coincide ---------------------------------

CASES = {   # w (SDPO's distillation_weight), SDPO's alpha, our divergence and its settings, teacher, steps
    "reverse_live": (0.25, 1.0, dict(divergence="reverse"), "live", 1),
    "jsd_ema": (0.5, 0.3, dict(divergence="jsd", jsd_beta=0.3), "ema", 2),
    "forward_ema_pure": (1.0, 0.0, dict(divergence="forward"), "ema", 2),
}
TOL = 2e-5
"""float32 rounding: the two trainers compute the same float32 quantities in a different order
(TRL's fused LM head and a hooked head for ours, the model's logits for SDPO; lerp against
mul + add for the EMA): the loss to TOL relative, every gradient entry and the EMA teacher's
weights within TOL x their tensor's largest entry (measured: at most 1.8e-6, and 0.0 for the
forward KL)"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_grpo_opsd_and_sdpo_give_the_same_loss_and_gradients(case, qwen_path, tmp_path):
    w, alpha, divergence, teacher, steps = CASES[case]
    method = "grpo_opsd" if w < 1 else "opsd"
    scale = 1 - w if w < 1 else 1.0                      # SDPO's loss = scale x ours
    peer, peer_grads = sdpo(qwen_path, tmp_path, distillation_weight=w, distillation_alpha=alpha,
                            teacher_model_kind=teacher, teacher_update_rate=0.05, teacher_sync_steps=1,
                            max_steps=steps)
    mine, my_grads = ours(qwen_path, tmp_path, method=method, loss_agg="seq-mean", teacher_mode=teacher,
                          ema_rate=0.05, distill_coef=w / (1 - w) if w < 1 else 1.0,
                          learning_rate=COMMON["learning_rate"] * scale,           # the same SGD step
                          privileged_template=sdpo_template(peer.args), max_steps=steps, **divergence)
    if teacher == "ema":
        theirs = TeacherWeights(peer)
        same = SameTeacher(mine, theirs)
        peer.add_callback(theirs)
        mine.add_callback(same)
    peer_losses, my_losses = recording(peer, "compute_loss"), recording(mine, "compute_loss")
    peer_batches = recording(peer, "_prepare_training_batch")
    my_batches = recording(mine, "_generate_and_score_completions")
    peer.train()
    mine.train()
    assert len(peer_losses) == len(my_losses) == steps
    for step in range(steps):
        theirs, own = peer_batches[step], my_batches[step]
        assert torch.equal(theirs["completion_ids"], own["completion_ids"])
        assert torch.allclose(theirs["advantages"], own["advantages"], rtol=1e-6, atol=1e-6)
        rows = own["teacher_context_rows"]
        assert torch.equal(theirs["self_distillation_mask"].bool(), rows)           # the same rows taught
        prompt_len = theirs["teacher_input_ids"].shape[1] - own["completion_ids"].shape[1]
        for i in rows.nonzero().squeeze(1).tolist():                                 # the same teacher prompt
            their_ids = theirs["teacher_input_ids"][i, :prompt_len][theirs["teacher_attention_mask"][i, :prompt_len].bool()]
            assert torch.equal(their_ids, own["teacher_prompt_ids"][i][own["teacher_prompt_mask"][i].bool()]), i
        loss = my_losses[step].detach() * scale
        print(case, step, dict(sdpo=peer_losses[step].item(), ours_scaled=loss.item()))
        assert peer_losses[step].item() == pytest.approx(loss.item(), rel=TOL)
        worst = 0.0
        for name, g in peer_grads.grads[step].items():
            mine_g = my_grads.grads[step][name] * scale
            worst = max(worst, ((g - mine_g).abs().max() / g.abs().max().clamp(min=1e-30)).item())
        print(case, step, "worst gradient difference / largest entry", worst)
        assert worst < TOL and set(peer_grads.grads[step]) == set(my_grads.grads[step])
    if teacher == "ema":   # the EMA teachers agree as the gradients do (lerp_ against mul_ + add_ adds an ulp)
        print(case, "EMA teacher: largest difference / largest entry", same.differences)
        assert len(same.differences) == steps - 1 and max(same.differences) < TOL
