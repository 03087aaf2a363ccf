"""One request on an SGLang server: its `/generate` call and the reply turned into an `Output`.

A request is sent as prompt + already generated ids (`input_ids`), `max_new_tokens = request.remaining` and
`rid = request.id` (the id `/abort_request` names), asking for the sampled tokens' log-probs. The reply's
`meta_info` holds the log-probs (`output_token_logprobs`, one row per output id, its log-prob first), the finish
reason and the versions (`weight_version`, and `weight_versions`: spans of output tokens per version).
See `rollout.sglang.engine` for what SGLang's log-probs, stops and aborts mean.

Routing records (`SGLangConfig.return_routed_experts`: the server runs with --enable-return-routed-experts and each
call sets `return_routed_experts`): `meta_info["routed_experts"]` is base64 of int32 ids [C + n - 1, layers, top-k]
for the C input ids (prompt + generated) and n output ids, covering every position the server fed, i.e. all but the
last output id (SGLang's `RoutedExpertsCapturer.get_topk` returns input positions [0, C + n - 1)). It has a row
for every layer, zeros for the dense ones, so `split_routes` drops the first `first_k_dense_replace` layers, then
splits it into the context's C - 1 rows and the n rows that produced the output (`rollout.types.Output`).

On a CPU device SGLang 0.5.23 dies at start with --enable-return-routed-experts (its records' host cache needs
CUDA to pin it); `rollout.sglang.server` has its launcher apply the fix in `rollout.sglang.cpu_fix` there, and
the capture itself runs on the CPU: the Bailing MoE's `TopK.forward_cpu` calls `select_experts`, whose
`_post_process_topk_ids` calls `capture_routed_experts_if_allowed`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses

import aiohttp
import numpy as np

from ringjax.model import LingConfig
from ringjax.typing import Int
from rollout.routes import compact
from rollout.types import Output, Request

FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclasses.dataclass
class Reply:
    body: dict | None = None
    error: str | None = None
    lost: bool = False  # the connection failed: maybe the server is exiting


@dataclasses.dataclass
class Inflight:
    request: Request
    future: concurrent.futures.Future  # -> Reply
    posted: bool = False  # the /generate call has been handed to the connection pool
    aborted: bool = False


async def generate(session: aiohttp.ClientSession, url: str, inflight: Inflight, timeout: float | None,
                   routed_experts: bool = False) -> Reply:
    """POSTs the request to `url`/generate (asking for its routing record with `routed_experts`); a failed call is
    a `Reply` with `error`, never an exception."""
    r = inflight.request
    payload = {
        "rid": r.id,
        "input_ids": np.concatenate([r.prompt, r.generated]).tolist(),
        "sampling_params": {"temperature": r.sampling.temperature, "top_p": r.sampling.top_p,
                            "max_new_tokens": r.remaining, "stop_token_ids": list(r.sampling.stop_ids) or None},
        "return_logprob": True,
        "logprob_start_len": -1,
    }
    if routed_experts:
        payload["return_routed_experts"] = True
    inflight.posted = True
    try:
        async with session.post(url + "/generate", json=payload, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return Reply(error=f"SGLang /generate HTTP {resp.status}: {(await resp.text())[:1000]}")
            return Reply(body=await resp.json(content_type=None))
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        return Reply(error=f"SGLang /generate failed: {type(e).__name__}: {e}",
                     lost=isinstance(e, aiohttp.ClientConnectionError))


def parse_reply(rid: str, body: dict, version: int, aborted: bool) -> Output:
    """The `Output` of a `/generate` reply; `version` tags tokens the reply gives no version for. An abort that
    `aborted` (the engine's own abort) does not explain is an error. Raises on a reply it does not understand."""
    meta = body["meta_info"]
    tokens = np.asarray(body["output_ids"], np.int32)
    logprobs = np.asarray([row[0] for row in meta["output_token_logprobs"]], np.float32)
    if len(tokens) != len(logprobs):
        raise ValueError(f"{len(tokens)} output ids but {len(logprobs)} log-probs")
    reason = meta.get("finish_reason") or {}
    kind = reason.get("type") if isinstance(reason, dict) else reason
    if kind not in FINISH:
        raise ValueError(f"finish_reason {reason!r}")
    versions = np.full(len(tokens), int(meta.get("weight_version", version)), np.int32)
    for span in meta.get("weight_versions") or ():
        versions[span["start"]:span["end"]] = int(span["version"])
    error = None
    if kind == "abort" and not aborted:
        error = f"SGLang aborted the request: {reason.get('message')}"
    return Output(rid, tokens, logprobs, versions, FINISH[kind], error)


def split_routes(body: dict, context: int, tokens: int, model: LingConfig
                 ) -> tuple[Int[np.ndarray, "C1 L X"], Int[np.ndarray, "N L X"]]:
    """(context_routes, routes) of a `/generate` reply for `context` input ids and `tokens` output ids: the MoE
    layers' expert ids of the context's first C - 1 positions and of the N positions that produced the output
    (module docstring), compacted (`rollout.routes.compact`). Raises ValueError when the reply has no record or
    one of another shape."""
    encoded = body["meta_info"].get("routed_experts")
    if not encoded:
        raise ValueError("the reply has no meta_info.routed_experts (is the server started with "
                         "--enable-return-routed-experts?)")
    ids = np.frombuffer(base64.b64decode(encoded), np.int32)
    layers, k = model.num_hidden_layers, model.num_experts_per_tok
    rows = context + tokens - 1
    if ids.size != rows * layers * k:
        raise ValueError(f"routed_experts holds {ids.size} ids, expected {rows} positions x {layers} layers x "
                         f"top-{k} = {rows * layers * k}")
    ids = compact(ids.reshape(rows, layers, k)[:, model.first_k_dense_replace:], model.num_experts)
    return ids[:context - 1], ids[context - 1:]
