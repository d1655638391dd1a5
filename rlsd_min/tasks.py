"""Arithmetic tasks: problems, the scratchpad format, privileged context, verifier, data files.

A problem is `a OP b` with zero-padded operands so every prompt of a task has the
same length. The completion is a worked scratchpad, least significant digit first
(the order in which a person carries), then the final answer on its own line:

    prompt      "123+045="
    completion  "3+5+0=08 2+4+0=06 1+0+0=01\\n168"   (+ <eos>)

Each step is `digit OP digit OP carry = carry digit`: for addition the carry, for
subtraction the borrow, for one-digit multiplication the carry (two digits wide
then, as 9*9+8 = 89). Writing the digits backwards is the trick minGPT's adder
uses too: the model then produces every digit after the digits it depends on.

The privileged context `c` that the teacher sees comes in two forms
(docs/tasks_and_model.md): `answer` (the final answer only, RLSD's minimal
requirement) and `solution` (the full reference completion, as in OPSD and SDPG).

Simplifications: subtraction keeps `a >= b` so answers are never negative, and
multiplication is by a one-digit number (`b` has one digit).

The second task, `split`, has many valid answers (`SplitProblem`): write n as a
one-digit number plus the rest, `123=` -> `7+116`. Its privileged reference is one
of the ten valid answers, drawn at random when the data are made, so the reference is
*not* a function of the question: the setting of the leakage experiments (RLSD
paper, Theorem 1; docs/leakage.md).

The third task, `mul7`, is the one GRPO does not saturate: 7-digit by 1-digit
multiplication with the same scratchpad,

    prompt      "1234567*8="
    completion  "7*8+0=56 6*8+5=53 5*8+5=45 4*8+4=36 3*8+3=27 2*8+2=18 1*8+1=09\\n9876536"

about 71 tokens (arith's: 31). Its level was chosen by measurement (data/mul7/level.json):
the warm start stops at sampled accuracy 0.34 (greedy 0.56); with 8 samples, 69 % of
prompts have a correct completion (by multiplier, on an earlier warm start of 0.22: 0.9
for x0, 0.01-0.09 for x6-x9); GRPO on the cpu profile goes 0.34 -> 0.66 in 100 steps,
then +0.07 per 100 steps (0.73 at step 200). 7-digit *addition*, the first candidate, did
not warm-start in reasonable time (0.07 after 1,050 steps, then unstable): finding two
digits seven places apart is hard for the 0.5M model; one operand digit and a fixed
multiplier are not.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

OPS = ("add", "sub", "mul")
ALL_OPS = OPS + ("split",)
"""the arithmetic operations, and the multi-solution task's 'split'"""
_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
SPLITS = ("train", "validation", "test", "ood")
DATA_ENV = "RLSD_DATA"
"""environment variable naming another folder for the data files and warm starts"""


PACKAGE_DATA = Path(__file__).resolve().parent / "data"
"""the copies an installed package holds (the wheel's package data, rlsd_min/data)"""
CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data"
"""the same files in a checkout: the repository's top-level data/ (built into the wheel as rlsd_min/data)"""


def shipped_data() -> Path:
    """The shipped data files and warm starts: PACKAGE_DATA in an installed package, else CHECKOUT_DATA."""
    return PACKAGE_DATA if PACKAGE_DATA.is_dir() else CHECKOUT_DATA


def data_root() -> Path:
    """The folder holding every task's data files and warm start: $RLSD_DATA when set, else
    the shipped ones (`shipped_data`: an installed package's PACKAGE_DATA, a checkout's CHECKOUT_DATA).

    The one setting for where data lives: set RLSD_DATA to regenerate data or warm starts
    outside an installed package (`python -m rlsd_min data`, `warmstart` write there).
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return shipped_data()


@dataclass
class TaskConfig:
    """How a task's data files are drawn (`build_datasets`)."""
    ops: tuple = ("add",)
    """operations to draw problems from: any of 'add', 'sub', 'mul' (or 'split')"""
    digits: int = 3
    """operand digits of train/validation/test problems (difficulty)"""
    ood_digits: int = 4
    """operand digits of the out-of-distribution split"""
    n_train: int = 2000
    """training prompts for RL"""
    n_validation: int = 256
    """held-out prompts for evaluation during training"""
    n_test: int = 512
    """held-out prompts for the final report"""
    n_ood: int = 256
    """harder held-out prompts with more digits"""
    seed: int = 0
    """seed of the data files"""


