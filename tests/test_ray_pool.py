"""RayEnginePool on a real local Ray cluster: parity with a local JaxEngine, back-pressure, weight updates (full and
as deltas, with the repair of a worker the delta does not fit), a worker killed mid-generation, a worker stopped
(SIGSTOP) mid-generation, a call to a stopped worker timing out, the queue's actor killed mid-generation, abort,
engine exceptions inside a worker, giving up after too many restarts.

Workers run with ONE simulated CPU device (the test process has 8, see conftest.py) and the same matmul precision
as the test process. Each worker process compiles its own functions (a compilation cache shared by the workers
spares a restarted one most of that); the JAX pool is built once per module.
"""

import collections
import dataclasses
import gc
import logging
import os
import signal
import sys
import time

import numpy as np
import pytest
import ray
from helpers import random_model
from ray import cloudpickle

import ringjax
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.weights import flat_weights, model_from_flat
from rollout.ray_pool import RayEnginePool, WorkerPoolError, WorkerTimeout
from rollout.ray_worker import JaxEngineFactory
from ringjax.data import PromptRecord
from rollout.types import Output, Request, SamplingParams

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test engines below travel to the workers

WORKER_ENV = {"env_vars": {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
                           "JAX_DEFAULT_MATMUL_PRECISION": "highest"}}
SLOTS, CONTEXT, CHUNK = 4, 64, 4
HEARTBEAT_TIMEOUT = 15.0  # generous: a ping is answered by its own actor thread, but this machine may be loaded


class SlowEngine:
    """Delegates to an engine, sleeping before each step, so that tests can act while generation is running."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    version = property(lambda self: self.inner.version)
    stats = property(lambda self: self.inner.stats)

    def step(self):
        time.sleep(self.delay)
        return self.inner.step()

    def __getattr__(self, name):
        return getattr(self.inner, name)


@dataclasses.dataclass(frozen=True)
class SlowFactory:
    inner: JaxEngineFactory
    delay: float

    def __call__(self, worker_id):
        return SlowEngine(self.inner(worker_id), self.delay)


class FakeEngine:
    """Pure-Python engine: one token (its index) per request per step; a step holding a request whose id starts
    with "boom" raises."""

    def __init__(self, delay):
        self.version, self.delay, self.stats, self.held = 0, delay, collections.Counter(), []

    def submit(self, requests):
        self.held += [(r, []) for r in requests]

    def step(self):
        time.sleep(self.delay)
        if any(r.id.startswith("boom") for r, _ in self.held):
            raise RuntimeError("boom")
        for _, toks in self.held:
            toks.append(len(toks))
        done = [(r, t) for r, t in self.held if len(t) >= r.remaining]
        self.held = [(r, t) for r, t in self.held if len(t) < r.remaining]
        return [self._out(r, t, "length") for r, t in done]

    def abort(self, ids=None):
        out = [self._out(r, t, "abort") for r, t in self.held if ids is None or r.id in ids]
        self.held = [(r, t) for r, t in self.held if not (ids is None or r.id in ids)]
        return out

    def _out(self, r, toks, finish):
        return Output(r.id, toks, np.zeros(len(toks)), np.full(len(toks), self.version), finish)

    def update_weights(self, weights, version):
        self.version = version

    def num_pending(self):
        return len(self.held)

    def close(self):
        pass


@dataclasses.dataclass(frozen=True)
class FakeFactory:
    delay: float = 0.01

    def __call__(self, worker_id):
        return FakeEngine(self.delay)


@pytest.fixture(scope="module")
def cluster():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        owns = not ray.is_initialized()
        if owns:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, logging_level="warning")
        yield
        if owns:
            ray.shutdown()


@pytest.fixture(scope="module")
def cfg():
    return ringjax.preset("tiny-v2")


@pytest.fixture(scope="module")
def weights(cfg):
    """Two weight sets, as the host numpy arrays a trainer would publish."""
    return [{k: np.asarray(v) for k, v in flat_weights(random_model(cfg, seed)).items()} for seed in (0, 1)]


@pytest.fixture(scope="module")
def local(cfg, weights):
    return JaxEngine(model_from_flat(cfg, weights[0]), slots=SLOTS, max_context=CONTEXT, decode_chunk=CHUNK)


@pytest.fixture(scope="module")
def cached_env(tmp_path_factory):
    """A compilation cache shared by the workers: a restarted worker loads what its previous process compiled."""
    return {"env_vars": {**WORKER_ENV["env_vars"], "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                         "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache"))}}


@pytest.fixture(scope="module")
def pool(cluster, cfg, weights, cached_env):
    factory = JaxEngineFactory(cfg, weights[0], slots=SLOTS, max_context=CONTEXT, decode_chunk=CHUNK)
    p = RayEnginePool(SlowFactory(factory, 0.05), 2, queue_size=2, max_restarts=3, runtime_env=cached_env,
                      heartbeat_interval=0.5, heartbeat_timeout=HEARTBEAT_TIMEOUT)
    yield p
    p.close()


def make_requests(prefix, n, max_tokens, seed=0):
    rng = np.random.default_rng(seed)
    return [Request(f"{prefix}{i}", rng.integers(1, 512, size=int(rng.integers(3, 13))),
                    SamplingParams(temperature=0.0, max_tokens=max_tokens)) for i in range(n)]


def reference(local, requests, weights, version):
    local.update_weights(weights, version)
    return run_to_completion(local, requests)


def drain(pool, n, timeout=120.0):
    """Steps the pool until `n` outputs have come out; returns them in arrival order."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} outputs after {timeout} s"
        out += pool.step()
    return out


