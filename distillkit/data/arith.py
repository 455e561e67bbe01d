"""Seeded arithmetic word problems with gold answers: the prompt sets of the quickstart and of the CPU lab.

Four template sets, one skill each per template (one-step addition, subtraction, multiplication of 2..12):
- "base": the quickstart's 8 templates (TEMPLATES).
- "varied": base plus 16 more phrasings (VARIED_TEMPLATES): the lab's training prompts and its in-template
  held-out set. More wordings per skill, so that a student learns the arithmetic rather than 8 sentences.
- "wide": varied plus 24 more phrasings (WIDE_TEMPLATES), 48 in all: the lab's larger training set, for a
  student that should beat its teacher off the training wordings too. Its held-out problems in the varied
  phrasings stay held out (the split is a function of the text).
- "unseen": 12 phrasings and 8 names that "varied" and "wide" never use (UNSEEN_TEMPLATES, UNSEEN_NAMES): the lab's
  off-template held-out set (same skills, new wording). No training set draws from them, so every one of
  their problems is held out (only split "test" exists).

For "base" and "varied" a problem's split is a function of its text (one text in five is held out), so the
held-out evaluation never sees a training problem, and both splits cover every template.
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
_add, _sub, _mul = (lambda a, b: a + b), (lambda a, b: a - b), (lambda a, b: a * b)
# The lab's training phrasings: the base 8 plus 16 more, with new objects and sentence shapes.
VARIED_TEMPLATES = TEMPLATES + [
    ("{name} picked {a} flowers in the morning and {b} flowers in the afternoon. How many flowers did {name} pick?",
     _add),
    ("A shelf holds {a} red books and {b} blue books. How many books are on the shelf?", _add),
    ("Add {a} and {b}.", _add),
    ("{name} saved {a} dollars last week and {b} dollars this week. How many dollars did {name} save in all?", _add),
    ("{name} had {a} balloons and {b} of them popped. How many balloons does {name} have left?", _sub),
    ("What is {a} minus {b}?", _sub),
    ("A bus had {a} passengers. At the stop, {b} got off. How many passengers are still on the bus?", _sub),
    ("{name} has {a} stamps and sells {b} of them. How many stamps does {name} keep?", _sub),
    ("Each bag holds {a} oranges. How many oranges are in {b} bags?", _mul),
    ("{name} walks {a} miles every day. How many miles does {name} walk in {b} days?", _mul),
    ("Multiply {a} by {b}.", _mul),
    ("A garden has {a} rows with {b} plants in each row. How many plants are in the garden?", _mul),
    ("A farmer has {a} cows and buys {b} more cows. How many cows does the farmer have?", _add),
    ("There were {a} birds on a wire and {b} flew away. How many birds are on the wire now?", _sub),
    ("A pack has {a} cards. How many cards are in {b} packs?", _mul),
    ("{name} scored {a} goals this season and {b} goals last season. How many goals is that in total?", _add),
]
# "wide": varied plus 24 more phrasings (8 per operation), for a student that should learn the operation
# rather than the sentence. None uses an unseen phrasing's cue words ("sum", "product", "subtract",
# "take away", "altogether"), objects or names: the off-template held-out set stays unseen (a test checks).
WIDE_TEMPLATES = VARIED_TEMPLATES + [
    ("{name} has {a} toy cars and gets {b} more as a gift. How many toy cars does {name} have?", _add),
    ("A jar holds {a} blue beads and {b} green beads. How many beads are in the jar?", _add),
    ("Compute {a} + {b}.", _add),
    ("{name} drove {a} miles before lunch and {b} miles after lunch. How many miles did {name} drive?", _add),
    ("What number is {b} more than {a}?", _add),
    ("A library got {a} new books in May and {b} new books in June. How many new books did the library get?",
     _add),
    ("{name} ran {a} laps on Saturday and {b} laps on Sunday. How many laps did {name} run over the weekend?",
     _add),
    ("A zoo has {a} lions and {b} tigers. How many big cats does the zoo have?", _add),
    ("{name} had {a} candies and shared {b} with classmates. How many candies does {name} have now?", _sub),
    ("Compute {a} - {b}.", _sub),
    ("A store had {a} hats and sold {b} of them. How many hats remain?", _sub),
    ("What number is {b} less than {a}?", _sub),
    ("There were {a} kids at the park and {b} went home. How many kids are still at the park?", _sub),
    ("{name} wants to collect {a} badges and already has {b}. How many more badges does {name} need?", _sub),
    ("A pizza was cut into {a} slices and {b} slices were eaten. How many slices are left?", _sub),
    ("{name} had {a} dollars and spent {b} dollars on lunch. How many dollars does {name} have left?", _sub),
    ("Compute {a} * {b}.", _mul),
    ("{name} buys {a} packs of gum with {b} sticks in each pack. How many sticks of gum does {name} buy?", _mul),
    ("A building has {a} floors with {b} windows on each floor. How many windows does the building have?", _mul),
    ("{a} friends each bring {b} snacks. How many snacks do they bring in all?", _mul),
    ("What is {a} multiplied by {b}?", _mul),
    ("A train has {a} cars and each car carries {b} people. How many people does the train carry?", _mul),
    ("A ticket costs {a} dollars. How many dollars do {b} tickets cost?", _mul),
    ("There are {a} vans with {b} seats in each van. How many seats are there?", _mul),
]
# The off-template held-out phrasings: wordings, objects and names no training template uses.
UNSEEN_TEMPLATES = [
    ("{name} found {a} shells on Monday. On Tuesday {name} found {b} more shells. How many shells did {name} find "
     "altogether?", _add),
    ("There are {a} ducks in a pond. Then {b} more ducks land in the pond. How many ducks are in the pond now?", _add),
    ("Find the sum of {a} and {b}.", _add),
    ("A team scored {a} points in the first half and {b} points in the second half. What was the team's total "
     "score?", _add),
    ("{name} owns {a} stickers and gives {b} stickers to a friend. How many stickers does {name} still own?", _sub),
    ("A tree had {a} lemons. The wind knocked down {b} lemons. How many lemons are still on the tree?", _sub),
    ("Subtract {b} from {a}.", _sub),
    ("How much is {a} take away {b}?", _sub),
    ("A carton of crayons has {a} crayons. How many crayons are in {b} cartons?", _mul),
    ("{name} earns {a} coins an hour and works for {b} hours. How many coins does {name} earn?", _mul),
    ("What is the product of {a} and {b}?", _mul),
    ("There are {b} tables, and {a} chairs stand at each table. How many chairs are there?", _mul),
]
UNSEEN_NAMES = ["Ben", "Chloe", "Diego", "Fatima", "Hana", "Ivan", "Kofi", "Nora"]
TEMPLATE_SETS = ("base", "varied", "wide", "unseen")

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


def _problem(rng: random.Random, templates: list = TEMPLATES, names: list = NAMES) -> tuple[str, int, str]:
    """(problem text, answer, gold worked solution "a op b = answer.")."""
    template, fn = rng.choice(templates)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    if fn(a, b) < 0:
        a, b = b, a
    op = {8: "+", 2: "-", 15: "*"}[fn(5, 3)]  # every template is one of the three operations
    return template.format(name=rng.choice(names), a=a, b=b), fn(a, b), f"{a} {op} {b} = {fn(a, b)}."


def split_of(text: str) -> str:
    """"test" for one problem text in TEST_FRACTION_DENOM (by a hash of the text), else "train"."""
    return "test" if int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % TEST_FRACTION_DENOM == 0 else "train"


def make_arith_problems(num: int = 300, split: str = "train", seed: int = 0, templates: str = "base",
                        with_solution: bool = False) -> list[dict]:
    """`num` distinct problems of one split: [{"id", "problem", "answer", "source"}].

    The split of a problem is a function of its text (`split_of`), so train and held-out never overlap;
    `seed` changes which problems are drawn and their order; `templates` picks the template set (module doc);
    `with_solution` adds "solution", a gold worked solution ("3 + 4 = 7. The answer is \\boxed{7}.").
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates must be one of {', '.join(TEMPLATE_SETS)}, got {templates!r}")
    if templates == "unseen" and split != "test":
        raise ValueError("templates 'unseen' are held out by construction: only split 'test' exists")
    pool, names = {"base": (TEMPLATES, NAMES), "varied": (VARIED_TEMPLATES, NAMES), "wide": (WIDE_TEMPLATES, NAMES),
                   "unseen": (UNSEEN_TEMPLATES, UNSEEN_NAMES)}[templates]
    # the base set keeps its original stream (the quickstart's prompts and shipped held-out file are unchanged)
    rng = random.Random(f"arith-{split}-{seed}" if templates == "base" else f"arith-{templates}-{split}-{seed}")
    prefix = "arith" if templates == "base" else f"arith-{templates}"
    seen: set[str] = set()
    out = []
    attempts = 0
    while len(out) < num:
        attempts += 1
        if attempts > num * 200:
            raise ValueError(f"cannot make {num} distinct {split} problems from the templates")
        text, answer, solution = _problem(rng, pool, names)
        if text in seen or (templates != "unseen" and split_of(text) != split):
            continue
        seen.add(text)
        pid = f"{prefix}-{split}-" + hashlib.sha1(text.encode()).hexdigest()[:10]
        row = {"id": pid, "problem": text, "answer": str(answer), "source": "arith"}
        if with_solution:
            row["solution"] = f"{solution} The answer is \\boxed{{{answer}}}."
        out.append(row)
    return out


