"""The demo's tokenizer (exact round trip, determinism, transformers parity) and its tasks and teacher
(answers and programs verified by the real rewards, slip rate, distinct ids, held-out split)."""

import re

import numpy as np
import pytest
import transformers

from ringjax.pipeline.tasks import CODE_INPUTS, CODE_OPS, code_tasks, math_tasks, split_heldout, teacher_response
from ringjax.pipeline.tokenizer import Tokenizer, train_tokenizer
from rollout.rewards import code_reward, last_boxed, math_reward

TRICKY = ["\\boxed{-12}", "\n    return", "é→", "  two  spaces\t\ttabs\r\n", "{}[]()\\\\", "12345678901234567890",
          "", "日本語 🙂", "def f(x):\n    return (x+3)*2"]


def teacher_texts(n_math: int = 1300, n_code: int = 700, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    records = math_tasks(n_math, seed) + code_tasks(n_code, seed)
    return [r.prompt + teacher_response(r, rng, 0.2) for r in records]


@pytest.fixture(scope="module")
def texts():
    return teacher_texts()


@pytest.fixture(scope="module")
def tok(texts):
    return train_tokenizer(texts, 512)


# ---------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_exactly(tok, texts):
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    assert 258 <= tok.vocab_size <= 512
    for t in texts + TRICKY:
        ids = tok.encode(t)
        assert tok.decode(ids) == t
        assert tok.decode(np.asarray(ids, np.int32)) == t
    assert tok.decode([tok.eos_id, *tok.encode("ab"), tok.pad_id, tok.pad_id]) == "ab"


def test_digits_are_single_tokens(tok):
    assert [tok.decode([i]) for i in tok.encode("11+270")] == ["1", "1", "+", "2", "7", "0"]


def test_tokenizer_is_deterministic(texts, tmp_path):
    a, b = train_tokenizer(texts, 512), train_tokenizer(list(texts), 512)
    a.save(str(tmp_path / "a"))
    b.save(str(tmp_path / "b"))
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()


def test_tokenizer_vocab_size_bounds(texts):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, 257)
    assert train_tokenizer(texts, 300).vocab_size == 300


def test_save_load_round_trip(tok, texts, tmp_path):
    tok.save(str(tmp_path))
    loaded = Tokenizer.load(str(tmp_path))
    assert (loaded.vocab_size, loaded.pad_id, loaded.eos_id) == (tok.vocab_size, tok.pad_id, tok.eos_id)
    for t in texts[::20] + TRICKY:
        assert loaded.encode(t) == tok.encode(t)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.load(str(tmp_path / "nowhere"))


def test_transformers_loads_it_identically(tok, texts, tmp_path):
    tok.save(str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.pad_token_id, hf.eos_token_id, len(hf)) == (tok.pad_id, tok.eos_id, tok.vocab_size)
    for t in texts[::40][:45] + TRICKY[:5]:
        ids = hf.encode(t, add_special_tokens=False)
        assert ids == tok.encode(t)
        assert hf.decode(ids + [tok.eos_id], skip_special_tokens=True) == t


def test_responses_are_short(tok):
    rng = np.random.default_rng(1)
    for records, limit in ((math_tasks(300, 1), 40), (code_tasks(300, 1), 30)):
        mean = np.mean([len(tok.encode(teacher_response(r, rng, 0.0))) for r in records])
        assert mean <= limit, f"{records[0].domain}: mean response length {mean:.1f} tokens > {limit}"


# ---------------------------------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("ops", ["+-", "+-*"])
def test_math_answers_equal_python_eval(ops):
    for r in math_tasks(500, 2, ops=ops):
        m = re.fullmatch(r"Compute ((?:\d[+\-*])+\d)\.\n", r.prompt)
        assert m, r.prompt
        assert r.domain == "math" and r.tests is None
        assert r.answer == str(eval(m.group(1)))


@pytest.mark.parametrize("ops", ["+-", "+-*"])
def test_math_teacher_is_verified_by_math_reward(ops):
    rng = np.random.default_rng(3)
    records = math_tasks(25, 3, ops=ops, terms=(2, 3, 4))
    assert all(math_reward(r, teacher_response(r, rng, 0.0)) == 1.0 for r in records)
    assert all(math_reward(r, teacher_response(r, rng, 1.0)) == 0.0 for r in records)


