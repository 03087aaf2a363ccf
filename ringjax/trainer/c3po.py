"""C3PO token-budget step assembly and fixed-shape micro-batch packing (host side, numpy).

C3PO (Ring-lite, arXiv 2506.14731): every optimisation step sees exactly `phi` response tokens. Responses are taken
greedily in the given order until the cumulative response-token count reaches `phi`; the tail of the last one is
cut, AFTER advantages are computed (so the cut response keeps the advantage of its full rollout). The loss is then
summed over tokens and divided by the constant `phi`. C3PO++ (Ring-1T) feeds the same assembly from a pool of
partial rollouts, so a response may carry tokens of several policy versions: `Response.versions` stores them.
The baseline C3PO replaces, the sample budget (a fixed number of whole GRPO groups per step, whose token count
varies with the response lengths), is `take_groups`.

Decisions, which the reference reports leave open:
- Nothing is dropped silently: `assemble_step` returns the step and a `leftover` list: the cut tail (if any) first,
  then every untaken response, in input order. The caller decides (Ring-lite discards them; an asynchronous
  trainer may keep them). The tail is itself a valid `Response`: its `prompt` is the original prompt followed by
  the kept head, so it stays conditioned on the context it was sampled in; `offset` counts the response tokens
  before it and `advantage`, `reward`, ids are copied.
- Too few tokens is an error (`ValueError`), never a short step: the trainer must not update on != phi tokens.
  Use `response_tokens` to test availability first.
- `phi` must be at least the longest response (or a configured `max_response_len`), so one rollout never spans
  more than a whole step and every step holds at least one complete-or-head sequence of each taken rollout.
- Advantages are required on the responses that are taken (the cut one included); untaken ones may lack them.

Alignment (matches `Ling.token_logprobs(tokens, positions, segment_ids)`, which returns [B, S-1] log-probs of
`tokens[:, 1:]`): for a row t_0..t_{S-1}, the log-prob of t_{j+1} is predicted at position j. Every per-token array
of a `MicroBatch` except tokens / positions / segment_ids therefore has shape [B, S-1] and index j refers to
`tokens[:, j+1]`; `loss_mask[b, j]` is true iff `tokens[b, j+1]` is a response token of the same sequence as
`tokens[b, j]`. A sequence is prompt + response, so response token i of a sequence starting at column c with a
prompt of length p sits at column c + p + i and is scored at j = c + p + i - 1 (p >= 1 keeps j in the sequence).

Packing: sequences are placed first-fit, in order, into rows of length S; `segment_ids` count 1, 2, ... within a
row (0 is padding), `positions` restart at 0 for each sequence. Padding uses `pad_id`, position 0, segment 0.

Dimension letters (besides the ringjax legend): P prompt length, O response (output) length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ringjax.typing import Bool, Float, Int


@dataclasses.dataclass(frozen=True, eq=False)
class Response:
    """One sampled response to one prompt; arrays are copied to int32 / float32 on construction.

    `advantage` may be None until computed (fill it with `dataclasses.replace`). `versions` is the policy version
    that sampled each token (C3PO++), or None. `offset` is the number of this rollout's response tokens that lie
    before `tokens` (non-zero only for a cut tail, whose `prompt` then ends with those tokens). `routes` is the
    engine's routing record of prompt + tokens (`rollout.routes`: [P + O - 1, L, X] expert ids), or None.
    """

    prompt_id: int | str
    prompt: Int[np.ndarray, " P"]
    tokens: Int[np.ndarray, " O"]
    logp_infer: Float[np.ndarray, " O"]
    reward: float
    advantage: float | None = None
    versions: Int[np.ndarray, " O"] | None = None
    group_id: int | str | None = None
    offset: int = 0
    routes: np.ndarray | None = None

    def __post_init__(self):
        cast = {"prompt": np.int32, "tokens": np.int32, "logp_infer": np.float32, "versions": np.int32}
        for name, dtype in cast.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.array(value, dtype=dtype).reshape(-1))
        n = len(self.tokens)
        if len(self.prompt) < 1 or n < 1:
            raise ValueError(f"response prompt_id={self.prompt_id!r}: prompt ({len(self.prompt)}) and response "
                             f"({n}) need at least one token each")
        for name in ("logp_infer", "versions"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"response prompt_id={self.prompt_id!r}: {name} has {len(value)} entries for "
                                 f"{n} tokens")
        if self.routes is not None and (self.routes.ndim != 3 or len(self.routes) != len(self.prompt) + n - 1):
            raise ValueError(f"response prompt_id={self.prompt_id!r}: routing record of shape {self.routes.shape}, "
                             f"expected [{len(self.prompt) + n - 1}, layers, top_k]")

    def __len__(self) -> int:
        """Number of response tokens."""
        return len(self.tokens)


@dataclasses.dataclass(frozen=True, eq=False)
class StepBatch:
    """The responses of one optimisation step, holding exactly `phi` response tokens (the last may be a head)."""

    responses: tuple[Response, ...]
    phi: int
    cut: int  # tokens removed from the tail of the last response (0: it fit exactly)


class MicroBatch(NamedTuple):
    """Fixed-shape packed rows; the [B S-1] arrays are aligned with `tokens[:, 1:]` (see module docstring)."""

    tokens: Int[np.ndarray, "B S"]
    positions: Int[np.ndarray, "B S"]
    segment_ids: Int[np.ndarray, "B S"]  # 1, 2, ... per sequence in a row; 0 is padding
    loss_mask: Bool[np.ndarray, "B S-1"]
    logp_infer: Float[np.ndarray, "B S-1"]  # 0 where not masked
    advantages: Float[np.ndarray, "B S-1"]  # 0 where not masked
    seq_index: Int[np.ndarray, "B S-1"]  # index into StepBatch.responses; -1 where not masked
    response_len: Int[np.ndarray, "B S-1"]  # the step's token count of that response (per-sequence GRPO); 0 off mask
    versions: Int[np.ndarray, "B S-1"]  # policy version that sampled the token; -1 where not masked or unknown
    routes: Int[np.ndarray, "B S L X"] | None = None  # engine expert ids per position; -1 where unknown


def response_tokens(responses: Sequence[Response]) -> int:
    """Total response tokens available (what C3PO++ compares with phi)."""
    return sum(len(r) for r in responses)


def _check_phi(responses: Sequence[Response], phi: int, max_response_len: int | None) -> None:
    if phi < 1:
        raise ValueError(f"phi={phi} must be >= 1")
    longest = max(responses, key=len, default=None)
    if max_response_len is not None:
        if longest is not None and len(longest) > max_response_len:
            raise ValueError(f"response prompt_id={longest.prompt_id!r} has {len(longest)} tokens, more than "
                             f"max_response_len={max_response_len}")
        if phi < max_response_len:
            raise ValueError(f"phi={phi} is smaller than max_response_len={max_response_len}")
    elif longest is not None and phi < len(longest):
        raise ValueError(f"phi={phi} is smaller than one response: prompt_id={longest.prompt_id!r} has "
                         f"{len(longest)} tokens")
    available = response_tokens(responses)
    if available < phi:
        raise ValueError(f"phi={phi} needs more tokens than the {available} available in {len(responses)} responses")


def split_response(response: Response, keep: int) -> tuple[Response, Response]:
    """(head, tail) of a response at `keep` tokens (0 < keep < len); the tail's prompt ends with the head."""
    if not 0 < keep < len(response):
        raise ValueError(f"keep={keep} must lie in (0, {len(response)}) for prompt_id={response.prompt_id!r}")
    v = response.versions

    routes = response.routes

    def part(sl: slice, prompt: np.ndarray, offset: int, routes: np.ndarray | None) -> Response:
        return dataclasses.replace(response, prompt=prompt, tokens=response.tokens[sl],
                                   logp_infer=response.logp_infer[sl], versions=None if v is None else v[sl],
                                   offset=offset, routes=routes)

    # the head's positions are a prefix of the record; the tail's prompt + tokens span the same positions as the whole
    head = part(slice(None, keep), response.prompt, response.offset,
                None if routes is None else routes[:len(response.prompt) + keep - 1])
    tail = part(slice(keep, None), np.concatenate([response.prompt, response.tokens[:keep]]),
                response.offset + keep, routes)
    return head, tail


