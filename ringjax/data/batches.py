"""grain pipeline of prompt batches: difficulty filter, per-epoch shuffle, per-domain mixing, checkpointable position.

Follows the Ring-lite recipe (docs/architecture.md, recipes): drop prompts the starting model always or never
solves, then train stage 1 on math and stage 2 on code + science, each stage with its own {domain: weight}.

- Shuffling is grain's `shuffle(seed)` before `repeat`: epoch e of a dataset shuffled with seed s uses seed
  s + e, so every epoch has its own order and the whole sequence is a function of the seed.
- Mixing uses `grain.MapDataset.mix`, which interleaves the (separately shuffled, endlessly repeated) domain
  datasets in fixed proportions, so every window of draws is close to the weights rather than only the mean.
- Everything stays a `MapDataset` until batching, so an iterator's state is just the next batch index: it is
  JSON-serialisable and restoring it continues the exact sequence.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain

from ringjax.data.records import PromptRecord


@dataclasses.dataclass(frozen=True)
class FilterStats:
    """Outcome of the difficulty filter."""

    kept: int  # measured and kept, plus unmeasured
    dropped_solved: int  # pass rate >= hi
    dropped_unsolved: int  # pass rate <= lo
    unmeasured: int  # kept because no pass rate was given
    unknown_ids: int  # pass rates whose id matches no record (a sign of mismatched ids)


def filter_by_pass_rate(records: Sequence[PromptRecord], pass_rates: Mapping[str, float], lo: float = 0.0,
                        hi: float = 1.0) -> tuple[list[PromptRecord], FilterStats]:
    """Drop records whose measured pass rate is >= `hi` (always solved) or <= `lo` (never solved)."""
    if not lo < hi:
        raise ValueError(f"need lo < hi, got lo={lo} hi={hi}")
    kept, solved, unsolved, unmeasured = [], 0, 0, 0
    for record in records:
        rate = pass_rates.get(record.id)
        if rate is None:
            unmeasured += 1
            kept.append(record)
        elif rate >= hi:
            solved += 1
        elif rate <= lo:
            unsolved += 1
        else:
            kept.append(record)
    unknown = len(set(pass_rates) - {r.id for r in records})
    return kept, FilterStats(len(kept), solved, unsolved, unmeasured, unknown)


def split_by_domain(records: Sequence[PromptRecord]) -> dict[str, list[PromptRecord]]:
    """Records grouped by domain, each group in file order."""
    groups: dict[str, list[PromptRecord]] = {}
    for record in records:
        groups.setdefault(record.domain, []).append(record)
    return groups


def epochs(records: Sequence[PromptRecord], seed: int, num_epochs: int | None = None) -> grain.MapDataset:
    """Records shuffled differently each epoch and repeated `num_epochs` times (None: forever)."""
    if not records:
        raise ValueError("cannot build a dataset of zero records")
    return grain.MapDataset.source(list(records)).shuffle(seed=seed % 2**32).repeat(num_epochs)


def domain_seed(seed: int, domain: str) -> int:
    """Shuffle seed of one domain: distinct per domain, fixed by (seed, domain name)."""
    return (seed + zlib.crc32(domain.encode("utf-8"))) % 2**32


def mix_domains(records: Sequence[PromptRecord], weights: Mapping[str, float], seed: int,
                num_epochs: int | None = None) -> grain.MapDataset:
    """Records of the weighted domains, each domain shuffled per epoch, drawn in proportion to `weights`.

    Domains absent from `weights` (or with weight 0) are left out. With `num_epochs`, the mix ends when the first
    domain runs out.
    """
    groups = split_by_domain(records)
    unknown = sorted(set(weights) - set(groups))
    if unknown:
        raise ValueError(f"weights name domains with no records: {unknown} (have {sorted(groups)})")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"domain weights must be >= 0, got {dict(weights)}")
    used = {d: w for d, w in sorted(weights.items()) if w > 0}
    if not used:
        raise ValueError(f"all domain weights are zero: {dict(weights)}")
    parts = [epochs(groups[d], domain_seed(seed, d), num_epochs) for d in used]
    return grain.MapDataset.mix(parts, list(used.values()))


def prompt_batches(dataset: grain.MapDataset, batch_size: int, drop_remainder: bool = True) -> grain.IterDataset:
    """Lists of `batch_size` records, read in the calling thread (records are already in memory)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    batches = dataset.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def build_prompt_batches(records: Sequence[PromptRecord], batch_size: int, seed: int,
                         weights: Mapping[str, float] | None = None,
                         num_epochs: int | None = None) -> grain.IterDataset:
    """All records (or the `weights` mix of domains), shuffled per epoch, in batches of `batch_size`."""
    dataset = epochs(records, seed, num_epochs) if weights is None else mix_domains(records, weights, seed, num_epochs)
    return prompt_batches(dataset, batch_size)


def iterator_state(iterator: grain.DatasetIterator) -> dict[str, Any]:
    """JSON-serialisable position of an iterator from `prompt_batches`."""
    return dict(iterator.get_state())


def restore_iterator(batches: grain.IterDataset, state: Mapping[str, Any]) -> grain.DatasetIterator:
    """A fresh iterator over `batches` that continues from `state` (from `iterator_state`)."""
    iterator = iter(batches)
    iterator.set_state(dict(state))
    return iterator