def finish_exactly_once(pool, local, weights, requests, got, timeout=120.0):
    """Drains the rest of `requests` (`got`: the outputs already out), checks that nothing comes twice and that every
    output equals an undisturbed local engine's (a reissued request restarts from its original Request)."""
    got = got + drain(pool, len(requests) - len(got), timeout)
    time.sleep(0.3)
    got += pool.step()  # nothing may come twice
    assert sorted(o.id for o in got) == sorted(r.id for r in requests)
    want = reference(local, requests, weights[0], 0)
    for o in got:
        assert_same(o, want[o.id])


def assert_same(got, want):
    assert got.finish == want.finish
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.versions, want.versions)


def pings(pool):
    return ray.get([w.ping.remote() for w in pool.workers])


def attempt(pool, k):
    """Worker k's attempt, or None while Ray restarts it (it refuses calls then)."""
    try:
        return ray.get(pool.workers[k].ping.remote())["attempt"]
    except ray.exceptions.ActorUnavailableError:
        return None


def wait_for(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_greedy_outputs_equal_local_engine(pool, local, weights):
    pool.update_weights(weights[0], 0)
    requests = make_requests("p", 10, 16)
    got = run_to_completion(pool, requests)
    want = reference(local, requests, weights[0], 0)
    assert set(got) == set(want)
    for i in want:
        assert_same(got[i], want[i])
    assert all(p["engine_stats"].get("prefilled", 0) > 0 for p in pings(pool)), "both workers should generate"
    assert pool.num_pending() == 0


def test_back_pressure_blocks_workers_and_loses_nothing(pool, local, weights):
    pool.update_weights(weights[0], 0)
    requests = make_requests("b", 10, 4, seed=1)
    pool.submit(requests)
    wait_for(lambda: sum(p["held"] for p in pings(pool)) > 0, what="a worker blocked on the full queue")
    duplicates = pool.stats["duplicates"]
    got = drain(pool, len(requests))
    assert sorted(o.id for o in got) == sorted(r.id for r in requests)
    want = reference(local, requests, weights[0], 0)
    for o in got:
        assert_same(o, want[o.id])
    assert pool.stats["duplicates"] == duplicates and pool.num_pending() == 0


def test_update_weights_tags_later_tokens(pool, local, weights):
    pool.update_weights(weights[0], 0)
    requests = make_requests("u", 8, 40, seed=2)
    pool.submit(requests)
    before = sum(p["engine_stats"].get("tokens", 0) for p in pings(pool))
    wait_for(lambda: sum(p["engine_stats"].get("tokens", 0) for p in pings(pool)) > before, what="first tokens")
    pool.update_weights(weights[1], 1)
    assert pool.version == 1
    got = drain(pool, len(requests))
    assert all(np.all(np.diff(o.versions) >= 0) for o in got)
    assert any(o.versions[0] == 0 and o.versions[-1] == 1 for o in got), "a request should span the update"

    pool.update_weights(ray.put(weights[1]), 2)  # weights the caller put into the object store itself
    later = make_requests("v", 6, 12, seed=3)
    got = run_to_completion(pool, later)
    want = reference(local, later, weights[1], 2)
    for i in want:
        assert np.all(got[i].versions == 2)
        assert_same(got[i], want[i])


def test_delta_updates_send_what_changed_and_a_worker_holding_other_weights_gets_the_full_ones(pool, local, weights):
    pool.delta = True
    try:
        pool.update_weights(weights[0], 10)  # no base yet: the full weights
        full = sum(v.nbytes for v in weights[0].values())
        sent, stats = pool.stats["sync_bytes"], dict(pool.stats)
        rng = np.random.default_rng(4)
        nudged = {k: v.copy() for k, v in weights[0].items()}
        for name in sorted(nudged)[:3]:  # a few elements of three tensors move
            nudged[name].reshape(-1)[rng.choice(nudged[name].size, 4, replace=False)] += 0.01
        pool.update_weights(nudged, 11)
        assert pool.stats["delta_updates"] == stats.get("delta_updates", 0) + 1
        assert pool.stats["sync_bytes"] - sent < full / 10, "a delta of 12 elements should be small"
        requests = make_requests("d", 6, 12, seed=5)
        got = run_to_completion(pool, requests)
        want = reference(local, requests, nudged, 11)
        for i in want:
            assert_same(got[i], want[i])

        # Worker 0 holds other weights under the same version (corrupted), worker 1 another version (missed one).
        ray.get(pool.workers[0].update_weights.remote(weights[1], 11))
        ray.get(pool.workers[1].update_weights.remote(weights[1], 7))
        repairs, fulls = pool.stats["delta_repairs"], pool.stats["full_updates"]
        nudged2 = {k: v.copy() for k, v in nudged.items()}
        nudged2[sorted(nudged2)[0]].reshape(-1)[:2] -= 0.01
        pool.update_weights(nudged2, 12)
        assert pool.stats["delta_repairs"] == repairs + 2 and pool.stats["full_updates"] == fulls + 1
        got = run_to_completion(pool, requests)
        want = reference(local, requests, nudged2, 12)
        for i in want:
            assert_same(got[i], want[i])
    finally:
        pool.delta = False


def test_killed_worker_requests_are_reissued_exactly_once(pool, local, weights):
    pool.update_weights(weights[0], 0)
    restarts, reissued = pool.stats["restarts"], pool.stats["reissued"]
    requests = make_requests("k", 16, 24, seed=4)
    pool.submit(requests)
    got = drain(pool, 1)
    victim = int(np.argmax(pool.loads()))
    assert pool.loads()[victim] > 0
    ray.kill(pool.workers[victim], no_restart=False)
    finish_exactly_once(pool, local, weights, requests, got)
    assert pool.stats["restarts"] == restarts + 1 and pool.stats["reissued"] > reissued
    wait_for(lambda: (pool.step(), attempt(pool, victim))[1] == 1, what="the worker to come back")
    again = make_requests("a", 2, 8, seed=5)
    assert set(run_to_completion(pool, again)) == {r.id for r in again}


def stop_process(pid):
    """SIGSTOP `pid`; returns a cleanup that kills it (a stopped process ignores everything but SIGKILL)."""
    os.kill(pid, signal.SIGSTOP)

    def cleanup():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return cleanup


def test_stopped_worker_is_detected_replaced_and_its_requests_reissued_once(pool, local, weights):
    """A worker that hangs without dying (its process SIGSTOPped mid-generation): its heartbeat goes unanswered, the
    pool kills and replaces it with the current weights, and every request comes back exactly once, as generated by
    an undisturbed engine."""
    pool.update_weights(weights[0], 0)
    hung, replaced, duplicates = pool.stats["hung"], pool.stats["replaced"], pool.stats["duplicates"]
    requests = make_requests("s", 16, 24, seed=8)
    pool.submit(requests)
    got = drain(pool, 1)
    victim = int(np.argmax(pool.loads()))
    assert pool.loads()[victim] > 0
    pid = ray.get(pool.workers[victim].ping.remote())["pid"]
    cleanup = stop_process(pid)
    try:
        finish_exactly_once(pool, local, weights, requests, got, timeout=HEARTBEAT_TIMEOUT + 120)
    finally:
        cleanup()
    assert pool.stats["hung"] == hung + 1 and pool.stats["replaced"] == replaced + 1
    assert pool.stats["duplicates"] == duplicates
    wait_for(lambda: (pool.step(), attempt(pool, victim))[1] is not None, what="the replacement to serve")
    assert ray.get(pool.workers[victim].ping.remote())["pid"] != pid
    again = make_requests("t", 4, 8, seed=9)
    assert set(run_to_completion(pool, again)) == {r.id for r in again}


def test_queue_actor_death_loses_nothing_and_restarts_no_worker(pool, local, weights):
    """The output queue's actor dies mid-generation (workers blocked on it, outputs inside it): a new queue takes
    its place, every worker moves to a new attempt on it without a restart, and every request comes back once."""
    pool.update_weights(weights[0], 0)
    lost, restarts = pool.stats["queues_lost"], pool.stats["restarts"]
    pids = [p["pid"] for p in pings(pool)]
    requests = make_requests("q", 16, 24, seed=10)
    pool.submit(requests)
    got = drain(pool, 1)
    wait_for(lambda: sum(p["held"] for p in pings(pool)) > 0, what="a worker blocked on the full queue")
    ray.kill(pool._queue.actor, no_restart=True)
    finish_exactly_once(pool, local, weights, requests, got)
    assert pool.stats["queues_lost"] == lost + 1 and pool.stats["restarts"] == restarts
    assert [p["pid"] for p in pings(pool)] == pids  # the same processes, engines kept


def test_abort_returns_partials_and_nothing_later(pool, local, weights):
    pool.update_weights(weights[0], 0)
    requests = make_requests("x", 8, 40, seed=6)
    pool.submit(requests)
    before = sum(p["engine_stats"].get("tokens", 0) for p in pings(pool))
    wait_for(lambda: sum(p["engine_stats"].get("tokens", 0) for p in pings(pool)) > before, what="first tokens")
    out = pool.abort()
    assert sorted(o.id for o in out) == sorted(r.id for r in requests)
    assert any(o.finish == "abort" and len(o.tokens) > 0 for o in out)
    want = reference(local, requests, weights[0], 0)
    for o in out:  # greedy: a partial is a prefix of the full response
        np.testing.assert_array_equal(o.tokens, want[o.id].tokens[:len(o.tokens)])
    assert pool.num_pending() == 0

    some = make_requests("y", 6, 24, seed=7)
    pool.submit(some)
    aborted = pool.abort([r.id for r in some[:3]])
    assert sorted(o.id for o in aborted) == sorted(r.id for r in some[:3])
    rest = drain(pool, 3)
    assert sorted(o.id for o in rest) == sorted(r.id for r in some[3:])
    duplicates = pool.stats["duplicates"]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert pool.step() == []
    assert pool.stats["duplicates"] == duplicates and pool.num_pending() == 0


def test_a_worker_restarted_by_ray_needs_nothing_its_caller_dropped(cluster, cfg, weights, local, cached_env):
    """Ray hands a restarted actor its constructor arguments again. By the time it restarts this worker, the caller
    has dropped all its own references (the factory, the weights it put into the object store for the factory and
    for the last update): the worker comes back from what the pool keeps, with the current weights, and serves."""
    factory = JaxEngineFactory(cfg, ray.put(weights[1]), slots=SLOTS, max_context=CONTEXT, decode_chunk=CHUNK)
    p = RayEnginePool(factory, 1, max_restarts=1, runtime_env=cached_env)
    try:
        p.update_weights(ray.put(weights[0]), 3)
        del factory
        gc.collect()
        ray.kill(p.workers[0], no_restart=False)
        wait_for(lambda: (p.step(), attempt(p, 0))[1] == 1, timeout=120, what="Ray to restart the worker")
        assert p.stats["restarts"] == 1 and p.stats["replaced"] == 0  # restarted by Ray, not replaced by the pool
        requests = make_requests("r", 6, 12, seed=8)
        got = run_to_completion(p, requests)
        want = reference(local, requests, weights[0], 3)
        for i in want:
            assert_same(got[i], want[i])  # the weights of the last update, not the factory's
    finally:
        p.close()
    assert not constructor_arg_warnings(), "Ray warned that an actor's constructor arguments live in the object store"


def test_sharded_workers_take_requests_only_once_they_hold_the_trainers_shards(cluster, cfg, weights, local,
                                                                                cached_env):
    """`send_shards` (a trainer of several processes, each sending its shards): the workers start with zeros and take
    no request before the first update; a worker killed mid-generation comes back held out of dispatch until `step()`
    has had the shards of the current version sent to it (`resyncs`), and every request finishes once, equal to a
    local engine on the trainer's weights (a worker generating with its factory's zeros would not be)."""
    from rollout.shards import send_weights
    from rollout.weight_delta import checksum

    model, sent = model_from_flat(cfg, weights[0]), []

    def send_shards(workers, version):
        sent.append((sorted(workers), version))
        send_weights(workers, flat_weights(model), version, timeout_s=60)

    factory = JaxEngineFactory(cfg, None, slots=SLOTS, max_context=CONTEXT, decode_chunk=CHUNK)
    p = RayEnginePool(SlowFactory(factory, 0.05), 2, name="sharded-test", send_shards=send_shards, max_restarts=2,
                      runtime_env=cached_env, heartbeat_interval=0.5, heartbeat_timeout=HEARTBEAT_TIMEOUT)
    try:
        first = make_requests("s", 4, 8, seed=11)
        p.submit(first)
        time.sleep(0.5)
        assert p.step() == [] and p.loads() == [0, 0]  # in the backlog: no worker holds the trainer's weights yet
        p.update_weights(None, 2)
        assert sent == [(["sharded-test/0", "sharded-test/1"], 2)]
        requests = make_requests("t", 16, 24, seed=12)
        p.submit(requests)
        got = drain(p, len(first) + 1)
        victim = int(np.argmax(p.loads()))
        assert p.loads()[victim] > 0
        ray.kill(p.workers[victim], no_restart=False)
        got += drain(p, len(first) + len(requests) - len(got))
        time.sleep(0.3)
        got += p.step()
        assert sorted(o.id for o in got) == sorted(r.id for r in first + requests)
        wait_for(lambda: (p.step(), p.stats["resyncs"])[1] == 1, timeout=120, what="the worker to get the shards")
        assert p.stats["restarts"] == 1 and p.stats["reissued"] > 0
        assert sent[-1] == ([p.worker_names[victim]], 2)
        last = make_requests("u", 8, 8, seed=13)
        p.submit(last)
        assert p.loads()[victim] > 0  # back in dispatch
        got += drain(p, len(last))
        want = reference(local, first + requests + last, weights[0], 2)
        for o in got:
            assert_same(o, want[o.id])
        held = ray.get(p.workers[victim].weight_checksums.remote())
        assert held == {k: checksum(v) for k, v in weights[0].items()}
    finally:
        p.close()


def constructor_arg_warnings() -> list[str]:
    """Lines of this driver's Ray log (every actor it created this session) saying that an actor with
    `max_restarts` has constructor arguments in the object store (ray-project/ray#53727)."""
    import glob
    import os

    logs = ray._private.worker._global_node.get_logs_dir_path()
    paths = glob.glob(os.path.join(logs, f"python-core-driver-*_{os.getpid()}.log"))
    assert paths, f"no driver log of pid {os.getpid()} in {logs}"
    return [line for path in paths for line in open(path, errors="replace")
            if "has constructor arguments in the object store" in line]


@pytest.fixture(scope="module")
def fake_pool(cluster):
    p = RayEnginePool(FakeFactory(), 1, queue_size=4, max_restarts=1, runtime_env=WORKER_ENV)
    yield p
    p.close()


def test_engine_exception_fails_requests_and_worker_keeps_serving(fake_pool):
    sp = SamplingParams(max_tokens=3)
    got = run_to_completion(fake_pool, [Request("boom", [1], sp), Request("ok", [1], sp)])
    assert {o.finish for o in got.values()} == {"error"}
    assert "RuntimeError: boom" in got["boom"].error
    got = run_to_completion(fake_pool, [Request("after", [1, 2], sp)])
    assert got["after"].finish == "length" and list(got["after"].tokens) == [0, 1, 2]


def test_stale_outputs_are_discarded_and_counted(fake_pool):
    fake_pool.submit([Request("slow", [1], SamplingParams(max_tokens=50))])
    queue, duplicates = fake_pool._queue, fake_pool.stats["duplicates"]
    ticket = fake_pool._by_id["slow"]
    queue.put((0, 99, ticket, Output("slow", [7], [0.0], [0], "stop")))  # from an attempt that never was
    queue.put((0, 0, 10**9, Output("ghost", [7], [0.0], [0], "stop")))  # a ticket nobody holds
    got = drain(fake_pool, 1)
    assert [(o.id, len(o.tokens)) for o in got] == [("slow", 50)]
    assert fake_pool.stats["duplicates"] == duplicates + 2


def test_gives_up_after_too_many_restarts(fake_pool):
    fake_pool.submit([Request("long", [1], SamplingParams(max_tokens=10_000))])
    ray.kill(fake_pool.workers[0], no_restart=False)  # failure 1 of max_restarts=1: restarted, request reissued
    wait_for(lambda: (fake_pool.step(), attempt(fake_pool, 0))[1] == 1, what="the restart")
    assert fake_pool.stats["restarts"] == 1 and fake_pool.stats["reissued"] == 1
    ray.kill(fake_pool.workers[0], no_restart=False)  # failure 2: one too many
    with pytest.raises(WorkerPoolError, match="max_restarts=1"):
        wait_for(lambda: fake_pool.step() and False, timeout=30, what="the pool to give up")
    with pytest.raises(WorkerPoolError):
        fake_pool.submit([Request("more", [1])])


def test_a_call_to_a_stopped_worker_times_out_naming_worker_and_call(cluster, caplog):
    """`update_weights` to a stopped worker returns after `rpc_timeout`: the worker is failed with a WorkerTimeout
    that names it and the call, and replaced; the heartbeat is kept out of the way (its timeout is long). The short
    deadline holds for that call only: a worker's start (`configure`, also the replacement's) may take longer than
    3 s on a loaded machine."""
    p = RayEnginePool(FakeFactory(), 1, max_restarts=1, runtime_env=WORKER_ENV, heartbeat_timeout=3600.0)
    try:
        cleanup = stop_process(ray.get(p.workers[0].ping.remote())["pid"])
        try:
            with caplog.at_level(logging.WARNING, logger="rollout.ray_pool"):
                start = time.monotonic()
                p.rpc_timeout = 3.0
                p.update_weights({}, 1)
                p.rpc_timeout = 600.0
                assert time.monotonic() - start < 30
        finally:
            cleanup()
        assert "WorkerTimeout: worker 0: update_weights did not answer in 3.0 s" in caplog.text
        assert p.stats["restarts"] == 1 and p.stats["replaced"] == 1
        got = run_to_completion(p, [Request("after", [1, 2], SamplingParams(max_tokens=3))])
        assert got["after"].finish == "length"
    finally:
        p.close()


def test_bad_heartbeat_settings_are_refused(cluster):
    with pytest.raises(ValueError, match="heartbeat_interval=5.0 must be > 0 and below heartbeat_timeout=2.0"):
        RayEnginePool(FakeFactory(), 1, heartbeat_timeout=2.0)
    assert issubclass(WorkerTimeout, TimeoutError)


class KillOnce:
    """Steps `pool` and kills its busiest worker at the `at`-th step: a worker dying in the middle of an iteration."""

    def __init__(self, pool, at):
        self.pool, self.at, self.steps, self.killed = pool, at, 0, False

    def step(self):
        self.steps += 1
        if self.steps == self.at and not self.killed:
            victim = int(np.argmax(self.pool.loads()))
            ray.kill(self.pool.workers[victim], no_restart=False)
            self.killed = True
        return self.pool.step()

    def __getattr__(self, name):
        return getattr(self.pool, name)


def test_c3po_pp_run_with_a_worker_killed_mid_iteration_accounts_for_every_prompt(pool, weights):
    from ringjax.data.tokenize import ByteTokenizer
    from rollout.c3po_pp import C3POPlusPlus, C3POPPConfig
    from rollout.rewards import RewardPool

    pool.update_weights(weights[0], 0)
    restarts = pool.stats["restarts"]
    rng = np.random.default_rng(7)
    source = [(PromptRecord(id=f"q{i}", prompt=str(i), domain="math", answer="0"),
               rng.integers(2, 512, size=int(rng.integers(3, 10))).tolist()) for i in range(40)]
    drawn = []

    def prompts():
        for item in source:
            drawn.append(item[0].id)
            yield item

    sampling = SamplingParams(temperature=1.0, max_tokens=16, stop_ids=tuple(range(2, 34)))
    with RewardPool(lambda record, text: float(len(text) % 2), workers=2) as rewards:
        sched = C3POPlusPlus(C3POPPConfig(phi=48, omega=8, sigma=3, samples=2), sampling, prompts(), rewards,
                             ByteTokenizer().decode_bytes)
        engine = KillOnce(pool, at=3)
        finished = []
        for version in range(3):
            pool.update_weights(weights[version % 2], version)
            finished += sched.run_iteration(engine)
    assert engine.killed and pool.stats["restarts"] == restarts + 1
    completed = [f.group.record.id for f in finished]
    in_flight = [g.record.id for g in sched.groups.values()]
    assert sorted(completed + in_flight) == sorted(drawn) and len(set(completed)) == len(completed), \
        (dict(sched.stats), sched.errors, dict(pool.stats))
    assert sched.stats["failed_groups"] == 0 and sched.stats["dropped_groups"] == 0
    for f in finished:
        for m in f.group.members:
            assert m.done and 1 <= len(m.tokens) <= 16 and len(m.tokens) == len(m.logprobs) == len(m.versions)
            assert len(m.tokens) == 16 or m.tokens[-1] in sampling.stop_ids


def test_rl_loop_with_ray_rollout_workers(cluster):
    """`rollout.workers: 1`: the RL loop generates through a Ray worker and trains exactly phi tokens a step."""
    import os

    from ringjax.config_io import load_config
    from ringjax.trainer.rl import RLConfig, train_rl

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(RLConfig, os.path.join(root, "configs", "tiny_rl.yaml"),
                      ["steps=2", "checkpoint_every=0", "rollout.workers=1", "rollout.mode=c3po++"])
    records = [PromptRecord(id=f"p{i}", prompt=f"What is {i} + {i}?", domain="math", answer=str(2 * i))
               for i in range(6)]
    result = train_rl(ringjax.create_model(ringjax.preset("tiny-v2"), seed=0), records,
                      lambda record, text: float(len(text) % 3 == 0), cfg)
    assert [h["tokens"] for h in result.history] == [cfg.phi, cfg.phi]
    assert all(h["rollout_failed_groups"] == 0 for h in result.history)
