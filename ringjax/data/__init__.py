"""RL prompt data: validated JSONL / Parquet rows, difficulty filter, per-domain mixing, resumable batches."""

from ringjax.data.batches import FilterStats, build_prompt_batches, epochs, filter_by_pass_rate, iterator_state
from ringjax.data.batches import mix_domains, prompt_batches, restore_iterator, split_by_domain
from ringjax.data.records import BadRow, LoadStats, PromptRecord, parse_row, prompt_id
from ringjax.data.sources import RecordSource, read_records

__all__ = ["BadRow", "FilterStats", "LoadStats", "PromptRecord", "RecordSource", "build_prompt_batches", "epochs",
           "filter_by_pass_rate", "iterator_state", "mix_domains", "parse_row", "prompt_batches", "prompt_id",
           "read_records", "restore_iterator", "split_by_domain"]