def test_math_slip_is_one_step_off_and_carried():
    rng = np.random.default_rng(4)
    for r in math_tasks(200, 4, ops="+-*", terms=(2, 3, 4)):
        good, bad = teacher_response(r, rng, 0.0), teacher_response(r, rng, 1.0)
        assert last_boxed(good) == r.answer and last_boxed(bad) != r.answer
        diff = [(g, b) for g, b in zip(good.split(". "), bad.split(". ")) if g != b]
        assert diff, (good, bad)
        g, b = diff[0]
        assert g.split("=")[0] == b.split("=")[0] and 1 <= abs(int(g.split("=")[1]) - int(b.split("=")[1])) <= 2


def test_math_slip_rate():
    rng = np.random.default_rng(5)
    records = math_tasks(1000, 5)
    wrong = np.mean([last_boxed(teacher_response(r, rng, 0.3)) != r.answer for r in records])
    assert abs(wrong - 0.3) <= 0.06, f"wrong fraction {wrong:.3f}"


def run_tests_in_process(program: str, tests: list[dict]) -> bool:
    ns: dict = {}
    exec(program, ns)  # our own generated one-liners
    return all(ns[t["call"]](*t["args"]) == t["expected"] for t in tests)


def test_code_teacher_on_every_task_in_process():
    rng = np.random.default_rng(6)
    records = code_tasks(len(CODE_OPS) ** 2, 6)
    for r in records:
        assert r.domain == "code" and r.answer is None and [t["args"] for t in r.tests] == [[x] for x in CODE_INPUTS]
        good = teacher_response(r, rng, 0.0)
        assert good.startswith("def f(x):\n    return ") and run_tests_in_process(good, r.tests), (r.prompt, good)
        bad = teacher_response(r, rng, 1.0)
        assert not run_tests_in_process(bad, r.tests), (r.prompt, bad)
    assert teacher_response(_find(records, "add 3, then double"), rng, 0.0) == "def f(x):\n    return (x+3)*2"
    assert teacher_response(_find(records, "add 3, then double"), rng, 1.0) == "def f(x):\n    return x+3*2"
    assert teacher_response(_find(records, "multiply by 4, then subtract 2"), rng, 0.0) == "def f(x):\n    return x*4-2"


def _find(records, words):
    return next(r for r in records if r.prompt == f"Write f(x): {words}.\n")


def test_code_teacher_is_verified_by_code_reward_in_sandbox():
    rng = np.random.default_rng(7)
    everything = code_tasks(len(CODE_OPS) ** 2, 7)
    parens = [r for r in everything if re.search(r"(add|subtract) \d, then (multiply|double)", r.prompt)]
    records = parens[:5] + [r for r in everything if r not in parens][:5]  # 5 precedence slips, 5 constant slips
    assert all(code_reward(r, teacher_response(r, rng, 0.0)).score == 1.0 for r in records)
    assert all(code_reward(r, teacher_response(r, rng, 1.0)).reason == "wrong" for r in records)


def test_tasks_are_distinct_and_deterministic():
    for make, total in ((lambda n, s: math_tasks(n, s, terms=(2,)), 200), (code_tasks, len(CODE_OPS) ** 2)):
        records = make(total, 0)
        assert len({r.id for r in records}) == len({r.prompt for r in records}) == total
        assert make(50, 0) == make(50, 0) and make(50, 0) != make(50, 1)
        with pytest.raises(ValueError, match="distinct"):
            make(total + 1, 0)


def test_split_heldout():
    records = math_tasks(300, 8) + code_tasks(100, 8)
    train, held = split_heldout(records, 64, seed=0)
    assert len(held) == 64 and len(train) == len(records) - 64
    assert not {r.id for r in train} & {r.id for r in held}
    assert split_heldout(records, 64, seed=0) == (train, held) and split_heldout(records, 64, seed=1) != (train, held)
    dup_train, dup_held = split_heldout(records + records[:10], 64, seed=0)
    assert len({r.id for r in dup_held}) == 64 and not {r.id for r in dup_train} & {r.id for r in dup_held}
    with pytest.raises(ValueError, match="n_eval"):
        split_heldout(records, 401, seed=0)
