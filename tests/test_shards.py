"""Sharded weight transfer (rollout/shards.py) inside one process of 8 simulated devices: what a process plans to
send covers every element of every tensor exactly once, whatever the mesh; the assembly of the parts equals the
gathered model bit for bit, in any arrival order and with repeated buckets; gaps, overlaps and bad bucket numbers
are refused by name; a worker that never acknowledges gets its bucket again and then a timeout naming it. Two
trainer processes sending to a rollout worker in a third are tested in tests/test_shards_multiprocess.py."""

import functools

import jax
import numpy as np
import pytest

import ringjax
from ringjax.sharding import make_mesh
from rollout.shards import Assembly, Part, plan_buckets, plan_parts
from rollout.weights import flat_weights

LAYOUTS = [dict(fsdp=8), dict(fsdp=2, expert=2, tensor=2)]


@functools.cache
def sharded(sizes: tuple) -> dict:
    return flat_weights(ringjax.create_model(ringjax.preset("tiny-v2"), make_mesh(**dict(sizes)), seed=3))


def as_senders(parts, senders, bucket_bytes):
    """The planned parts dealt out to `senders` fake senders, each sending its share in buckets: [(sender, index,
    count, [Part])]."""
    out = []
    for s in range(senders):
        buckets = plan_buckets(parts[s::senders], bucket_bytes) or [[]]
        out += [(s, i, len(buckets), [p.part(None) for p in b]) for i, b in enumerate(buckets)]
    return out


@pytest.mark.parametrize("sizes", LAYOUTS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_parts_cover_each_element_once_and_assemble_bit_exact(sizes):
    weights = sharded(tuple(sizes.items()))
    whole = {k: np.asarray(v) for k, v in weights.items()}  # gathered by JAX
    planned = plan_parts(weights)
    assert sum(p.nbytes for p in planned) == sum(v.nbytes for v in whole.values()), "every element sent once"
    assert any(p.shape != np.shape(p.source) for p in planned), "some tensors should travel in pieces"
    bucketed = as_senders(planned, 3, 200_000)
    assert len(bucketed) > 6
    assembly = Assembly(7, 3)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(bucketed)).tolist()
    for n, k in enumerate(order + order[:2]):  # any order; the first two buckets come twice (a resend)
        done = assembly.add(*bucketed[k])
        assert done == (n >= len(order) - 1)
    got = assembly.weights()
    assert sorted(got) == sorted(whole)
    for k in whole:
        assert got[k].dtype == whole[k].dtype and got[k].tobytes() == whole[k].tobytes(), k


def test_cast_to_bfloat16_and_bucket_sizes():
    weights = sharded(tuple(LAYOUTS[1].items()))
    planned = plan_parts(weights, "bfloat16")
    assert sum(p.nbytes for p in planned) == sum(v.size * 2 for v in weights.values())
    buckets = plan_buckets(planned, 100_000)
    assert all(sum(p.nbytes for p in b) <= 100_000 or len(b) == 1 for b in buckets)
    assert [p for b in buckets for p in b] == planned
    part = buckets[0][0].part("bfloat16")
    assert part.data.dtype == jax.numpy.bfloat16 and part.data.nbytes == buckets[0][0].nbytes


def test_gap_overlap_and_bad_buckets_are_refused_by_name():
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    gap = Assembly(0, 1)
    gap.add(0, 0, 1, [Part("w", (3, 4), (0, 0), value[:2])])
    with pytest.raises(ValueError, match="tensor 'w': 4 elements no part holds, 0 held by several"):
        gap.weights()
    overlap = Assembly(0, 1)
    overlap.add(0, 0, 1, [Part("w", (3, 4), (0, 0), value[:2]), Part("w", (3, 4), (1, 0), value[1:])])
    with pytest.raises(ValueError, match="tensor 'w': 0 elements no part holds, 4 held by several"):
        overlap.weights()
    outside = Assembly(0, 1)
    outside.add(0, 0, 1, [Part("w", (3, 4), (2, 0), value[:2])])
    with pytest.raises(ValueError, match=r"tensor 'w': a part at \(2, 0\) of shape \(2, 4\) exceeds \(3, 4\)"):
        outside.weights()
    waiting = Assembly(0, 2)
    assert not waiting.add(0, 0, 1, [Part("w", (3, 4), (0, 0), value)])
    with pytest.raises(ValueError, match="not every bucket has arrived"):
        waiting.weights()
    with pytest.raises(ValueError, match="bucket 0 of 1 from sender 2: out of range"):
        waiting.add(2, 0, 1, [])
    with pytest.raises(ValueError, match="sender 0 announced 1 buckets, now 2"):
        waiting.add(0, 1, 2, [])