@dataclass(frozen=True)
class Task:
    """One task: how its data files are drawn, the folders of its data and warm start under
    the data root, and the TrainConfig values it changes."""
    data: TaskConfig
    """the data files' recipe (build_datasets)"""
    data_name: str
    """folder of the data files, under data_root()"""
    base_name: str
    """folder of its warm-started checkpoint (rlsd_min.sft), under data_root()"""
    overrides: dict = field(default_factory=dict)
    """TrainConfig values the task changes"""
    model: dict = field(default_factory=dict)
    """ModelConfig values of its warm start (a longer task needs more positions)"""
    sft: dict = field(default_factory=dict)
    """SFTConfig values of its warm start (`python -m rlsd_min warmstart --task ...`)"""

    @property
    def data_dir(self) -> Path:
        return data_root() / self.data_name

    @property
    def base_checkpoint(self) -> Path:
        return data_root() / self.base_name


TASKS = {
    "arith": Task(data=TaskConfig(), data_name="arith", base_name="base"),
    "split": Task(data=TaskConfig(ops=("split",), digits=3, ood_digits=4, n_train=400, n_validation=256, n_test=256),
                  data_name="split", base_name="base_split",
                  overrides=dict(max_new_tokens=12)),  # a split answer is 5 characters long
    "mul7": Task(data=TaskConfig(ops=("mul",), digits=7, ood_digits=8), data_name="mul7", base_name="base_mul7",
                 overrides=dict(max_new_tokens=80), model=dict(max_positions=192),
                 sft=dict(target_acc=0.3, eval_every=10)),
}
"""The three tasks. arith: one valid answer, shown with a worked scratchpad. split: ten valid
answers, the reference one of them at random (SplitProblem); 400 training prompts, so RL
revisits each about a dozen times and a shortcut to the reference could form. mul7: one valid
answer, a scratchpad twice arith's length, and room above GRPO (see the module docstring); its
warm start needs 192 positions (a teacher prompt with the full solution is 89 tokens, plus 80
new ones) and stops at 0.3."""


