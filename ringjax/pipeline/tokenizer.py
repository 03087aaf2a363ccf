"""A byte-level BPE tokenizer trained locally (HF `tokenizers`), saved in the layout `transformers` loads.

Differences from the GPT-2 tokenizer: no prefix space is added; digits are always split into single digits
(`Digits(individual_digits=True)` before the byte-level split), so the model sees numbers digit by digit, which
makes the demo's arithmetic learnable; `<pad>` and `<eos>` are special tokens with ids 0 and 1.
Byte-level means every string round-trips exactly: `decode(encode(t)) == t`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ringjax import storage

PAD, EOS = "<pad>", "<eos>"
RESERVED_TOKENS = (PAD, EOS)
MODEL_MAX_LENGTH = 4096


class Tokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer`: plain encode/decode without special tokens."""

    def __init__(self, hf: HFTokenizer, model_max_length: int = MODEL_MAX_LENGTH):
        self.hf = hf
        self.model_max_length = model_max_length
        self.pad_id = _special_id(hf, PAD)
        self.eos_id = _special_id(hf, EOS)
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no special tokens are added."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of `ids` (a list or an integer array), skipping `<pad>` and `<eos>`."""
        return self.hf.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)

    def save(self, folder: str) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder` (local or a Cloud
        Storage folder, `ringjax.storage`)."""
        storage.write_bytes(storage.join(folder, "tokenizer.json"), self.hf.to_str(pretty=True).encode())
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": PAD,
                  "model_max_length": self.model_max_length, "clean_up_tokenization_spaces": False}
        storage.write_json(storage.join(folder, "tokenizer_config.json"), config)
        storage.write_json(storage.join(folder, "special_tokens_map.json"), {"eos_token": EOS, "pad_token": PAD})

    @classmethod
    def load(cls, folder: str) -> Tokenizer:
        """Read a folder written by `save` (or any folder holding a compatible tokenizer.json)."""
        path = storage.join(folder, "tokenizer.json")
        if not storage.is_file(path):
            raise FileNotFoundError(f"no tokenizer.json in {folder!r}")
        max_length = MODEL_MAX_LENGTH
        config_path = storage.join(folder, "tokenizer_config.json")
        if storage.is_file(config_path):
            max_length = int(storage.read_json(config_path).get("model_max_length", MODEL_MAX_LENGTH))
        return cls(HFTokenizer.from_str(storage.read_text(path)), max_length)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens (specials included) on `texts`; deterministic."""
    minimum = 256 + len(RESERVED_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is below the {minimum} a byte-level BPE with specials needs")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(RESERVED_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def _special_id(hf: HFTokenizer, token: str) -> int:
    idx = hf.token_to_id(token)
    if idx is None:
        raise ValueError(f"tokenizer has no {token!r} token")
    return idx