def write_gold_chats(path, num: int, split: str = "train", seed: int = 0, templates: str = "varied",
                     template: str = ONE_SHOT_TEMPLATE) -> int:
    """Write `num` problems with gold worked solutions as prompt/response JSONL (a `train.sources` file).

    The lab's stronger teacher is SmolLM2-135M after SFT on these (recipes/lab/gold_teacher.yaml): the
    prompt is `template` filled with the problem (the lab's generation prompt), the response the
    solution in the worked example's shape, "a + b = c. The answer is \\boxed{c}."
    """
    import json
    from pathlib import Path

    rows = make_arith_problems(num, split, seed, templates, with_solution=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "prompt": template.replace("{problem}", r["problem"]),
                                "response": r["solution"], "answer": r["answer"]}) + "\n")
    return len(rows)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m distillkit.data.arith",
                                 description="Write arithmetic problems with gold worked solutions (prompt/response "
                                             "JSONL) for train.sources, e.g. the CPU lab's gold teacher.")
    ap.add_argument("out", help="output .jsonl file")
    ap.add_argument("--num", type=int, default=400)
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--templates", default="varied", choices=list(TEMPLATE_SETS))
    a = ap.parse_args(argv)
    n = write_gold_chats(a.out, a.num, a.split, a.seed, a.templates)
    print(f"wrote {n} problems with gold solutions to {a.out}")


if __name__ == "__main__":
    main()
