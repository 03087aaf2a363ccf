"""The engine interface every rollout backend implements (embedded JAX, SGLang, Ray workers around either).

A `Request` asks for one response to one prompt. It may continue a partial response (`generated`): the engine
then feeds prompt + generated as context and only samples the rest, so a rollout interrupted at a policy update
(C3PO++) resumes under the next policy. Each call returns one `Output` per request, with the tokens generated
in THIS call, their log-probs under the engine's sampling distribution (`logp_infer`: temperature-scaled, no
top-p truncation) and the policy version that produced each token.

Engines are poll-driven and single-threaded from the caller's side:
- `submit(requests)` queues work and returns at once (bad requests come back as `finish="error"` outputs from the
  next `step`, never as a lost request);
- `step()` advances generation and returns the outputs of requests that FINISHED (stop id, length, error);
- `abort(ids=None)` stops the given (default: all) requests and returns their partial outputs
  (`finish="abort"`), so no generated token is lost;
- `update_weights(weights, version)` swaps the policy; tokens sampled afterwards carry `version`.

Engines that can (the embedded JAX engine) also return routing records (`rollout.routes`): `routes` [n, L, X], the
experts of each MoE layer at the position that produced each token of this call, and `context_routes` [C - 1, L, X]
for the context they prefilled (prompt + `generated`, without its last token, which the first decode step feeds).

`finish` values: "stop" (sampled a stop id, which is kept as the last token), "length" (reached
`sampling.max_tokens` response tokens in total, `generated` included), "abort", "error" (`error` says why; the
request produced no tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

Finish = Literal["stop", "length", "abort", "error"]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256  # response tokens in total (a continuation's `generated` counts)
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p={self.top_p} must lie in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens={self.max_tokens} must be >= 1")
        object.__setattr__(self, "stop_ids", tuple(int(t) for t in self.stop_ids))


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    id: str
    prompt: np.ndarray  # int32 prompt ids
    sampling: SamplingParams = SamplingParams()
    generated: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int32))

    def __post_init__(self):
        object.__setattr__(self, "prompt", np.asarray(self.prompt, np.int32).reshape(-1))
        object.__setattr__(self, "generated", np.asarray(self.generated, np.int32).reshape(-1))

    @property
    def remaining(self) -> int:
        """Response tokens this request may still generate."""
        return self.sampling.max_tokens - len(self.generated)


@dataclasses.dataclass(frozen=True, eq=False)
class Output:
    id: str
    tokens: np.ndarray  # int32, generated in this call
    logprobs: np.ndarray  # float32, logp_infer of each token
    versions: np.ndarray  # int32, policy version of each token
    finish: Finish
    error: str | None = None
    routes: np.ndarray | None = None  # [n L X] expert ids that produced each token (engines that record routing)
    context_routes: np.ndarray | None = None  # [C-1 L X] expert ids of the prefilled context

    def __post_init__(self):
        object.__setattr__(self, "tokens", np.asarray(self.tokens, np.int32).reshape(-1))
        object.__setattr__(self, "logprobs", np.asarray(self.logprobs, np.float32).reshape(-1))
        object.__setattr__(self, "versions", np.asarray(self.versions, np.int32).reshape(-1))
        if not len(self.tokens) == len(self.logprobs) == len(self.versions):
            raise ValueError(f"output {self.id}: {len(self.tokens)} tokens, {len(self.logprobs)} log-probs and "
                             f"{len(self.versions)} versions")
        if self.routes is not None and len(self.routes) != len(self.tokens):
            raise ValueError(f"output {self.id}: {len(self.routes)} routing rows for {len(self.tokens)} tokens")

    @classmethod
    def failed(cls, request_id: str, error: str) -> Output:
        empty = np.zeros((0,), np.int32)
        return cls(request_id, empty, empty.astype(np.float32), empty, "error", error)


def check_request(request: Request, max_context: int) -> str | None:
    """Why `request` cannot run on an engine whose context holds `max_context` tokens, or None."""
    if len(request.prompt) == 0:
        return f"request {request.id}: empty prompt"
    if request.remaining < 1:
        return (f"request {request.id}: already holds {len(request.generated)} tokens, "
                f"max_tokens={request.sampling.max_tokens}")
    need = len(request.prompt) + request.sampling.max_tokens
    if need > max_context:
        return (f"request {request.id}: prompt of {len(request.prompt)} tokens + max_tokens "
                f"{request.sampling.max_tokens} = {need} exceeds the engine's context of {max_context}")
    return None


class Engine(Protocol):
    version: int

    def submit(self, requests: Sequence[Request]) -> None: ...

    def step(self) -> list[Output]: ...

    def abort(self, ids: Sequence[str] | None = None) -> list[Output]: ...

    def update_weights(self, weights: Mapping[str, Any], version: int) -> None: ...

    def num_pending(self) -> int: ...

    def close(self) -> None: ...
