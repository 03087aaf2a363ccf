"""A byte-level tokenizer for runs without tokenizer files (tests, the embedded demo job).

Token id = byte value + `offset`, so ids 0..offset-1 stay free for pad / eos. Real runs pass the
checkpoint's own tokenizer instead (any `str -> list[int]` callable).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    offset: int = 2  # 0 = pad, 1 = eos

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes (pad / eos ids left out), possibly not valid UTF-8."""
        return bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < 256 + self.offset)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return 256 + self.offset