def assemble_step(responses: Sequence[Response], phi: int, *,
                  max_response_len: int | None = None) -> tuple[StepBatch, list[Response]]:
    """Takes responses in order until exactly `phi` response tokens; returns (step, leftover).

    The last response taken is cut to fit; `leftover` is [its tail, if cut] + the untaken responses, in order.
    Raises ValueError when phi < 1, phi is smaller than the longest response (or than `max_response_len`, when
    given, which also bounds every response), fewer than phi tokens are available, or a taken response has no
    advantage.
    """
    _check_phi(responses, phi, max_response_len)
    taken, total = [], 0
    for index, r in enumerate(responses):
        if r.advantage is None:
            raise ValueError(f"response {index} (prompt_id={r.prompt_id!r}) has no advantage: compute advantages "
                             "before assembling the step")
        take = min(len(r), phi - total)
        total += take
        if take < len(r):
            head, tail = split_response(r, take)
            return StepBatch((*taken, head), phi, len(r) - take), [tail, *responses[index + 1:]]
        taken.append(r)
        if total == phi:
            return StepBatch(tuple(taken), phi, 0), list(responses[index + 1:])
    raise AssertionError("unreachable: _check_phi guarantees enough tokens")


def take_groups(responses: Sequence[Response], groups: int) -> tuple[StepBatch, list[Response]]:
    """The sample budget (the usual GRPO step, C3PO's baseline): every response of the first `groups` GRPO groups
    (by `group_id`, in order of first appearance), whole, whatever their token count; returns (step, leftover) like
    `assemble_step`. The step's `phi` is its actual token count. Raises ValueError when fewer groups are available,
    a response has no group id or a taken one has no advantage."""
    if groups < 1:
        raise ValueError(f"groups={groups} must be >= 1")
    order: dict[int | str, None] = {}
    for index, r in enumerate(responses):
        if r.group_id is None:
            raise ValueError(f"response {index} (prompt_id={r.prompt_id!r}) has no group_id")
        order.setdefault(r.group_id, None)
    if len(order) < groups:
        raise ValueError(f"a step of {groups} groups needs more than the {len(order)} groups available")
    chosen = set(list(order)[:groups])
    taken = [r for r in responses if r.group_id in chosen]
    for r in taken:
        if r.advantage is None:
            raise ValueError(f"response of group {r.group_id!r} (prompt_id={r.prompt_id!r}) has no advantage")
    return (StepBatch(tuple(taken), response_tokens(taken), 0),
            [r for r in responses if r.group_id not in chosen])


