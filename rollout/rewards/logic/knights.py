"""Knights and knaves: knights always tell the truth, knaves always lie; name who is which from what they say.

Record: {"task": "knights", "people": ["A", "B"], "statements": [STATEMENT, ...], "solution": {"A": "knight",
"B": "knave"}}, a STATEMENT being {"speaker": "A", "kind": KIND, "who": ["A", "B"], "role": "knave"} with KIND
- "all": everyone in `who` has `role` ("B is a knave", "A and B are both knaves");
- "any": at least one of `who` has `role`;  "exactly_one": exactly one of `who` has `role`;
- "same" / "differ": the two people in `who` are of the same / different kinds (no `role`).
The generator draws statements true to a random assignment until brute force over all 2^n assignments finds that
one alone consistent; the verifier scores against the stored `solution` (checked consistent when read).

Final answer: the last `\\boxed{...}` holding everyone once, comma-separated, as NAME=ROLE (or NAME: ROLE), e.g.
`\\boxed{A=knight, B=knave}`; roles in any letter case, names as given. At most `MAX_CHARS` characters.

Reasons: "no_answer"; "malformed_answer" (an entry not of that form, or a name twice); "wrong" (a role wrong,
someone missing, or a name not in the puzzle).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ringjax.data import PromptRecord
from rollout.rewards.base import Verdict
from rollout.rewards.logic.common import CORRECT, MALFORMED, WRONG, final_boxed, make_record, zero

TASK = "knights"
ROLES = ("knight", "knave")
KINDS = ("all", "any", "exactly_one", "same", "differ")
NAMES = "ABCDEFGH"
MAX_PEOPLE, MAX_STATEMENTS, MAX_CHARS = 8, 32, 400
_NAME = re.compile(r"[A-Z][a-z]{0,11}")
_ENTRY = re.compile(r"\s*([A-Z][a-z]{0,11})\s*[=:]\s*((?i:knight|knave))\s*")

Assignment = Mapping[str, bool]  # name -> is a knight


def read_reference(data: Mapping[str, Any]) -> dict:
    people, statements, solution = data.get("people"), data.get("statements"), data.get("solution")
    if (not isinstance(people, list) or not 1 <= len(people) <= MAX_PEOPLE or len(set(people)) != len(people)
            or not all(isinstance(p, str) and _NAME.fullmatch(p) for p in people)):
        raise ValueError(f"knights: people must be 1..{MAX_PEOPLE} distinct capitalised names, got {people!r}")
    if not isinstance(statements, list) or len(statements) > MAX_STATEMENTS:
        raise ValueError(f"knights: statements must be a list of at most {MAX_STATEMENTS}")
    for s in statements:
        _check_statement(s, people)
    if not isinstance(solution, dict) or set(solution) != set(people) or any(solution[p] not in ROLES for p in people):
        raise ValueError(f"knights: solution must give every one of {people} a role in {ROLES}")
    knights = {p: solution[p] == "knight" for p in people}
    if not consistent(statements, knights):
        raise ValueError("knights: the solution contradicts the statements")
    return {"solution": dict(solution)}


def _check_statement(s: Any, people: Sequence[str]) -> None:
    if not isinstance(s, dict) or s.get("speaker") not in people or s.get("kind") not in KINDS:
        raise ValueError(f"knights: statement {s!r} needs a speaker among {people} and a kind in {KINDS}")
    who = s.get("who")
    if not isinstance(who, list) or not who or not all(isinstance(p, str) and p in people for p in who):
        raise ValueError(f"knights: statement {s!r}: who must list people of the puzzle")
    pair = s["kind"] in ("same", "differ")
    if (len(who) != 2) if pair else (s.get("role") not in ROLES):
        raise ValueError(f"knights: statement {s!r}: 'same'/'differ' take two people, the others a role")


def score(ref: dict, response: str) -> Verdict:
    boxed, reason = final_boxed(response, MAX_CHARS)
    if boxed is None:
        return zero(reason)
    named = parse_assignment(boxed)
    if named is None:
        return zero(MALFORMED)
    return CORRECT if named == ref["solution"] else zero(WRONG)


def parse_assignment(text: str) -> dict[str, str] | None:
    """{name: role} of "A=knight, B=knave"; None when an entry is malformed or a name repeats."""
    out: dict[str, str] = {}
    for part in text.split(",", MAX_PEOPLE * 2):
        m = _ENTRY.fullmatch(part)
        if m is None or m.group(1) in out:
            return None
        out[m.group(1)] = m.group(2).lower()
    return out


def holds(statement: Mapping[str, Any], knights: Assignment) -> bool:
    """Whether `statement` is true when `knights[p]` says who is a knight."""
    kind, who = statement["kind"], statement["who"]
    if kind == "same":
        return knights[who[0]] == knights[who[1]]
    if kind == "differ":
        return knights[who[0]] != knights[who[1]]
    hits = sum(knights[p] == (statement["role"] == "knight") for p in who)
    return hits == len(who) if kind == "all" else hits >= 1 if kind == "any" else hits == 1


def consistent(statements: Sequence[Mapping[str, Any]], knights: Assignment) -> bool:
    """Knights' statements are true and knaves' false."""
    return all(holds(s, knights) == knights[s["speaker"]] for s in statements)


def solutions(people: Sequence[str], statements: Sequence[Mapping[str, Any]]) -> list[dict[str, bool]]:
    """Every consistent assignment, by brute force over all 2^n."""
    out = []
    for bits in itertools.product((True, False), repeat=len(people)):
        knights = dict(zip(people, bits))
        if consistent(statements, knights):
            out.append(knights)
    return out


def _claim(rng: random.Random, speaker: str, people: Sequence[str], knights: Assignment) -> dict:
    """A random statement of `speaker` that is true iff the speaker is a knight (never one about only themself,
    which is either a paradox or says nothing)."""
    others = [p for p in people if p != speaker]
    while True:
        kind = rng.choice(KINDS if len(people) > 1 else ("all",))
        if kind == "all" and (len(people) == 1 or rng.random() < 0.5):
            who = [rng.choice(others or people)]
        else:
            who = rng.sample(people, 2 if kind in ("same", "differ") or len(people) < 3 else rng.choice((2, 3)))
            who.sort(key=people.index)
        statement = {"speaker": speaker, "kind": kind, "who": who}
        if kind not in ("same", "differ"):
            statement["role"] = rng.choice(ROLES)
        if holds(statement, knights) == knights[speaker]:
            return statement


def generate(rng: random.Random, *, people: int = 3) -> dict:
    """A puzzle of `people` (2..8) whose statements admit exactly one assignment: one statement each, then more by
    random speakers (up to two each) until brute force finds a single consistent assignment."""
    if not 2 <= people <= MAX_PEOPLE:
        raise ValueError(f"knights: people must lie in 2..{MAX_PEOPLE}, got {people}")
    names = list(NAMES[:people])
    for _ in range(1000):
        knights = {p: rng.random() < 0.5 for p in names}
        statements = [_claim(rng, p, names, knights) for p in names]
        while len(solutions(names, statements)) > 1 and len(statements) < 2 * people:
            statements.append(_claim(rng, rng.choice(names), names, knights))
        if len(solutions(names, statements)) == 1:
            statements.sort(key=lambda s: names.index(s["speaker"]))
            return {"task": TASK, "people": names, "statements": statements,
                    "solution": {p: "knight" if knights[p] else "knave" for p in names}}
    raise ValueError(f"knights: no unique puzzle found for {people} people")


def _names(who: Sequence[str]) -> str:
    return who[0] if len(who) == 1 else ", ".join(who[:-1]) + " and " + who[-1]


def statement_text(s: Mapping[str, Any]) -> str:
    kind, who, role = s["kind"], s["who"], s.get("role")
    if kind == "same":
        return f"{_names(who)} are the same kind"
    if kind == "differ":
        return f"{_names(who)} are different kinds"
    if kind == "all":
        return f"{who[0]} is a {role}" if len(who) == 1 else \
            f"{_names(who)} are {'both' if len(who) == 2 else 'all'} {role}s"
    return f"{'at least' if kind == 'any' else 'exactly'} one of {_names(who)} is a {role}"


def prompt_text(data: Mapping[str, Any]) -> str:
    said = "".join(f"{s['speaker']} says: \"{statement_text(s)}.\"\n" for s in data["statements"])
    example = ", ".join(f"{p}={ROLES[i % 2]}" for i, p in enumerate(data["people"][:2]))
    return ("Knights always tell the truth and knaves always lie.\n" + said +
            f"Who is a knight and who is a knave? End with everyone in \\boxed{{}}, e.g. \\boxed{{{example}}}.\n")


def record(rng: random.Random, **options: Any) -> PromptRecord:
    data = generate(rng, **options)
    return make_record(data, prompt_text(data))


def reference_answer(data: Mapping[str, Any]) -> str:
    """The final answer of the brute-force solution (the first consistent assignment)."""
    found = solutions(data["people"], data["statements"])
    if not found:
        raise ValueError("knights: no consistent assignment")
    return "\\boxed{" + ", ".join(f"{p}={'knight' if k else 'knave'}" for p, k in found[0].items()) + "}"
