"""C3PO++ (Ring-1T): token-budgeted rollout iterations whose unfinished responses carry over to the next policy.

Per iteration t (docs/architecture.md, C3PO++), over any `rollout.types.Engine` (the in-process JAX engine, SGLang
or a Ray pool):
1. drop every rollout group that has already spanned `sigma` iterations (started at b with t - b >= sigma); its
   tokens are counted in `stats["dropped_groups"]` / `stats["dropped_tokens"]`, never silently lost;
2. re-submit the unfinished responses of the inference pool as continuations (prompt + tokens so far), so the
   current policy continues them (`carry_kv="recompute"`: the engine re-prefills their context with the current
   weights); with `carry_kv="keep"` they were never taken out of the engine (step 4) and simply continue, their
   earlier tokens' keys and values still the ones the previous weights computed;
3. while the completed-token count C < `phi`: refill the pool to capacity `omega` responses with new prompts
   (`samples` responses per prompt: one GRPO group), advance the engine, and when a group's last response ends
   move the group to the training pool and add its response tokens to C;
4. interrupt the engine (`abort`): partial responses keep their tokens, log-probs and per-token policy versions
   and wait in the pool for iteration t + 1. With `carry_kv="keep"` the engine keeps them instead, mid-response,
   with their KV caches (counted in `stats["kept"]`); a group retired at step 1 is then aborted in the engine.

Unit of completion: the GRPO group. A response that ends waits for its siblings, because the group's advantages
need every reward; C counts a group's tokens once it is complete. Rewards are computed off the generation loop:
a complete group's responses are decoded and handed to a `rollout.rewards.RewardPool` at once, and the scores are
collected at the end of the iteration (a reward function that raises or hangs scores 0 and is counted there).

`mode="sync"` is the baseline: submit a batch of `omega` responses, wait until every one of them has ended (also
when C reaches phi in the middle of a batch), repeat until C >= phi; nothing carries over.

Failures: a request the engine answers with `finish="error"` (empty or over-long prompt, a dead SGLang server)
fails its whole group: the siblings are aborted, the group is counted in `stats["failed_groups"]` with the reason
in `errors` (first few kept), and the run goes on. `MAX_FAILURES_IN_A_ROW` failed groups with none completing in
between means the setup is broken (every request fails): the iteration raises, naming the first errors.

`state_dict()` / `load_state_dict()` hold everything needed to continue the same partial rollouts after a
restart (JSON-serialisable: it goes into the trainer's checkpoint). KV caches are not saved: a resumed
continuation is re-prefilled by the policy that continues it. With `carry_kv="keep"`, `state_dict(engine)` adds
the tokens the engine holds (`engine.peek()`), so none is lost; the first iteration after a resume re-prefills
them, so a resumed keep-run is not bit-equal to an uninterrupted one.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np

from ringjax.data import PromptRecord
from rollout import routes
from rollout.rewards import RewardPool
from rollout.types import Engine, Output, Request, SamplingParams

Decode = Callable[[np.ndarray], str | bytes]  # response token ids -> text for the reward functions
MAX_ERRORS_KEPT = 20
MAX_FAILURES_IN_A_ROW = 64  # groups failing with no group completing in between: a broken setup, not bad prompts


@dataclasses.dataclass(frozen=True)
class C3POPPConfig:
    phi: int = 256  # completed response tokens per iteration
    omega: int = 16  # inference pool capacity, in responses
    sigma: int = 2  # iterations a rollout may span before it is dropped
    samples: int = 4  # responses per prompt (GRPO group size)
    mode: Literal["c3po++", "sync"] = "c3po++"
    carry_kv: Literal["recompute", "keep"] = "recompute"  # carried responses: re-prefilled, or kept in the engine

    def __post_init__(self):
        for name in ("phi", "omega", "sigma", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name}={getattr(self, name)} must be >= 1")
        if self.omega < self.samples:
            raise ValueError(f"rollout.omega={self.omega} cannot hold one group of samples={self.samples}")
        if self.mode not in ("c3po++", "sync"):
            raise ValueError(f"rollout.mode={self.mode!r} is not 'c3po++' or 'sync'")
        if self.carry_kv not in ("recompute", "keep"):
            raise ValueError(f"rollout.carry_kv={self.carry_kv!r} is not 'recompute' or 'keep'")
        if self.carry_kv == "keep" and self.mode != "c3po++":
            raise ValueError(f"rollout.carry_kv=keep needs rollout.mode=c3po++ (mode {self.mode!r} carries nothing)")


@dataclasses.dataclass
class Member:
    """One response of a group, possibly spanning several iterations and policy versions."""

    id: str
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    versions: list[int] = dataclasses.field(default_factory=list)
    done: bool = False
    routes: np.ndarray | None = None  # routing record of prompt + tokens (rollout.routes); None: unknown

    def extend(self, out: Output) -> None:
        """Appends a call's tokens. The routing record starts with the first call's prefilled prompt; a
        continuation adds only the routing that produced its new tokens (its re-prefill of the earlier ones is a
        different policy's and is not what sampled them). A call without routing makes the record unknown."""
        if not self.tokens:
            have = out.routes is not None and out.context_routes is not None
            self.routes = np.concatenate([out.context_routes, out.routes]) if have else None
        elif self.routes is not None:
            self.routes = None if out.routes is None else np.concatenate([self.routes, out.routes])
        self.tokens += out.tokens.tolist()
        self.logprobs += out.logprobs.tolist()
        self.versions += out.versions.tolist()

    def copy(self) -> Member:
        return Member(self.id, list(self.tokens), list(self.logprobs), list(self.versions), self.done, self.routes)


@dataclasses.dataclass
class Group:
    id: str
    record: PromptRecord
    prompt: list[int]
    born: int  # iteration the group started in
    members: list[Member]

    @property
    def complete(self) -> bool:
        return all(m.done for m in self.members)

    def response_tokens(self) -> int:
        return sum(len(m.tokens) for m in self.members)


@dataclasses.dataclass
class Finished:
    """A complete group and its rewards (what the trainer turns into GRPO `Response`s)."""

    group: Group
    rewards: list[float]


class C3POPlusPlus:
    """The rollout scheduler; `prompts` yields (record, prompt ids) and is only advanced to refill the pool."""

    def __init__(self, cfg: C3POPPConfig, sampling: SamplingParams | Callable[[PromptRecord, int], SamplingParams],
                 prompts: Iterator[tuple[PromptRecord, list[int]]], rewards: RewardPool, decode: Decode):
        """`sampling` is one setting for every response, or a function of (record, sample index) that must
        return the same setting each time it is asked (a continuation is asked again)."""
        self.cfg, self.sampling, self.prompts, self.rewards, self.decode = cfg, sampling, prompts, rewards, decode
        self.iteration = 0
        self.groups: dict[str, Group] = {}  # the inference pool: groups with unfinished members
        self._next_group = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.exhausted = False
        self.held: set[str] = set()  # carry_kv="keep": responses left running in the engine across the update

    # -- one iteration ---------------------------------------------------------------------------------------------
    def run_iteration(self, engine: Engine) -> list[Finished]:
        """Advances rollouts until `phi` tokens of complete groups exist (or the prompts run out); returns them."""
        t = self.iteration
        self._retire(t, engine)
        by_id = {m.id: (g, m) for g in self.groups.values() for m in g.members}
        carried = [self._request(g, m) for g, m in by_id.values() if not m.done and m.id not in self.held]
        engine.submit(carried)
        self.stats["resubmitted"] += len(carried)
        running = self.held | {r.id for r in carried}  # submitted, no output yet
        self.held = set()
        completed: list[tuple[Group, list]] = []
        count, failures = 0, 0
        sync = self.cfg.mode == "sync"
        while count < self.cfg.phi or (sync and running):  # sync: a started batch always runs to its end
            if not sync or not running:
                running |= self._refill(engine, t, len(running), by_id)
            if not running:
                break  # prompt source exhausted and nothing running
            for out in engine.step():
                done = self._take(engine, out, running, by_id, completed)
                if done is None:
                    failures += 1
                    if failures >= MAX_FAILURES_IN_A_ROW:
                        engine.abort()
                        raise RuntimeError(f"rollout: {failures} prompt groups failed in a row with none "
                                           f"completing; first errors: {self.errors[:3]}")
                elif done:
                    failures, count = 0, count + done.response_tokens()
        if self.cfg.carry_kv == "keep":  # the engine goes on with them under the next weights
            self.held = running
            self.stats["kept"] += len(running)
        else:  # interrupt: partial outputs wait for the next iteration; an engine may also hand back outputs that
            # had already ended (or failed) before the abort reached them, which count like any other
            for out in engine.abort():
                self._take(engine, out, running, by_id, completed)
        self.iteration += 1
        self.stats["iterations"] += 1
        self.stats["completed_groups"] += len(completed)
        return [Finished(g, [f.result().score for f in fs]) for g, fs in completed]

    def _take(self, engine: Engine, out: Output, running: set[str], by_id: dict,
              completed: list) -> Group | bool | None:
        """Records one output. Returns the group it completed, None if it failed its group, else False."""
        if out.id not in running:
            self.stats["stray_outputs"] += 1
            return False
        running.discard(out.id)
        g, m = by_id[out.id]
        if g.id not in self.groups:
            return False  # a sibling of a group that failed earlier in this same batch of outputs
        if out.finish == "error":
            running -= self._fail(engine, g, out.error or "engine error")
            return None
        m.extend(out)
        m.done = out.finish in ("stop", "length")
        self.stats["tokens_generated"] += len(out.tokens)
        if not g.complete:
            return False
        del self.groups[g.id]
        futures = self.rewards.submit([(g.record, self.decode(np.asarray(x.tokens, np.int32))) for x in g.members])
        completed.append((g, futures))
        return g

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _request(self, g: Group, m: Member) -> Request:
        sampling = self.sampling
        if callable(sampling):
            sampling = sampling(g.record, g.members.index(m))
        return Request(m.id, np.asarray(g.prompt, np.int32), sampling, np.asarray(m.tokens, np.int32))

    def _retire(self, t: int, engine: Engine) -> None:
        for g in list(self.groups.values()):
            if t - g.born >= self.cfg.sigma:
                del self.groups[g.id]
                held = [m.id for m in g.members if m.id in self.held]
                partial = engine.abort(held) if held else []
                self.held -= set(held)
                self.stats["dropped_groups"] += 1
                self.stats["dropped_tokens"] += g.response_tokens() + sum(len(o.tokens) for o in partial)

    def _refill(self, engine: Engine, t: int, in_flight: int, by_id: dict) -> set[str]:
        """Starts new groups while they fit in `omega`; returns the ids submitted."""
        added: list[Request] = []
        while not self.exhausted and in_flight + len(added) + self.cfg.samples <= self.cfg.omega:
            try:
                record, ids = next(self.prompts)
            except StopIteration:
                self.exhausted = True
                break
            gid = f"g{self._next_group}"
            self._next_group += 1
            g = Group(gid, record, [int(i) for i in ids], t, [Member(f"{gid}/{j}") for j in range(self.cfg.samples)])
            self.groups[gid] = g
            for m in g.members:
                by_id[m.id] = (g, m)
            added += [self._request(g, m) for m in g.members]
            self.stats["groups_started"] += 1
        engine.submit(added)
        return {r.id for r in added}

    def _fail(self, engine: Engine, g: Group, error: str) -> set[str]:
        """Drops group `g` after one of its requests failed; aborts its running siblings, returns their ids."""
        del self.groups[g.id]
        self.stats["failed_groups"] += 1
        self.stats["dropped_tokens"] += g.response_tokens()
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"group {g.id} (prompt {g.record.id}): {error}")
        siblings = [m.id for m in g.members if not m.done]
        return {o.id for o in engine.abort(siblings)} if siblings else set()

    # -- checkpoint ------------------------------------------------------------------------------------------------
    def state_dict(self, engine: Engine | None = None) -> dict:
        """The scheduler's state; with responses held in `engine` (carry_kv="keep"), their tokens so far are read
        from it (`engine.peek`) into the saved members, the live ones untouched."""
        held = {o.id: o for o in engine.peek(sorted(self.held))} if self.held and engine is not None else {}
        if self.held and len(held) != len(self.held):
            raise RuntimeError(f"state_dict: {len(self.held)} responses are held in the engine; pass the engine "
                               f"(got partial outputs of {len(held)})")

        def member(m: Member) -> dict:
            if m.id in held:
                m = m.copy()
                m.extend(held[m.id])
            return {**dataclasses.asdict(m), "routes": routes.to_json(m.routes)}

        return {"iteration": self.iteration, "next_group": self._next_group, "stats": dict(self.stats),
                "exhausted": self.exhausted,
                "groups": [{"id": g.id, "record": dataclasses.asdict(g.record), "prompt": g.prompt, "born": g.born,
                            "members": [member(m) for m in g.members]} for g in self.groups.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self._next_group = int(state["iteration"]), int(state["next_group"])
        self.stats = collections.Counter(state["stats"])
        self.exhausted = bool(state.get("exhausted", False))
        self.held = set()  # a fresh engine holds nothing: the next iteration re-submits every unfinished response
        self.groups = {}
        for row in state["groups"]:
            members = [Member(**{**m, "routes": routes.from_json(m.get("routes"))}) for m in row["members"]]
            self.groups[row["id"]] = Group(row["id"], PromptRecord(**row["record"]), list(row["prompt"]),
                                           int(row["born"]), members)