@dataclass(frozen=True)
class Problem:
    op: str
    a: int
    b: int
    digits: int

    @property
    def prompt(self) -> str:
        """The question x, e.g. '123+045='."""
        width_b = 1 if self.op == "mul" else self.digits
        return f"{self.a:0{self.digits}d}{_SYMBOL[self.op]}{self.b:0{width_b}d}="

    @property
    def answer(self) -> int:
        return {"add": self.a + self.b, "sub": self.a - self.b, "mul": self.a * self.b}[self.op]

    @property
    def solution(self) -> str:
        """The reference completion (without eos): scratchpad, newline, answer."""
        return scratchpad(self.op, self.a, self.b, self.digits) + "\n" + str(self.answer)

    def context(self, kind: str) -> str:
        """Privileged context c: 'answer' (final answer only) or 'solution' (full reference)."""
        if kind == "answer":
            return str(self.answer)
        if kind == "solution":
            return self.solution
        raise ValueError(f"unknown privileged context kind {kind!r}; choose 'answer' or 'solution'")

    @property
    def max_chars(self) -> int:
        """Length of the longest reference completion of this kind of problem (no eos)."""
        return max_completion_chars(self.op, self.digits)

    def reward(self, completion) -> float:
        """The verifier's reward of a completion for this problem (see `verify`)."""
        return verify(completion, self.answer)

    def to_row(self) -> dict:
        return {"op": self.op, "a": self.a, "b": self.b, "digits": self.digits,
                "prompt": self.prompt, "answer": self.answer, "solution": self.solution}

    @staticmethod
    def from_row(row: dict):
        """A Problem, or a SplitProblem when row['op'] == 'split', from a row of `to_row`; a
        ValueError naming what is wrong when the row is not one (an unknown op, a value out of
        range, a prompt, answer or solution that does not follow from op, a, b and digits)."""
        if not isinstance(row, dict):
            raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
        missing = [k for k in ("op", "a", "b", "digits") if k not in row]
        if missing:
            raise ValueError(f"the row lacks {missing}")
        op, a, b, digits = row["op"], row["a"], row["b"], row["digits"]
        if op not in ALL_OPS:
            raise ValueError(f"unknown op {op!r}; choose from {ALL_OPS}")
        for name, value in (("a", a), ("b", b), ("digits", digits)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 1 <= digits <= 16:
            raise ValueError(f"digits must be in 1..16, got {digits}")
        width_b = 1 if op in ("mul", "split") else digits
        if not (0 <= a < 10**digits and 0 <= b < 10**width_b) or (op == "sub" and b > a):
            raise ValueError(f"a={a}, b={b} out of range for op {op!r} with {digits} digits (0 <= a < "
                             f"{10**digits}, 0 <= b < {10**width_b}{', b <= a' if op == 'sub' else ''})")
        problem = SplitProblem(a, digits, b) if op == "split" else Problem(op, a, b, digits)
        wrong = sorted(k for k, v in problem.to_row().items() if k in row and row[k] != v)
        if wrong:
            raise ValueError(f"{', '.join(f'{k}={row[k]!r}' for k in wrong)} does not follow from op={op!r}, "
                             f"a={a}, b={b}, digits={digits} (expected "
                             f"{', '.join(f'{k}={problem.to_row()[k]!r}' for k in wrong)})")
        return problem


@dataclass(frozen=True)
class SplitProblem:
    """A multi-solution problem: write n as one digit d plus the rest, `123=` -> `7+116`.

    Every d in 0..9 gives a valid answer (n >= 10 is kept so there are always ten), and
    the verifier accepts each of them. The privileged reference is the one with d = `ref`,
    drawn at random when the problem is made: the teacher is shown one valid answer out
    of ten, which the question does not determine. No scratchpad: the answer is short,
    so the ten references can be enumerated exactly (`references`).
    """
    n: int
    digits: int
    ref: int
    op = "split"
    N_VALID = 10

    def __post_init__(self):
        if not (self.N_VALID <= self.n < 10**self.digits and 0 <= self.ref < self.N_VALID):
            raise ValueError(f"split problem needs {self.N_VALID} <= n < 10**digits and 0 <= ref < "
                             f"{self.N_VALID}, got n={self.n}, digits={self.digits}, ref={self.ref}")

    @property
    def prompt(self) -> str:
        """The question x, e.g. '123='."""
        return f"{self.n:0{self.digits}d}="

    def answer_for(self, d: int) -> str:
        """The valid answer that starts with digit d, e.g. d=7 -> '7+116'."""
        return f"{d}+{self.n - d:0{self.digits}d}"

    @property
    def references(self) -> list[str]:
        """All valid answers, each equally likely to have been the reference."""
        return [self.answer_for(d) for d in range(self.N_VALID)]

    @property
    def solution(self) -> str:
        """The reference completion shown to the teacher (one of `references`)."""
        return self.answer_for(self.ref)

    def context(self, kind: str) -> str:
        """Privileged context: 'answer' and 'solution' coincide (there is no scratchpad)."""
        if kind not in ("answer", "solution"):
            raise ValueError(f"unknown privileged context kind {kind!r}; choose 'answer' or 'solution'")
        return self.solution

    @property
    def max_chars(self) -> int:
        return max_completion_chars(self.op, self.digits)

    def chosen_digit(self, completion) -> int | None:
        """The d of a valid answer 'd+m' (last line), or None if the completion is not one."""
        if not isinstance(completion, str):
            return None
        m = _SPLIT.fullmatch(completion.rstrip("\n").split("\n")[-1].strip())
        if m is None or int(m[1]) + int(m[2]) != self.n:
            return None
        return int(m[1])

    def reward(self, completion) -> float:
        """1.0 iff the last line is 'd+m' with d one digit and d + m == n."""
        return 0.0 if self.chosen_digit(completion) is None else 1.0

    def to_row(self) -> dict:
        return {"op": self.op, "a": self.n, "b": self.ref, "digits": self.digits,
                "prompt": self.prompt, "answer": self.n, "solution": self.solution}


def scratchpad(op: str, a: int, b: int, digits: int) -> str:
    """Digit-by-digit steps, least significant first: 'x OP y OP carry=carry digit'."""
    steps, carry = [], 0
    for i in range(digits):
        x = (a // 10**i) % 10
        if op == "add":
            y = (b // 10**i) % 10
            total = x + y + carry
            new_carry, digit = divmod(total, 10)
            steps.append(f"{x}+{y}+{carry}={new_carry}{digit}")
        elif op == "sub":
            y = (b // 10**i) % 10
            diff = x - y - carry
            new_carry, digit = (1, diff + 10) if diff < 0 else (0, diff)
            steps.append(f"{x}-{y}-{carry}={new_carry}{digit}")
        elif op == "mul":
            total = x * b + carry
            new_carry = total // 10
            steps.append(f"{x}*{b}+{carry}={total:02d}")
        else:
            raise ValueError(f"unknown op {op!r}; choose from {OPS}")
        carry = new_carry
    return " ".join(steps)


def max_completion_chars(op: str, digits: int) -> int:
    """Length of the longest reference completion for (op, digits), without eos.

    Every step ('3+5+0=08', '3*7+0=21') has 8 characters, steps are joined by spaces,
    then a newline and an answer of at most digits + 1 characters.
    """
    if op not in ALL_OPS:
        raise ValueError(f"unknown op {op!r}; choose from {ALL_OPS}")
    if op == "split":  # '7+116': one digit, '+', the rest
        return digits + 2
    return (9 * digits - 1) + 1 + (digits + 1)


# --- verifier -------------------------------------------------------------------------

_INT = re.compile(r"-?[0-9]+")  # ASCII digits only: "١٢٣" is not 123
_SPLIT = re.compile(r"([0-9])\+([0-9]{1,32})")


def parse_answer(text) -> int | None:
    """The final answer in a completion: the last line, stripped, if it is an integer.

    Works on arbitrary model output without eval: anything that is not a string, or
    whose last line is not exactly an integer, gives None.
    """
    if not isinstance(text, str):
        return None
    last = text.rstrip("\n").split("\n")[-1].strip()
    if not _INT.fullmatch(last) or len(last) > 32:
        return None
    return int(last)


def verify(completion, answer: int) -> float:
    """Verifier reward R in {0, 1}: 1.0 iff the parsed final answer equals `answer`."""
    parsed = parse_answer(completion)
    return 1.0 if parsed is not None and parsed == int(answer) else 0.0


# --- problem generation and data files -------------------------------------------------

def n_distinct(op: str, digits: int) -> int:
    """How many distinct problems (op, digits) has."""
    n = 10**digits
    if op == "add":
        return n * n
    if op == "sub":
        return n * (n + 1) // 2
    if op == "mul":
        return n * 10
    if op == "split":
        return max(n - SplitProblem.N_VALID, 0)
    raise ValueError(f"unknown op {op!r}; choose from {ALL_OPS}")


def random_problem(rng: random.Random, ops: tuple[str, ...], digits: int):
    op = rng.choice(ops)
    if op == "split":
        return SplitProblem(rng.randrange(SplitProblem.N_VALID, 10**digits), digits, rng.randrange(SplitProblem.N_VALID))
    a = rng.randrange(10**digits)
    b = rng.randrange(10) if op == "mul" else rng.randrange(10**digits)
    if op == "sub" and b > a:
        a, b = b, a
    return Problem(op, a, b, digits)


def sample_problems(rng: random.Random, n: int, ops, digits: int, exclude=frozenset()) -> list[Problem]:
    """n problems with distinct prompts, none the prompt of a problem in `exclude`; a clear
    error if the task has too few."""
    for op in ops:
        if op not in ALL_OPS:
            raise ValueError(f"unknown op {op!r}; choose from {ALL_OPS}")
    exclude = {p.prompt for p in exclude if p.op in ops and p.digits == digits}  # only this task's problems
    available = sum(n_distinct(op, digits) for op in ops) - len(exclude)
    if n > available:
        raise ValueError(
            f"cannot draw {n} distinct problems: ops={tuple(ops)} with digits={digits} has only "
            f"{available} left (after excluding {len(exclude)}); use more digits or fewer problems")
    if n > available // 2:  # dense: enumerate, shuffle, take
        pool = [p for op in ops for p in _all_problems(op, digits, rng) if p.prompt not in exclude]
        rng.shuffle(pool)
        return pool[:n]
    seen, out = set(exclude), []
    while len(out) < n:
        p = random_problem(rng, tuple(ops), digits)
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


def _all_problems(op: str, digits: int, rng: random.Random) -> list:
    n = 10**digits
    if op == "split":  # one problem per n, its reference drawn at random
        return [SplitProblem(v, digits, rng.randrange(SplitProblem.N_VALID)) for v in range(SplitProblem.N_VALID, n)]
    bs = range(10) if op == "mul" else range(n)
    return [Problem(op, a, b, digits) for a in range(n) for b in bs if not (op == "sub" and b > a)]


def build_datasets(task, out_dir: str, seed: int) -> dict[str, str]:
    """Write train/validation/test/ood JSONL files with `datasets`; return their paths.

    Deterministic from `seed`. validation and test are disjoint from train, and the
    warm start never sees them either (`heldout_problems`). `ood` has `task.ood_digits`.
    """
    from datasets import Dataset

    rng = random.Random(seed)
    sizes = {"test": task.n_test, "validation": task.n_validation, "train": task.n_train}
    total = sum(sizes.values())
    drawn = sample_problems(rng, total, task.ops, task.digits)
    splits, i = {}, 0
    for name, n in sizes.items():
        splits[name] = drawn[i:i + n]
        i += n
    splits["ood"] = sample_problems(rng, task.n_ood, task.ops, task.ood_digits)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name in SPLITS:
        path = os.path.join(out_dir, f"{name}.jsonl")
        Dataset.from_list([p.to_row() for p in splits[name]]).to_json(path, lines=True)
        paths[name] = path
    return paths


def ensure_data(data_dir: str, task: str) -> None:
    """Build task `task`'s data files in data_dir when they are missing and data_dir is the
    task's folder among the shipped data (`shipped_data`); any other folder without them is refused, naming the folder
    and the command that makes them (nothing is written outside the package unless asked)."""
    if os.path.exists(os.path.join(data_dir, "train.jsonl")):
        return
    if Path(data_dir).resolve() != (shipped_data() / TASKS[task].data_name).resolve():
        raise FileNotFoundError(
            f"{data_dir} holds no data files of task {task!r} (train.jsonl, validation.jsonl, ...); make them "
            f"with `python -m rlsd_min data --task {task} --out {data_dir}`, or point data_dir/{DATA_ENV} at a "
            "folder that holds them")
    config = TASKS[task].data
    print(f"building data files ({config.ops}, {config.digits} digits) in {data_dir}")
    build_datasets(config, data_dir, config.seed)


def read_jsonl(path: str) -> list:
    """The Problems of one data file; a ValueError naming the file and line of a bad row (a
    malformed line, an unknown op, a value out of range) and an empty file."""
    problems = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                problems.append(Problem.from_row(json.loads(line)))
            except ValueError as e:
                why = f"not valid JSON ({e.msg} at column {e.colno})" if isinstance(e, json.JSONDecodeError) else e
                raise ValueError(f"{path} line {i}: {why}; rebuild the file with `python -m rlsd_min data --task "
                                 "<task> --out <folder> --force`, or fix that line") from None
    if not problems:
        raise ValueError(f"{path} holds no problems; rebuild it with `python -m rlsd_min data --task <task> "
                         "--out <folder> --force`")
    return problems


def load_splits(data_dir: str) -> dict:
    """The JSONL files of `build_datasets` as a `datasets.DatasetDict` (one Dataset per split),
    every row checked (`read_jsonl`). Read from the files on each call, never from datasets'
    cache, so an edited file is read as it is now."""
    from datasets import Dataset, DatasetDict

    files = {name: os.path.join(data_dir, f"{name}.jsonl") for name in SPLITS}
    missing = [f for f in files.values() if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(
            f"data files missing: {missing}; build them with `python -m rlsd_min data --task <task> --out {data_dir}`")
    return DatasetDict({name: Dataset.from_list([p.to_row() for p in read_jsonl(path)])
                        for name, path in files.items()})


def problems_of(split) -> list:
    """A `datasets` split (or list of rows) as Problems (or SplitProblems)."""
    return [Problem.from_row(row) for row in split]
