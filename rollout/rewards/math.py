"""Math (and science) reward: 1.0 iff the response's last \\boxed{...} answer equals the reference answer.

Equivalence is decided by Math-Verify (the library the Ling/Ring reports use), so `\\boxed{0.5}`,
`\\boxed{\\frac{1}{2}}` and `\\boxed{2/4}` all match a reference of `1/2`. Differences from calling
`math_verify.parse` on the whole response:
- only the LAST boxed answer counts, located here with brace matching; a response with no boxed answer scores 0
  (Math-Verify would otherwise fall back to any number it can find in the text, rewarding unboxed guesses);
- Math-Verify's timeouts are disabled (`parsing_timeout=None`, `timeout_seconds=None`): they use SIGALRM, which
  only works in the main thread, and these functions run in `RewardPool` worker threads, whose per-call timeout
  bounds a slow sympy comparison instead.
"""

from __future__ import annotations

import logging
import re

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from ringjax.data import PromptRecord

# Math-Verify warns on every call that its (SIGALRM) timeouts are off; they are off on purpose (see above).
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).setLevel(logging.ERROR)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed \\boxed{...} (or \\fbox{...}) in `text`, braces balanced; None if none."""
    for m in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None


def parse_answer(answer: str) -> list:
    """A reference answer, as written in datasets ("0.5", "\\frac{1}{2}", "$x^2$", "\\boxed{3}"), parsed."""
    text = answer if ("$" in answer or "\\boxed" in answer) else f"\\boxed{{{answer}}}"
    return parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)


def math_reward(record: PromptRecord, response: str) -> float:
    """1.0 iff the last boxed answer of `response` is equivalent to `record.answer`."""
    if record.answer is None:
        raise ValueError(f"prompt {record.id} (domain {record.domain!r}) has no reference answer to verify against")
    boxed = last_boxed(response)
    if boxed is None or not boxed.strip():
        return 0.0
    gold = parse_answer(record.answer)
    if not gold:
        raise ValueError(f"prompt {record.id}: Math-Verify cannot parse the reference answer {record.answer!r}")
    pred = parse(f"\\boxed{{{boxed}}}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    return 1.0 if pred and verify(gold, pred, timeout_seconds=None) else 0.0
