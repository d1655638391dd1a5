"""Resolution of a run's settings: one place (TrainConfig.validate), whichever way a config is built."""

import dataclasses
import json

import pytest
import torch

import rlsd_min
from rlsd_min import model as model_io
from rlsd_min.config import PROFILES, TrainConfig, train_config
from rlsd_min.methods import METHOD_FIELDS, METHODS
from rlsd_min.tasks import TASKS


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("task", sorted(TASKS))
def test_direct_and_train_config_resolve_to_the_same_config(method, profile, task):
    direct = TrainConfig(method=method, profile=profile, task=task).validate()
    assert direct == train_config(profile, method=method, task=task)
    assert direct.validate() == direct                                  # resolving twice changes nothing
    explicit = dict(method=method, task=task, lr=3e-4, seed=2, steps=7, kl_coef=0.02)
    assert TrainConfig(profile=profile, **explicit).validate() == train_config(profile, **explicit)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_setting_is_resolved_from_the_method_record(method):
    cfg = TrainConfig(method=method).validate()
    record = METHODS[method]
    for name in METHOD_FIELDS:
        assert getattr(cfg, name) == record.defaults.get(name), name   # None exactly where unused
    for name, value in {**PROFILES["cpu"], **TASKS["arith"].overrides}.items():
        assert getattr(cfg, name) == value, name
    # nothing is left at None except the settings the method does not use and the two paths
    unused = {n for n in METHOD_FIELDS if n not in record.defaults} | {"data_dir", "base_checkpoint"}
    assert {f for f, v in cfg.to_dict().items() if v is None} == unused


def test_the_layers_apply_in_order_method_then_task_then_profile():
    cfg = TrainConfig(method="sdpg", task="split", profile="ci").validate()
    assert (cfg.kl_coef, cfg.loss_agg) == (0.01, "group-token-mean")      # the method's
    assert cfg.max_new_tokens == TASKS["split"].overrides["max_new_tokens"]  # the task's
    assert cfg.steps == PROFILES["ci"]["steps"]                            # the profile's
    mine = TrainConfig(method="sdpg", task="split", kl_coef=0.0, max_new_tokens=9, steps=3).validate()
    assert (mine.kl_coef, mine.max_new_tokens, mine.steps) == (0.0, 9, 3)  # an explicit value wins


def test_a_config_is_not_changed_in_place_by_validation():
    cfg = TrainConfig(method="opsd")
    resolved = cfg.validate()
    assert cfg.distill_coef is None and resolved.distill_coef == 1.0


def test_train_config_refuses_unknown_fields_and_profiles():
    with pytest.raises(ValueError, match="unknown TrainConfig field.*'lrr'"):
        train_config("ci", lrr=1e-3)
    with pytest.raises(ValueError, match="unknown profile 'tpu'"):
        TrainConfig(profile="tpu").validate()


def test_opsd_built_directly_trains(tmp_path, base):
    """The trap this resolution removes: TrainConfig(method='opsd') once kept distill_coef=0 and
    trained on a zero loss. Built directly, it now moves the weights on the ci profile."""
    cfg = TrainConfig(method="opsd", profile="ci", steps=2, eval_every=2, checkpoint_every=2)
    history = rlsd_min.train(cfg, str(tmp_path / "opsd"), progress=False)
    assert all(row["distill_loss"] > 0 and row["beta"] == 1.0 for row in history[1:])
    trained, _ = model_io.load(str(tmp_path / "opsd" / "checkpoint"))
    start = dict(base[0].named_parameters())
    assert any(not torch.equal(p, start[n]) for n, p in trained.named_parameters())
    recorded = json.load(open(tmp_path / "opsd" / "config.json"))   # the resolved values, not None
    assert recorded == cfg.validate().to_dict() and recorded["distill_coef"] == 1.0
    assert recorded["teacher_mode"] == "frozen" and recorded["steps"] == 2


def test_fields_of_another_method_are_refused_not_ignored():
    for method, field, value in (("grpo", "distill_coef", 0.1), ("rlsd", "divergence", "reverse"),
                                 ("grpo", "teacher_context", "answer")):
        with pytest.raises(ValueError, match=f"'{method}' does not use {field}; got {field}={value!r}"):
            TrainConfig(method=method, **{field: value}).validate()


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TrainConfig) if "float" in str(f.type)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_every_float_field_refuses_non_finite_values(field, bad):
    method = "sdpg" if field not in ("distill_coef",) else "opsd"
    with pytest.raises(ValueError, match=f"{field} must be a finite number, got {bad}"):
        TrainConfig(method=method, **{field: bad}).validate()
