"""The collapse rule and steps to a threshold (rlsd_min.lab.stability)."""

import pytest

from rlsd_min.lab.stability import collapsed, steps_to_threshold


@pytest.mark.parametrize("accs, expected", [
    ([0.5, 0.8, 0.6, 0.6, 0.6], True),          # fell 0.2 below its best and stayed
    ([0.5, 0.8, 0.6, 0.75, 0.6], False),        # one of the last three is within the margin
    ([0.5, 0.8, 0.6, 0.6, 0.8], False),         # recovered
    ([0.8, 0.7, 0.7, 0.7], False),              # 0.1 below is not *more* than the margin
    ([0.8, 0.6, 0.6], False),                   # too short to judge
    ([0.5, 0.5, 0.5, 0.5, 0.5], False),         # never improved
])
def test_collapse_rule(accs, expected):
    assert collapsed(accs, margin=0.1, patience=3) is expected


def test_collapse_rule_bad_input():
    with pytest.raises(ValueError, match="patience"):
        collapsed([0.1, 0.2], patience=0)


def test_steps_to_threshold():
    history = [{"step": 0, "eval_acc": 0.5}, {"step": 1}, {"step": 10, "eval_acc": 0.79},
               {"step": 20, "eval_acc": 0.81}, {"step": 30, "eval_acc": 0.9}]
    assert steps_to_threshold(history, 0.8) == 20
    assert steps_to_threshold(history, 0.95) is None