def groups_in(responses: Sequence[Response]) -> int:
    """Distinct GRPO groups among `responses` (what a sample-budget step counts)."""
    return len({r.group_id for r in responses})


def _place(lengths: Sequence[int], seq_len: int, packed: bool) -> list[list[int]]:
    """Row assignment: first-fit in order when packed, else one sequence per row. Returns sequence ids per row."""
    if not packed:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    free = np.zeros(0, np.int64)
    for i, n in enumerate(lengths):
        fits = np.flatnonzero(free >= n)
        if fits.size:
            row = int(fits[0])
        else:
            row, free = len(rows), np.append(free, seq_len)
            rows.append([])
        rows[row].append(i)
        free[row] -= n
    return rows


def _empty(rows: int, seq_len: int, pad_id: int, route_shape: tuple[int, int] | None) -> MicroBatch:
    s, m = (rows, seq_len), (rows, seq_len - 1)
    routes = None if route_shape is None else np.full(s + route_shape, -1, np.int16)
    return MicroBatch(np.full(s, pad_id, np.int32), np.zeros(s, np.int32), np.zeros(s, np.int32),
                      np.zeros(m, bool), np.zeros(m, np.float32), np.zeros(m, np.float32),
                      np.full(m, -1, np.int32), np.zeros(m, np.int32), np.full(m, -1, np.int32), routes)


def _write(mb: MicroBatch, row: int, col: int, segment: int, index: int, r: Response) -> int:
    """Writes sequence `index` (prompt + response) at (row, col); returns the next free column."""
    p, n = len(r.prompt), len(r)
    end = col + p + n
    mb.tokens[row, col:end] = np.concatenate([r.prompt, r.tokens])
    mb.positions[row, col:end] = np.arange(p + n)
    mb.segment_ids[row, col:end] = segment
    scored = slice(col + p - 1, end - 1)  # predicts tokens[col + p : end], the response
    mb.loss_mask[row, scored] = True
    mb.logp_infer[row, scored] = r.logp_infer
    mb.advantages[row, scored] = r.advantage
    mb.seq_index[row, scored] = index
    mb.response_len[row, scored] = n
    if r.versions is not None:
        mb.versions[row, scored] = r.versions
    if mb.routes is not None and r.routes is not None:
        mb.routes[row, col:col + len(r.routes)] = r.routes  # the last token was never fed: stays -1
    return end


def pack_micro_batches(step: StepBatch, rows: int, seq_len: int, *, packed: bool = True, pad_id: int = 0
                       ) -> list[MicroBatch]:
    """Splits the step's sequences into micro-batches of fixed shape [rows, seq_len] (one jit compile).

    `packed` puts several sequences per row (first-fit, in order; separated by segment ids), otherwise one per row.
    The last micro-batch is filled with padding rows. Sum of `loss_mask` over all micro-batches is `step.phi`.
    When any response has a routing record, every micro-batch gets `routes` (-1 where a response has none).
    Raises ValueError when a sequence (prompt + response) is longer than `seq_len`.
    """
    if rows < 1 or seq_len < 2:
        raise ValueError(f"rows={rows} must be >= 1 and seq_len={seq_len} >= 2")
    lengths = [len(r.prompt) + len(r) for r in step.responses]
    for r, n in zip(step.responses, lengths):
        if n > seq_len:
            raise ValueError(f"sequence prompt_id={r.prompt_id!r} (prompt {len(r.prompt)} + response {len(r)} = "
                             f"{n} tokens) is longer than seq_len={seq_len}")
    placement = _place(lengths, seq_len, packed)
    shapes = {r.routes.shape[1:] for r in step.responses if r.routes is not None}
    if len(shapes) > 1:
        raise ValueError(f"routing records of different shapes {sorted(shapes)} in one step")
    route_shape = next(iter(shapes), None)
    out = []
    for first in range(0, len(placement), rows):
        mb = _empty(rows, seq_len, pad_id, route_shape)
        for row, ids in enumerate(placement[first:first + rows]):
            col = 0
            for segment, i in enumerate(ids, start=1):
                col = _write(mb, row, col, segment, i, step.responses[i])
        out.append(mb)
    return out
