"""Logic rewards: every puzzle's generated records are solved by its reference solver and score 1; the generators'
uniqueness claims hold; wrong, partial, malformed, oversized, missing, repeated and hostile answers score 0 with
their reason; broken records score "bad_record" and are counted by the pool, never raised."""

import json
import random
import time

import pytest

from ringjax.data import PromptRecord
from rollout.rewards import RewardPool, RewardRouter, Verdict, logic_reward
from rollout.rewards.logic import PUZZLES, arc, countdown, knights, make_record, sudoku, zebra

OPTIONS = [
    (countdown, {}),  # the 24 game
    (countdown, {"count": 3, "max_number": 9, "target": None, "use_all": False, "max_target": 30}),
    (countdown, {"count": 6, "max_number": 25, "target": None, "use_all": False, "max_target": 999}),
    (sudoku, {"size": 4}),
    (sudoku, {"size": 9}),
    (knights, {"people": 2}),
    (knights, {"people": 4}),
    (arc, {}),
    (arc, {"rule": "recolour"}),
    (arc, {"rule": "rot90", "max_side": 6}),
    (zebra, {"houses": 3, "categories": 2}),
    (zebra, {"houses": 4, "categories": 3}),
]
IDS = [f"{m.TASK}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for m, o in OPTIONS]


def verdict(record: PromptRecord, response: str) -> tuple[float, str | None]:
    out = logic_reward(record, response)
    assert isinstance(out, Verdict)
    return out.score, out.reason


def generated(module, options, n=4, seed=7):
    rng = random.Random(seed)
    return [module.record(rng, **options) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("module, options", OPTIONS, ids=IDS)
def test_reference_solutions_score_1(module, options):
    for record in generated(module, options):
        data = json.loads(record.answer)
        assert record.domain == "logic" and data["task"] == module.TASK
        answer = module.reference_answer(data)
        assert verdict(record, f"Let me think.\n{answer}\n") == (1.0, None)
        assert RewardRouter()(record, answer) == Verdict(1.0)  # routed by domain
        assert verdict(record, "I give up.") == (0.0, "no_answer")


@pytest.mark.parametrize("module, options", OPTIONS, ids=IDS)
def test_generators_are_seeded(module, options):
    assert generated(module, options, 2, seed=3) == generated(module, options, 2, seed=3)
    assert generated(module, options, 2, seed=3) != generated(module, options, 2, seed=4)


def test_prompts_state_the_answer_format():
    for module, options in OPTIONS:
        prompt = generated(module, options, 1)[0].prompt
        assert ("\\boxed{" in prompt) if module in (countdown, knights) else ("```answer" in prompt), module.TASK


def test_countdown_puzzles_are_solvable_under_their_rules():
    for record in generated(countdown, {}, 10):
        data = json.loads(record.answer)
        assert data["target"] == 24 and data["use_all"] and len(data["numbers"]) == 4
        assert countdown.solve(data["numbers"], 24, True) is not None
    for record in generated(countdown, OPTIONS[1][1], 20):
        data = json.loads(record.answer)
        assert not data["use_all"] and data["target"] not in data["numbers"] and 0 < data["target"] <= 30
        found = countdown.solve(data["numbers"], data["target"], False, natural=True)
        assert found is not None and verdict(record, f"\\boxed{{{found}}}") == (1.0, None)
    assert countdown.solve([1, 1], 24, True) is None


def test_sudoku_puzzles_have_one_solution():
    for size in (4, 9):
        for record in generated(sudoku, {"size": size}, 3):
            data = json.loads(record.answer)
            found = sudoku.solutions(data["givens"], size, limit=5)
            assert len(found) == 1 and sudoku.is_solution(found[0], data["givens"], size)
            given = sum(v > 0 for row in data["givens"] for v in row)
            assert given >= {4: 4, 9: 30}[size] and given < size * size
    assert len(sudoku.solutions([[0] * 4 for _ in range(4)], 4, limit=3)) == 3  # blank grid: many


def test_knights_puzzles_have_one_consistent_assignment():
    for people in (2, 3, 5):
        for record in generated(knights, {"people": people}, 5):
            data = json.loads(record.answer)
            found = knights.solutions(data["people"], data["statements"])  # brute force over all 2^n
            assert found == [{p: r == "knight" for p, r in data["solution"].items()}]


def test_zebra_puzzles_have_one_solution_and_no_spare_clue():
    for houses, categories in ((3, 2), (4, 3)):
        for record in generated(zebra, {"houses": houses, "categories": categories}, 3):
            data = json.loads(record.answer)
            assert zebra.solutions(houses, data["categories"], data["clues"], limit=5) == [data["solution"]]
            for i in range(len(data["clues"])):  # every clue is needed
                fewer = data["clues"][:i] + data["clues"][i + 1:]
                assert len(zebra.solutions(houses, data["categories"], fewer)) > 1


def test_arc_examples_determine_the_test_output():
    for options in ({}, {"rule": "recolour"}, {"rule": "transpose", "max_side": 5}):
        for record in generated(arc, options, 5):
            data = json.loads(record.answer)
            train = [(p["input"], p["output"]) for p in data["train"]]
            outputs = arc.fitting_outputs(train, data["test"]["input"])
            assert outputs and all(o == data["test"]["output"] for o in outputs)
            assert data["test"]["output"] != data["test"]["input"]


# ---------------------------------------------------------------------------------------------------- countdown

GAME = make_record({"task": "countdown", "numbers": [4, 7, 8, 8], "target": 24, "use_all": True}, "24 from 4 7 8 8")
SMALL = make_record({"task": "countdown", "numbers": [2, 3, 5], "target": 10, "use_all": False}, "10 from 2 3 5")
TWICE = make_record({"task": "countdown", "numbers": [5, 5, 2], "target": 10, "use_all": False}, "10 from 5 5 2")


@pytest.mark.parametrize("record, response, want", [
    (GAME, r"\boxed{(7-8/8)*4}", (1.0, None)),
    (GAME, r"so \boxed{ (7 - 8 \div 8) \times 4 }.", (1.0, None)),
    (GAME, r"\boxed{4*(7-8/8)}", (1.0, None)),
    (GAME, r"\boxed{7+8+8+4}", (0.0, "wrong")),
    (GAME, r"\boxed{4*7-8/8}", (0.0, "wrong")),  # every number once, another value
    (GAME, r"\boxed{4/(8-8)+7}", (0.0, "wrong")),  # division by zero
    (GAME, r"\boxed{4*8-8}", (0.0, "wrong_numbers")),  # 7 unused
    (GAME, r"\boxed{24}", (0.0, "wrong_numbers")),
    (GAME, r"\boxed{(7-8/8)*4*1}", (0.0, "wrong_numbers")),  # 1 not given
    (GAME, r"\boxed{(7-8/8)*4} is it; or rather \boxed{7+8+8+4}", (0.0, "wrong")),  # the last box counts
    (GAME, r"\boxed{7+8+8+4} no: \boxed{(7-8/8)*4}", (1.0, None)),
    (GAME, r"\boxed{(7-8/8)*4} and then \boxed{(7-8", (0.0, "malformed_answer")),  # last one unclosed
    (GAME, r"\boxed{(7-8/8)*4=24}", (0.0, "malformed_answer")),
    (GAME, r"\boxed{(7-8/8)4}", (0.0, "malformed_answer")),
    (GAME, r"\boxed{-(-(7-8/8)*4)}", (1.0, None)),  # unary minus is allowed
    (SMALL, "\\boxed{" + "(" * 40 + "2*5" + ")" * 40 + "}", (1.0, None)),  # redundant parentheses are no nodes
    (SMALL, r"\boxed{2*5}", (1.0, None)),  # at most once: 3 may stay unused
    (SMALL, r"\boxed{5+5}", (0.0, "wrong_numbers")),  # 5 given once
    (SMALL, r"\boxed{2*3+5}", (0.0, "wrong")),
    (TWICE, r"\boxed{5+5}", (1.0, None)),  # 5 given twice
    (SMALL, "The answer is 2*5.", (0.0, "no_answer")),
    (SMALL, r"\boxed{}", (0.0, "no_answer")),
    (SMALL, r"\boxed{   }", (0.0, "no_answer")),
    (SMALL, "", (0.0, "no_answer")),
])
def test_countdown_answers(record, response, want):
    assert verdict(record, response) == want


@pytest.mark.parametrize("expression", [
    "__import__('os').system('echo pwned')",
    "2**10**10",
    "9**9**9**9",
    "(2).real",
    "x",
    "lambda: 2",
    "[2, 5]",
    "2 if 5 else 3",
    "8//8",
    "2.0*5",
    "1e1",
    "0x0a",
    "2_0",
    "+10",
    "not 0",
    "2*5;0",
    "9" * 150,  # an integer over MAX_INT
    "(" * 99 + "2*5" + ")" * 99,  # past the character bound
    "2*(" * 30 + "5" + ")" * 30,  # operations nested deeper than MAX_DEPTH
    "-" * 30 + "10",  # deeper than MAX_DEPTH
    "+".join(["2"] * 60),  # more nodes than MAX_NODES
    "\\frac{20}{2}",
    "２*５",  # full-width digits
    "2*5\x00",
])
def test_countdown_hostile_answers_are_malformed(expression):
    assert verdict(SMALL, f"\\boxed{{{expression}}}") == (0.0, "malformed_answer")


def test_countdown_bounds_its_work_on_hostile_responses():
    t0 = time.perf_counter()
    assert verdict(SMALL, "\\boxed{" * 200_000) == (0.0, "malformed_answer")  # 1.4 MB of unclosed boxes
    assert verdict(SMALL, "\\boxed{2*5}" + "{" * 500_000) == (1.0, None)
    assert verdict(SMALL, "\\boxed{" + "(" * 100_000 + "}") == (0.0, "malformed_answer")
    assert time.perf_counter() - t0 < 2.0


def test_countdown_evaluates_exactly():
    record = make_record({"task": "countdown", "numbers": [3, 3, 8, 8], "target": 24, "use_all": True}, "24")
    assert verdict(record, r"\boxed{8/(3-8/3)}") == (1.0, None)  # 8 / (1/3): exact only with fractions
    assert verdict(record, r"\boxed{8/(3-8/3)+0*3}") == (0.0, "wrong_numbers")


# ---------------------------------------------------------------------------------------------------- sudoku

GIVENS = [[1, 2, 0, 4], [0, 0, 1, 0], [0, 1, 0, 0], [4, 0, 0, 1]]
SOLVED = [[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 1]]
SUDOKU = make_record({"task": "sudoku", "size": 4, "givens": GIVENS}, "sudoku")


def block(rows) -> str:
    body = rows if isinstance(rows, str) else "\n".join(" ".join(map(str, r)) for r in rows)
    return f"Here it is:\n```answer\n{body}\n```\n"


OTHER = [[2, 1, 4, 3], [4, 3, 2, 1], [1, 2, 3, 4], [3, 4, 1, 2]]


def test_sudoku_fixture_is_unique():
    assert sudoku.solutions(GIVENS, 4, limit=5) == [SOLVED]
    assert sudoku.is_solution(OTHER, [[0] * 4] * 4, 4) and not sudoku.is_solution(OTHER, GIVENS, 4)


@pytest.mark.parametrize("response, want", [
    (block(SOLVED), (1.0, None)),
    (block("1234\n3412\n2143\n4321"), (1.0, None)),  # digits written together
    (block("1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1") + "\n" + block("4 3 2 1"), (0.0, "wrong")),  # the last block
    (block("1 1 1 1") + block(SOLVED), (1.0, None)),
    (block([[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 1, 2]]), (0.0, "wrong")),  # one row's cells swapped
    (block(OTHER), (0.0, "wrong")),  # a valid sudoku, but not these givens'
    (block([[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 0]]), (0.0, "wrong")),  # 0 is no digit
    (block([[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3]]), (0.0, "wrong")),  # 3 rows
    (block([[1, 2, 3, 4, 5]] * 4), (0.0, "wrong")),
    (block("1 2 3 4\n3 4 1\n2 1 4 3\n4 3 2 1"), (0.0, "malformed_answer")),  # ragged
    (block("1 2 3 4\n\n3 4 1 2\n2 1 4 3\n4 3 2 1"), (0.0, "malformed_answer")),  # blank line inside
    (block("12 34\n34 12\n21 43\n43 21"), (0.0, "malformed_answer")),
    (block("1,2,3,4\n3,4,1,2\n2,1,4,3\n4,3,2,1"), (0.0, "malformed_answer")),
    (block("__import__('os')"), (0.0, "malformed_answer")),
    (block("\n".join(["1 2 3 4"] * 200)), (0.0, "malformed_answer")),  # oversized
    ("```answer\n1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1\n", (0.0, "malformed_answer")),  # never closed
    ("```python\n1 2 3 4\n```", (0.0, "no_answer")),
    ("```answer\n\n```", (0.0, "no_answer")),
    ("1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1", (0.0, "no_answer")),
])
def test_sudoku_answers(response, want):
    assert verdict(SUDOKU, response) == want


# ---------------------------------------------------------------------------------------------------- knights

KNIGHTS = make_record({"task": "knights", "people": ["A", "B"],
                       "statements": [{"speaker": "A", "kind": "any", "who": ["A", "B"], "role": "knave"}],
                       "solution": {"A": "knight", "B": "knave"}}, "A says: at least one of us is a knave.")


def test_knights_fixture_is_unique():
    data = json.loads(KNIGHTS.answer)
    assert knights.solutions(data["people"], data["statements"]) == [{"A": True, "B": False}]
    assert knights.statement_text(data["statements"][0]) == "at least one of A and B is a knave"


@pytest.mark.parametrize("response, want", [
    (r"\boxed{A=knight, B=knave}", (1.0, None)),
    (r"\boxed{B: knave,A : Knight}", (1.0, None)),
    (r"\boxed{A=knave, B=knight}", (0.0, "wrong")),
    (r"\boxed{A=knight, B=knight}", (0.0, "wrong")),  # partly right
    (r"\boxed{A=knight}", (0.0, "wrong")),  # B missing
    (r"\boxed{A=knight, B=knave, C=knave}", (0.0, "wrong")),  # no C in this puzzle
    (r"\boxed{A=knave, B=knight} hmm, \boxed{A=knight, B=knave}", (1.0, None)),
    (r"\boxed{A=knight, B=knave} hmm, \boxed{A=knave, B=knight}", (0.0, "wrong")),
    (r"\boxed{A=knight, A=knave, B=knave}", (0.0, "malformed_answer")),
    (r"\boxed{A is a knight, B is a knave}", (0.0, "malformed_answer")),
    (r"\boxed{A=liar, B=knave}", (0.0, "malformed_answer")),
    (r"\boxed{A=knight; B=knave}", (0.0, "malformed_answer")),
    (r"\boxed{__import__('os')}", (0.0, "malformed_answer")),
    ("\\boxed{" + "A=knight, " * 60 + "}", (0.0, "malformed_answer")),  # oversized
    ("A is a knight and B is a knave.", (0.0, "no_answer")),
])
def test_knights_answers(response, want):
    assert verdict(KNIGHTS, response) == want


# ---------------------------------------------------------------------------------------------------- ARC

ARC = make_record({"task": "arc", "rule": "flip_h",
                   "train": [{"input": [[1, 0], [2, 3]], "output": [[0, 1], [3, 2]]},
                             {"input": [[4, 5, 6]], "output": [[6, 5, 4]]}],
                   "test": {"input": [[1, 2, 3], [4, 5, 6]], "output": [[3, 2, 1], [6, 5, 4]]}}, "arc")


@pytest.mark.parametrize("response, want", [
    (block([[3, 2, 1], [6, 5, 4]]), (1.0, None)),
    (block("321\n654"), (1.0, None)),
    (block([[3, 2, 1], [6, 5, 5]]), (0.0, "wrong")),  # one cell
    (block([[3, 2, 1]]), (0.0, "wrong")),  # shape
    (block("321\n654") + block("123\n456"), (0.0, "wrong")),  # the last block counts
    (block("123\n456") + block("321\n654"), (1.0, None)),
    (block([[3, 6], [2, 5], [1, 4]]), (0.0, "wrong")),
    (block([[1, 2, 3], [4, 5, 6]]), (0.0, "wrong")),  # the input copied
    (block("3 2 1\n6 5"), (0.0, "malformed_answer")),
    (block("3 2 1\n6 5 a"), (0.0, "malformed_answer")),
    (block("\n".join(["1"] * 31)), (0.0, "malformed_answer")),  # more rows than any grid has
    (block(" ".join(["1"] * 31)), (0.0, "malformed_answer")),
    (r"\boxed{321/654}", (0.0, "no_answer")),  # grids answer in a block
])
def test_arc_answers(response, want):
    assert verdict(ARC, response) == want


# ---------------------------------------------------------------------------------------------------- zebra

ZEBRA = make_record({"task": "zebra", "houses": 3,
                     "categories": [["colour", ["blue", "green", "red"]], ["pet", ["cat", "dog", "fish"]]],
                     "clues": [{"kind": "at", "a": "red", "house": 1}, {"kind": "same", "a": "red", "b": "dog"},
                               {"kind": "left_of", "a": "green", "b": "blue"},
                               {"kind": "next_to", "a": "fish", "b": "dog"}],
                     "solution": [["red", "dog"], ["green", "fish"], ["blue", "cat"]]}, "zebra")


def test_zebra_fixture_is_unique():
    data = json.loads(ZEBRA.answer)
    assert zebra.solutions(3, data["categories"], data["clues"], limit=5) == [data["solution"]]
    assert [zebra.clue_text(c) for c in data["clues"]][2:] == ["Green is directly left of blue.",
                                                                "Fish and dog are next to each other."]


@pytest.mark.parametrize("response, want", [
    (block("1: red, dog\n2: green, fish\n3: blue, cat"), (1.0, None)),
    (block("House 3: Blue, cat\nhouse 1: red,dog\n2 : green , fish"), (1.0, None)),  # any line order, case
    (block("1: red, dog\n2: green, cat\n3: blue, fish"), (0.0, "wrong")),  # two pets swapped
    (block("1: red, dog\n2: green, fish"), (0.0, "wrong")),  # house 3 missing
    (block("1: red, dog\n2: green, fish\n3: blue, cat") + block("1: red, dog"), (0.0, "wrong")),  # the last counts
    (block("1: dog, red\n2: fish, green\n3: cat, blue"), (0.0, "wrong")),  # categories out of order
    (block("1: red, dog\n1: green, fish\n3: blue, cat"), (0.0, "malformed_answer")),  # house 1 twice
    (block("1: red\n2: green\n3: blue"), (0.0, "malformed_answer")),  # one value each
    (block("1 red, dog\n2: green, fish\n3: blue, cat"), (0.0, "malformed_answer")),
    (block("1: red, dog\n2: green, fish\n3: blue, __import__('os')"), (0.0, "wrong")),  # just not a pet
    (block("1: red, dog\n" * 30), (0.0, "malformed_answer")),
    ("red dog, green fish, blue cat", (0.0, "no_answer")),
])
def test_zebra_answers(response, want):
    assert verdict(ZEBRA, response) == want


# ---------------------------------------------------------------------------------------------------- bad records


def _broken(**change) -> str:
    return json.dumps(change)


BAD_ANSWERS = [
    None,
    "not json",
    "[1, 2]",
    "[" * 100_000,  # deep enough to exhaust the JSON parser's recursion
    _broken(task="chess"),
    _broken(task=["countdown"]),
    _broken(numbers=[2, 5], target=10),  # no task
    _broken(task="countdown", numbers="2 5", target=10),
    _broken(task="countdown", numbers=[2, 5], target=-10),
    _broken(task="countdown", numbers=[2, 5], target=10, use_all="yes"),
    _broken(task="countdown", numbers=list(range(1, 20)), target=10),
    _broken(task="sudoku", size=5, givens=[[0] * 5] * 5),
    _broken(task="sudoku", size=[4], givens=GIVENS),
    _broken(task="sudoku", size=4, givens=[[1, 1, 0, 0], [0] * 4, [0] * 4, [0] * 4]),  # givens repeat a digit
    _broken(task="sudoku", size=4, givens=[[0] * 4] * 3),
    _broken(task="knights", people=["A", "B"], statements=[{"speaker": "A", "kind": "any", "who": ["A", "B"],
                                                            "role": "knave"}], solution={"A": "knave", "B": "knave"}),
    _broken(task="knights", people=["A"], statements=[{"speaker": "Z", "kind": "all", "who": ["A"],
                                                       "role": "knave"}], solution={"A": "knave"}),
    _broken(task="knights", people=["A", "A"], statements=[], solution={"A": "knave"}),
    _broken(task="knights", people=["A"], statements=[], solution={"A": ["knave"]}),
    _broken(task="arc", rule="flip_h", train=[{"input": [[1, 2]], "output": [[1, 2]]}],
            test={"input": [[1, 2]], "output": [[2, 1]]}),  # the rule does not map the example
    _broken(task="arc", rule="flip_h", train=[{"input": [[1, 2], [3]], "output": [[2, 1], [3]]}],
            test={"input": [[1, 2]], "output": [[2, 1]]}),  # ragged
    _broken(task="arc", rule="shear", train=[], test={}),
    _broken(task="zebra", houses=2, categories=[["pet", ["cat", "dog"]]], clues=[{"kind": "at", "a": "cat",
                                                                                  "house": 1}],
            solution=[["dog"], ["cat"]]),  # breaks the clue
    _broken(task="zebra", houses=2, categories=[["pet", ["cat", "dog"]], ["colour", ["red", "cat"]]], clues=[],
            solution=[["dog", "red"], ["cat", "cat"]]),  # a value twice
    _broken(task="zebra", houses=2, categories=[["pet", ["cat", "dog"]]], clues=[{"kind": "at", "a": ["cat"],
                                                                                  "house": 1}],
            solution=[["cat"], ["dog"]]),
]


@pytest.mark.parametrize("answer", BAD_ANSWERS, ids=range(len(BAD_ANSWERS)))
def test_bad_records_score_bad_record_without_raising(answer):
    record = PromptRecord("bad", "a puzzle", "logic", answer=answer)
    for response in ("", r"\boxed{2*5}", block(SOLVED), r"\boxed{A=knight, B=knave}"):
        assert logic_reward(record, response) == Verdict(0.0, "bad_record")


def test_the_pool_counts_bad_records_and_reasons_without_errors():
    bad = PromptRecord("bad", "a puzzle", "logic", answer=_broken(task="chess"))
    items = [(bad, r"\boxed{2*5}"), (SMALL, r"\boxed{2*5}"), (SMALL, r"\boxed{5+5}"), (SMALL, "no idea"),
             (SMALL, r"\boxed{2**5}"), (SUDOKU, block(SOLVED)), (KNIGHTS, r"\boxed{A=knave, B=knight}")]
    with RewardPool(RewardRouter(), workers=2) as pool:
        scores = [r.score for r in pool.score(items)]
        stats, reasons = pool.stats, pool.reasons
    assert scores == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert stats["errors"] == 0 and stats["timeouts"] == 0
    assert reasons == {"bad_record": 1, "wrong_numbers": 1, "no_answer": 1, "malformed_answer": 1, "wrong": 1}


def test_every_puzzle_is_dispatched():
    assert sorted(PUZZLES) == ["arc", "countdown", "knights", "sudoku", "zebra"]
    for name, module in PUZZLES.items():
        assert module.TASK == name
