"""Prompt data: JSONL == Parquet, bad rows counted, difficulty filter, mixing proportions, exact resume, epochs."""

import json
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringjax.data import (BadRow, PromptRecord, build_prompt_batches, epochs, filter_by_pass_rate, iterator_state,
                          mix_domains, parse_row, prompt_batches, read_records, restore_iterator)

GOOD = [
    {"id": "m1", "prompt": "1+1?", "answer": "2", "domain": "math"},
    {"prompt": "2+2?", "answer": "4"},  # default domain, derived id
    {"id": 7, "prompt": "write f", "tests": ["assert f() == 1"], "domain": "code"},
    {"id": "s1", "prompt": "boiling point?", "answer": "100", "domain": "science", "tests": None},
]
BAD = {  # JSONL line -> reason it is counted under
    "{not json": "bad_json",
    "[1, 2]": "not_object",
    '{"answer": "3"}': "missing_prompt",
    '{"prompt": "  ", "answer": "3"}': "empty_prompt",
    '{"prompt": 5, "answer": "3"}': "bad_type:prompt",
    '{"prompt": "q", "answer": 3}': "bad_type:answer",
    '{"prompt": "q", "tests": 3}': "bad_type:tests",
    '{"prompt": "q", "answer": "a", "id": true}': "bad_type:id",
    '{"prompt": "q"}': "missing_answer_or_tests",
}


def _jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _parquet(path, rows):
    import pyarrow as pa  # a core dependency: a missing pyarrow must fail here, not skip
    import pyarrow.parquet as pq

    keys = dict.fromkeys(k for row in rows for k in row)  # from_pylist would take the columns of row 0 only
    pq.write_table(pa.table({k: [row.get(k) for row in rows] for k in keys}), path)
    return path


def _records(n, domain="math"):
    return [PromptRecord(id=f"{domain}{i}", prompt=f"{domain} q{i}", domain=domain, answer=str(i)) for i in range(n)]


def _ids(batches):
    return [[r.id for r in batch] for batch in batches]


def _take(iterator, n):
    return _ids(next(iterator) for _ in range(n))


def test_jsonl_and_parquet_give_same_records(tmp_path):
    lines = [json.dumps(row) for row in GOOD] + ["", *BAD]
    src_j, stats = read_records(_jsonl(tmp_path / "p.jsonl", lines), default_domain="math")
    parquet_rows = [{**row, "id": str(row["id"])} if "id" in row else row for row in GOOD]  # one type per column
    src_p, _ = read_records(_parquet(tmp_path / "p.parquet", parquet_rows))
    assert [src_j[i] for i in range(len(src_j))] == [src_p[i] for i in range(len(src_p))]
    assert [src_j[i].domain for i in range(4)] == ["math", "math", "code", "science"]
    assert src_j[1].id == src_p[1].id and src_j[2].id == "7"
    assert stats.rows == len(GOOD) + len(BAD) and stats.kept == len(GOOD)
    assert stats.skipped == {reason: 1 for reason in BAD.values()}
    json.dumps(stats.as_dict())


def test_parquet_bad_rows_are_counted(tmp_path):
    rows = [{"prompt": "q", "answer": "a"}, {"prompt": None, "answer": "a"}, {"prompt": "r", "answer": None}]
    src, stats = read_records(_parquet(tmp_path / "p.parquet", rows))
    assert len(src) == 1 and stats.skipped == {"missing_prompt": 1, "missing_answer_or_tests": 1}


def test_only_bad_rows_raise_naming_the_file(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", list(BAD))
    with pytest.raises(ValueError, match=r"bad\.jsonl.*bad_json"):
        read_records([path])
    with pytest.raises(ValueError, match="unsupported"):
        read_records(tmp_path / "p.csv")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(list(GOOD[2])), c, max_size=5)))
def test_parse_row_accepts_or_rejects_but_never_crashes(row):
    try:
        record = parse_row(row, "math")
    except BadRow as e:
        assert e.reason
    else:
        assert record.prompt.strip() and (record.answer is not None or record.tests is not None)


