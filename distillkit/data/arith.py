"""Seeded arithmetic word problems with gold answers: the offline quickstart's prompt set.

A problem's split is a function of its text (one text in five is held out), so the held-out evaluation
never sees a training problem, and both splits cover every template.
"""

from __future__ import annotations

import hashlib
import random

# One-step templates: a 135M teacher solves some of these, which is what rejection sampling needs.
# (Two-step problems were almost never solved by SmolLM2-135M in a measured dry run.)
TEMPLATES = [
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?", lambda a, b: a + b),
    ("{name} had {a} marbles and gave away {b}. How many marbles are left?", lambda a, b: a - b),
    ("There are {a} boxes with {b} pencils in each box. How many pencils are there in total?", lambda a, b: a * b),
    ("{name} reads {a} pages a day for {b} days. How many pages does {name} read?", lambda a, b: a * b),
    ("A class has {a} girls and {b} boys. How many students are in the class?", lambda a, b: a + b),
    ("{name} baked {a} cookies and ate {b} of them. How many cookies are left?", lambda a, b: a - b),
    ("What is {a} plus {b}?", lambda a, b: a + b),
    ("What is {a} times {b}?", lambda a, b: a * b),
]
# Every distinct problem text belongs to one split, by a hash of the text: 1 in TEST_FRACTION_DENOM
# texts is held out. Both splits draw from all templates (an earlier "exclude the first 2000 train
# problems" rule left the held-out split with only the four templates that carry a name: the others
# have just 121 texts each, all taken by the train stream) and never share a problem, whatever `num`.
TEST_FRACTION_DENOM = 5
NAMES = ["Tom", "Anna", "Lee", "Maria", "Sam", "Ravi", "Yuki", "Omar"]

# The prompt of the quickstart's generation (`generate.prompts.template`) and of its held-out lm-eval
# task (distillkit/evaluate/tasks/distillkit_arith, `doc_to_text`): one worked example, then the problem.
# A 135M teacher given R1's zero-shot instruction ("Please reason step by step, and put your final
# answer within \boxed{}") boxed a correct answer in 0 of 128 samples here; with a worked example
# like this one, in 17 of 128, in about half the tokens. The example's name (Lily) is not in NAMES,
# so it is never a train or held-out problem.
ONE_SHOT_TEMPLATE = (
    "Example:\n"
    "Question: Lily has 3 apples and buys 4 more. How many apples does Lily have now?\n"
    "Answer: Lily has 3 + 4 = 7 apples. The answer is \\boxed{7}.\n\n"
    "Question: {problem}\n"
    "Answer:"
)


def _problem(rng: random.Random) -> tuple[str, int]:
    template, fn = rng.choice(TEMPLATES)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    if fn(a, b) < 0:
        a, b = b, a
    return template.format(name=rng.choice(NAMES), a=a, b=b), fn(a, b)


def split_of(text: str) -> str:
    """"test" for one problem text in TEST_FRACTION_DENOM (by a hash of the text), else "train"."""
    return "test" if int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % TEST_FRACTION_DENOM == 0 else "train"


def make_arith_problems(num: int = 300, split: str = "train", seed: int = 0) -> list[dict]:
    """`num` distinct problems of one split: [{"id", "problem", "answer", "source"}].

    The split of a problem is a function of its text (`split_of`), so train and held-out never overlap;
    `seed` changes which problems are drawn and their order.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"arith-{split}-{seed}")
    seen: set[str] = set()
    out = []
    attempts = 0
    while len(out) < num:
        attempts += 1
        if attempts > num * 200:
            raise ValueError(f"cannot make {num} distinct {split} problems from the templates")
        text, answer = _problem(rng)
        if text in seen or split_of(text) != split:
            continue
        seen.add(text)
        pid = f"arith-{split}-" + hashlib.sha1(text.encode()).hexdigest()[:10]
        out.append({"id": pid, "problem": text, "answer": str(answer), "source": "arith"})
    return out
