"""Arithmetic tasks: scratchpad correctness, the verifier, data files."""

import dataclasses
import json
import operator
import os
import random
import re

import pytest

from rlsd_min.tasks import TaskConfig
from rlsd_min.tasks import (OPS, SPLITS, Problem, build_datasets, ensure_data, load_splits, max_completion_chars,
                            n_distinct, parse_answer, problems_of, random_problem, sample_problems, verify)

PY_OP = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}
STEP = re.compile(r"(\d)([+*-])(\d)([+-])(\d)=(\d)(\d)")


def check_scratchpad(p: Problem) -> None:
    """Parse the reference completion of p and re-check every step independently."""
    text = p.solution
    steps_line, answer_line = text.split("\n")
    steps = steps_line.split(" ")
    assert len(steps) == p.digits
    digits_out, carry = [], 0
    for i, step in enumerate(steps):
        assert len(step) == 8, step
        m = STEP.fullmatch(step)
        assert m, step
        x, sym1, y, sym2, c, hi, lo = m.groups()
        x, y, c, hi, lo = int(x), int(y), int(c), int(hi), int(lo)
        assert x == (p.a // 10**i) % 10, (p, step)             # digit i of a, least significant first
        assert c == carry, (p, step)                          # carry/borrow threads through
        if p.op == "add":
            assert (sym1, sym2) == ("+", "+")
            assert y == (p.b // 10**i) % 10
            assert 10 * hi + lo == x + y + c and hi in (0, 1)
        elif p.op == "sub":
            assert (sym1, sym2) == ("-", "-")
            assert y == (p.b // 10**i) % 10
            assert lo - 10 * hi == x - y - c and hi in (0, 1)
        else:
            assert (sym1, sym2) == ("*", "+")
            assert y == p.b                                   # one-digit multiplier
            assert 10 * hi + lo == x * y + c
        digits_out.append(lo)
        carry = hi
    value = sum(d * 10**i for i, d in enumerate(digits_out))
    if p.op == "sub":
        assert carry == 0  # a >= b: no borrow left over
    else:
        value += carry * 10**p.digits
    expected = PY_OP[p.op](p.a, p.b)
    assert value == expected, (p, text)
    assert answer_line == str(expected)                       # no leading zeros, no sign
    assert p.answer == expected


@pytest.mark.parametrize("op", OPS)
def test_scratchpad_and_answer_over_random_problems(op):
    rng = random.Random(hash(op) % 1000)
    for digits in (1, 2, 3, 4, 5):
        for _ in range(150):
            p = random_problem(rng, (op,), digits)
            check_scratchpad(p)
            assert verify(p.solution, p.answer) == 1.0
            assert len(p.solution) <= max_completion_chars(op, digits)


@pytest.mark.parametrize("p", [
    Problem("add", 999, 999, 3), Problem("add", 0, 0, 3), Problem("add", 1, 999, 3),
    Problem("sub", 100, 99, 3), Problem("sub", 500, 500, 3), Problem("sub", 1000, 1, 4),
    Problem("mul", 999, 9, 3), Problem("mul", 0, 0, 3), Problem("mul", 1, 9, 1),
])
def test_scratchpad_edge_cases(p):
    check_scratchpad(p)


def test_hand_example_from_the_docstring():
    p = Problem("add", 123, 45, 3)
    assert p.prompt == "123+045="
    assert p.solution == "3+5+0=08 2+4+0=06 1+0+0=01\n168"
    assert Problem("mul", 57, 8, 2).prompt == "57*8="
    assert Problem("mul", 57, 8, 2).solution == "7*8+0=56 5*8+5=45\n456"
    assert Problem("sub", 402, 38, 3).solution == "2-8-0=14 0-3-1=16 4-0-1=03\n364"


def test_max_completion_chars_is_attained_for_addition():
    # the longest addition has an answer of digits + 1 characters
    assert len(Problem("add", 999, 999, 3).solution) == max_completion_chars("add", 3)
    with pytest.raises(ValueError, match="'div'"):
        max_completion_chars("div", 3)


def test_prompts_of_a_task_have_equal_length_and_parse_back():
    rng = random.Random(0)
    for op in OPS:
        ps = [random_problem(rng, (op,), 3) for _ in range(50)]
        assert len({len(p.prompt) for p in ps}) == 1
        for p in ps:
            m = re.fullmatch(r"(\d+)([+*-])(\d+)=", p.prompt)
            assert m and int(m.group(1)) == p.a and int(m.group(3)) == p.b
            if op == "sub":
                assert p.a >= p.b


def test_context_kinds_and_row_round_trip():
    p = Problem("add", 123, 45, 3)
    assert p.context("answer") == "168"
    assert p.context("solution") == p.solution
    with pytest.raises(ValueError, match="'hint'"):
        p.context("hint")
    assert Problem.from_row(json.loads(json.dumps(p.to_row()))) == p


# --- verifier -------------------------------------------------------------------------

@pytest.mark.parametrize("completion, answer, reward", [
    ("3+5+0=08 2+4+0=06 1+0+0=01\n168", 168, 1.0),
    ("3+5+0=08 2+4+0=06 1+0+0=01\n169", 168, 0.0),
    ("168", 168, 1.0),
    ("168\n\n", 168, 1.0),            # trailing newlines are ignored
    (" 168 ", 168, 1.0),              # so are surrounding spaces
    ("\t168  \n", 168, 1.0),
    ("x\n 168", 168, 1.0),
    ("168\nfoo", 168, 0.0),           # the answer must be the last line
    ("168 169", 168, 0.0),
    ("1 68", 168, 0.0),
    (None, 168, 0.0),
    (123, 123, 0.0),                  # not a string
    (b"123", 123, 0.0),
    (123.0, 123, 0.0),
    ("", 0, 0.0),
    ("\n", 0, 0.0),
    ("abc", 0, 0.0),
    ("1+2", 3, 0.0),                  # no eval
    ("1+2", 1, 0.0),
    ("3.0", 3, 0.0),
    ("+3", 3, 0.0),
    ("-3", -3, 1.0),
    ("0", 0, 1.0),
    ("9" * 40, int("9" * 40), 0.0),   # absurdly long numbers are not parsed
    ("1" * 100_000, 1, 0.0),
    ("\n" * 100_000, 0, 0.0),
    ("a" * 100_000 + "\n7", 7, 1.0),
])
def test_verifier(completion, answer, reward):
    assert verify(completion, answer) == reward


@pytest.mark.parametrize("text", ["١٢٣", "１２３"])
def test_verifier_rejects_non_ascii_digits(text):
    """Only ASCII digits are an answer: Arabic-Indic or fullwidth digits are malformed output
    (regression: a `\\d` regex once accepted them)."""
    assert verify(text, 123) == 0.0
    assert parse_answer(text) is None


def test_verifier_never_raises_on_junk():
    rng = random.Random(0)
    alphabet = "0123456789+-*= \n|\t\r\x00é١５"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        r = verify(s, rng.randrange(-5, 2000))
        assert r in (0.0, 1.0)
    for junk in (None, 1, 1.5, [], {}, object(), b"\xff", "\ud800"):
        assert verify(junk, 1) == 0.0


# --- problem sampling and data files --------------------------------------------------------

def test_n_distinct_matches_brute_force():
    for d in (1, 2):
        n = 10**d
        assert n_distinct("add", d) == len({(a, b) for a in range(n) for b in range(n)})
        assert n_distinct("sub", d) == len({(a, b) for a in range(n) for b in range(n) if a >= b})
        assert n_distinct("mul", d) == len({(a, b) for a in range(n) for b in range(10)})


def test_sample_problems_too_many_is_a_clear_error():
    with pytest.raises(ValueError, match=r"500.*only 100"):
        sample_problems(random.Random(0), 500, ("add",), 1)
    with pytest.raises(ValueError, match=r"56.*only 55"):
        sample_problems(random.Random(0), 56, ("sub",), 1)
    with pytest.raises(ValueError, match="'div'"):
        sample_problems(random.Random(0), 5, ("div",), 1)


@pytest.mark.parametrize("ops, n", [(("add",), 100), (("sub",), 55), (("add", "mul"), 200), (("mul",), 30)])
def test_sample_problems_distinct_and_complete(ops, n):
    ps = sample_problems(random.Random(1), n, ops, 1)
    assert len(ps) == n == len(set(ps))
    assert all(p.op in ops and p.digits == 1 for p in ps)


def test_sample_problems_respects_exclude():
    rng = random.Random(2)
    excluded = set(sample_problems(rng, 40, ("add",), 1))
    rest = sample_problems(rng, 60, ("add",), 1, exclude=frozenset(excluded))
    assert len(set(rest)) == 60 and not (set(rest) & excluded)
    with pytest.raises(ValueError, match="only 60"):
        sample_problems(rng, 61, ("add",), 1, exclude=frozenset(excluded))


SMALL = TaskConfig(ops=("add", "sub", "mul"), digits=2, ood_digits=3, n_train=60, n_validation=12,
                   n_test=16, n_ood=10)


def _read_bytes(paths):
    return {name: open(path, "rb").read() for name, path in paths.items()}


def _read_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_build_datasets_deterministic(tmp_path):
    a = build_datasets(SMALL, str(tmp_path / "a"), seed=7)
    b = build_datasets(SMALL, str(tmp_path / "b"), seed=7)
    c = build_datasets(SMALL, str(tmp_path / "c"), seed=8)
    assert set(a) == set(SPLITS)
    bytes_a, bytes_b, bytes_c = _read_bytes(a), _read_bytes(b), _read_bytes(c)
    assert bytes_a == bytes_b
    for name in SPLITS:
        assert bytes_a[name] != bytes_c[name], name


def test_build_datasets_splits_sizes_disjoint_and_ood_harder(tmp_path):
    paths = build_datasets(SMALL, str(tmp_path), seed=3)
    rows = {name: _read_rows(paths[name]) for name in SPLITS}
    sizes = {"train": SMALL.n_train, "validation": SMALL.n_validation, "test": SMALL.n_test, "ood": SMALL.n_ood}
    for name, n in sizes.items():
        assert len(rows[name]) == n
    keys = {name: {(r["op"], r["a"], r["b"], r["digits"]) for r in rows[name]} for name in SPLITS}
    for name in SPLITS:
        assert len(keys[name]) == sizes[name], f"duplicates in {name}"
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert {r["digits"] for name in ("train", "validation", "test") for r in rows[name]} == {2}
    assert {r["digits"] for r in rows["ood"]} == {3}
    # every row is self-consistent
    for name in SPLITS:
        for r in rows[name]:
            p = Problem.from_row(r)
            assert (r["prompt"], r["answer"], r["solution"]) == (p.prompt, PY_OP[p.op](p.a, p.b), p.solution)


def test_load_splits_round_trip(tmp_path):
    paths = build_datasets(SMALL, str(tmp_path), seed=5)
    ds = load_splits(str(tmp_path))
    for name in SPLITS:
        assert problems_of(ds[name]) == [Problem.from_row(r) for r in _read_rows(paths[name])]


def test_load_splits_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        load_splits(str(tmp_path / "nowhere"))


def test_build_datasets_too_small_task_is_a_clear_error(tmp_path):
    task = TaskConfig(ops=("add",), digits=1, ood_digits=2, n_train=500, n_validation=10, n_test=10, n_ood=10)
    with pytest.raises(ValueError, match="520"):
        build_datasets(task, str(tmp_path), seed=0)


def test_shipped_data_files_are_disjoint_and_correct(splits):
    keys = {name: set(ps) for name, ps in splits.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    in_dist = {p.digits for n in ("train", "validation", "test") for p in splits[n]}
    assert min(p.digits for p in splits["ood"]) > max(in_dist)
    for name in SPLITS:
        for p in splits[name][:50]:
            check_scratchpad(p)


def test_exclude_outside_the_task_does_not_shrink_it():
    """Excluded problems of another task do not shrink this task (regression)."""
    other_task = frozenset({Problem("add", 1, 2, 2), Problem("mul", 3, 4, 1)})
    ps = sample_problems(random.Random(0), 100, ("add",), 1, exclude=other_task)
    assert len(set(ps)) == 100


# --- the multi-solution task -------------------------------------------------------------

from rlsd_min.tasks import SplitProblem  # noqa: E402


def test_split_problem_every_reference_is_valid_and_only_those():
    p = SplitProblem(123, 3, 7)
    assert p.prompt == "123=" and p.solution == "7+116" and p.context("answer") == p.context("solution") == "7+116"
    assert len(set(p.references)) == 10
    for d, ref in enumerate(p.references):
        assert p.reward(ref) == 1.0 and p.chosen_digit(ref) == d
        d_, m_ = map(int, ref.split("+"))
        assert d_ + m_ == 123 and len(ref) <= p.max_chars
    for bad in ("7+117", "12+111", "7-116", "123", "", None, "7+116\n", "x\n7+116"):
        expected = 1.0 if bad in ("7+116\n", "x\n7+116") else 0.0       # the last line is the answer
        assert p.reward(bad) == expected, bad
    assert p.reward("7+0116") == 1.0  # the verifier checks the sum, not the zero padding


def test_split_problem_bad_values_and_row_round_trip():
    with pytest.raises(ValueError, match="n=9"):
        SplitProblem(9, 3, 0)
    with pytest.raises(ValueError, match="ref=10"):
        SplitProblem(50, 3, 10)
    p = SplitProblem(58, 3, 2)
    assert problems_of([p.to_row()]) == [p]


def test_split_task_data_distinct_prompts_random_references(tmp_path):
    task = TaskConfig(ops=("split",), digits=3, n_train=400, n_validation=256, n_test=256, n_ood=64)
    build_datasets(task, str(tmp_path), seed=0)
    ds = load_splits(str(tmp_path))
    problems = {name: problems_of(ds[name]) for name in SPLITS}
    prompts = [p.prompt for name in ("train", "validation", "test") for p in problems[name]]
    assert len(prompts) == len(set(prompts)) == 912
    refs = [p.ref for p in problems["train"]]
    assert set(refs) == set(range(10)) and max(refs.count(d) for d in range(10)) < 70   # about 40 each
    assert all(p.digits == 4 for p in problems["ood"])
    with pytest.raises(ValueError, match="only 90"):  # 2-digit n in [10, 99]: 90 problems
        build_datasets(TaskConfig(ops=("split",), digits=2, n_train=100, n_validation=8, n_test=8, n_ood=4),
                       str(tmp_path / "small"), seed=0)


def test_shipped_split_data_and_warm_start():
    from rlsd_min.tasks import TASKS

    data, base = TASKS["split"].data_dir, TASKS["split"].base_checkpoint
    ds = load_splits(str(data))
    train = problems_of(ds["train"])
    assert all(isinstance(p, SplitProblem) and p.reward(p.solution) == 1.0 for p in train)
    assert len(train) == 400 and (base / "model.safetensors").exists()


def test_shipped_mul7_data_reproduce_and_fit_the_warm_start(tmp_path):
    """mul7 (7-digit by 1-digit multiplication, the unsaturated task): the data command's recipe
    reproduces the shipped files, the warm start has the positions a teacher prompt with the full
    solution needs, and its completions are more than twice as long as arith's."""
    import json

    from rlsd_min.config import train_config
    from rlsd_min.tasks import TASKS

    task = TASKS["mul7"]
    build_datasets(task.data, str(tmp_path), seed=task.data.seed)
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (task.data_dir / f"{split}.jsonl").read_bytes(), split
    config = json.load(open(task.base_checkpoint / "config.json"))
    record = json.load(open(task.base_checkpoint / "warmstart.json"))
    assert config["max_position_embeddings"] == task.model["max_positions"] == record["model"]["max_positions"]
    assert record["task"]["ops"] == ["mul"] and record["task"]["digits"] == 7
    assert 0.1 <= record["val_acc_sampled"] <= 0.35                       # the level's target
    cfg = train_config("cpu", method="opsd", task="mul7")                  # the longest teacher prompt
    p = max(problems_of(load_splits(str(task.data_dir))["train"]), key=lambda p: len(p.solution))
    teacher = len(p.solution) + 1 + len(p.prompt) + 1                        # c | x, with <bos>
    assert teacher + cfg.max_new_tokens <= config["max_position_embeddings"]
    assert cfg.max_new_tokens > p.max_chars                                 # room for the answer and <eos>
    arith = problems_of(load_splits(str(TASKS["arith"].data_dir))["validation"])
    mul7 = problems_of(load_splits(str(task.data_dir))["validation"])
    mean = lambda ps: sum(len(q.solution) + 1 for q in ps) / len(ps)       # tokens, <eos> included
    assert mean(mul7) > 2 * mean(arith)


# --- where data is made, and bad data files ---------------------------------------------------

def test_an_empty_data_dir_is_refused_naming_it_and_the_command(tmp_path, monkeypatch):
    from rlsd_min.lab.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as err:
        main(["train", "--profile", "ci", "--out", str(tmp_path / "run"), "--set", f"data_dir={empty}"])
    assert f"{empty} holds no data files of task 'arith'" in str(err.value)
    assert f"`python -m rlsd_min data --task arith --out {empty}`" in str(err.value)
    monkeypatch.setenv("RLSD_DATA", str(tmp_path / "missing"))             # the same for RLSD_DATA
    with pytest.raises(SystemExit, match=f"{tmp_path / 'missing' / 'arith'} holds no data files"):
        main(["train", "--profile", "ci", "--out", str(tmp_path / "run")])
    monkeypatch.chdir(empty)
    with pytest.raises(FileNotFoundError, match="holds no data files"):
        ensure_data("../../..", "arith")                                   # a relative path: refused too
    assert os.listdir(empty) == [] and sorted(os.listdir(tmp_path)) == ["empty"]   # nothing written anywhere


def test_the_package_data_folder_is_built_when_missing(tmp_path, monkeypatch):
    import rlsd_min.tasks as tasks

    monkeypatch.setattr(tasks, "PACKAGE_DATA", tmp_path)
    monkeypatch.setitem(tasks.TASKS, "arith", dataclasses.replace(tasks.TASKS["arith"], data=SMALL))
    ensure_data(str(tmp_path / "arith"), "arith")
    assert sorted(os.listdir(tmp_path / "arith")) == sorted(f"{s}.jsonl" for s in SPLITS)


ADD3 = TaskConfig(ops=("add",), digits=3, ood_digits=4, n_train=40, n_validation=12, n_test=12, n_ood=12)


def _edit_first_row(path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join([edit(lines[0])] + lines[1:]) + "\n")


def _with(**fields):
    return lambda line: json.dumps({**json.loads(line), **fields})


@pytest.mark.parametrize("edit, message", [
    (lambda line: line[:20], "line 1: not valid JSON \\(Expecting"),
    (_with(a=10**30), "line 1: a=1000000000000000000000000000000, b=.* out of range"),
    (_with(op="ädd"), "line 1: unknown op 'ädd'"),
    (_with(a=99999), "line 1: a=99999, b=.* out of range for op 'add' with 3 digits"),
    (_with(a=-5), "line 1: a=-5, b=.* out of range"),
    (_with(answer=""), "line 1: answer='' does not follow from op='add'"),
    (_with(a="12"), "line 1: a must be an integer, got '12'"),
    (lambda line: "[1, 2]", "line 1: a row must be a JSON object"),
])
def test_a_bad_row_is_named_by_file_and_line(tmp_path, edit, message):
    build_datasets(ADD3, str(tmp_path), seed=1)
    _edit_first_row(tmp_path / "train.jsonl", edit)
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / 'train.jsonl'))} {message}"):
        load_splits(str(tmp_path))


def test_an_empty_data_file_is_named(tmp_path):
    build_datasets(ADD3, str(tmp_path), seed=1)
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / 'train.jsonl'))} holds no problems"):
        load_splits(str(tmp_path))


def test_an_edited_data_file_is_read_as_it_is_now_even_with_its_mtime_kept(tmp_path):
    build_datasets(ADD3, str(tmp_path), seed=1)
    path = tmp_path / "validation.jsonl"
    first = load_splits(str(tmp_path))["validation"][0]
    stat = path.stat()
    other = Problem("add", (first["a"] + 1) % 1000, first["b"], 3).to_row()
    _edit_first_row(path, lambda line: json.dumps(other))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_splits(str(tmp_path))["validation"][0] == other