def test_difficulty_filter_drops_exactly_always_and_never_solved():
    records = _records(6)
    rates = {"math0": 1.0, "math1": 0.0, "math2": 0.5, "math3": 0.99, "math4": 0.0, "other": 0.5}
    kept, stats = filter_by_pass_rate(records, rates)
    assert [r.id for r in kept] == ["math2", "math3", "math5"]
    assert (stats.kept, stats.dropped_solved, stats.dropped_unsolved, stats.unmeasured, stats.unknown_ids) == \
        (3, 1, 2, 1, 1)
    kept, stats = filter_by_pass_rate(records, rates, lo=0.1, hi=0.9)
    assert [r.id for r in kept] == ["math2", "math5"] and stats.dropped_solved == 2
    with pytest.raises(ValueError):
        filter_by_pass_rate(records, rates, lo=0.5, hi=0.5)


def test_mixing_respects_weights():
    # grain's index_shuffle costs ~30 ms per epoch whatever the size, so domains are not tiny here
    records = _records(13, "math") + _records(300, "code") + _records(200, "science")
    weights = {"code": 0.6, "science": 0.4}
    n = 2000
    draws = [r.domain for r in mix_domains(records, weights, seed=3)[:n]]
    assert draws == [r.domain for r in mix_domains(records, weights, seed=3)[:n]]
    assert "math" not in draws
    bound = 4 * math.sqrt(n * 0.6 * 0.4)
    assert abs(draws.count("code") - 0.6 * n) <= bound
    # every domain's prompts are all used, and each epoch of a domain is a permutation of it
    science = [r.id for r in mix_domains(records, weights, seed=3)[:n] if r.domain == "science"]
    assert sorted(science[:200]) == sorted(science[200:400]) == sorted(f"science{i}" for i in range(200))
    assert science[:200] != science[200:400]


def test_mixing_unknown_domain_errors():
    with pytest.raises(ValueError, match="chemistry"):
        mix_domains(_records(3), {"math": 1.0, "chemistry": 1.0}, seed=0)
    with pytest.raises(ValueError, match="zero"):
        mix_domains(_records(3), {"math": 0.0}, seed=0)


def test_same_seed_same_order_and_new_order_each_epoch():
    records = _records(20)
    first = [r.id for r in epochs(records, seed=5, num_epochs=2)]
    assert first == [r.id for r in epochs(records, seed=5, num_epochs=2)]
    assert first != [r.id for r in epochs(records, seed=6, num_epochs=2)]
    assert sorted(first[:20]) == sorted(first[20:]) == sorted(r.id for r in records)
    assert first[:20] != first[20:]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 8), m=st.integers(1, 8), batch_size=st.integers(1, 4), mixed=st.booleans())
def test_resume_continues_exactly(n, m, batch_size, mixed):
    # 7 records, so batches straddle epoch boundaries.
    records = _records(7) + _records(4, "code")
    weights = {"math": 2.0, "code": 1.0} if mixed else None
    batches = build_prompt_batches(records, batch_size, seed=11, weights=weights)
    iterator = iter(batches)
    head = _take(iterator, n)
    state = json.loads(json.dumps(iterator_state(iterator)))
    tail = _take(iterator, m)
    fresh = build_prompt_batches(records, batch_size, seed=11, weights=weights)
    assert _take(restore_iterator(fresh, state), m) == tail
    assert head + tail == _take(iter(batches), n + m)


def test_finite_epochs_see_each_prompt_once_per_epoch():
    records = _records(12)
    seen = [i for batch in _ids(prompt_batches(epochs(records, seed=1, num_epochs=2), 4)) for i in batch]
    assert len(seen) == 24 and sorted(seen[:12]) == sorted(seen[12:]) == sorted(r.id for r in records)


def test_parquet_without_pyarrow_says_so(tmp_path, monkeypatch):
    path = _parquet(tmp_path / "p.parquet", GOOD[:1])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="needs pyarrow"):
        read_records(path)
