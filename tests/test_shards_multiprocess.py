"""Sharded weight transfer between processes: two `jax.distributed` CPU trainer processes (2 devices each, the model
sharded over a (fsdp 2, expert 2) mesh spanning both) send their shards (`rollout.shards.send_weights`, bfloat16,
64 kB buckets) to rollout workers of `RayEnginePool`s in other processes, each holding and sending only its own
share (one run of the senders serves both workers below). Each worker's weights must equal, tensor by tensor (CRC-32
of the bfloat16 bytes), the same model loaded from the Orbax checkpoint the trainer processes wrote; and its greedy
outputs must equal a local `JaxEngine` on that disk load, for a worker whose engine is the embedded JAX engine and
for one whose engine is an SGLang CPU server. The senders are tests/shard_sender.py subprocesses."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray

import ringjax
from numerics import full_logprobs
from ringjax.trainer.model_checkpoint import restore_model
from rollout.jax_engine import JaxEngine, run_to_completion
from rollout.ray_pool import RayEnginePool
from rollout.ray_worker import JaxEngineFactory, SGLangEngineFactory
from rollout.types import Request, SamplingParams
from rollout.weight_delta import cast_weights, checksum
from rollout.weights import flat_weights, model_from_flat
from sglang_support.runner import engine_env, sglang_available

SENDER = Path(__file__).with_name("shard_sender.py")
ROOT = SENDER.parent.parent
TIMEOUT_S = 300
TOL = 1e-4  # max |log p_ringjax - log p_sglang| per token, fp32 (as in tests/test_sglang_engine.py)
WORKER_ENV = {"env_vars": {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
                           "JAX_DEFAULT_MATMUL_PRECISION": "highest"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if "[Gloo]" not in ln]
    return "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def cluster():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, logging_level="warning")
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def _send_from_two_processes(cluster, tmp_path, names):
    """Runs the two sender processes against the workers `names` (comma-separated); returns their statistics and the
    disk load's bfloat16 weights, after checking that each element was sent once and every large array was split
    between them."""
    dist = {"RINGJAX_COORDINATOR": f"localhost:{_free_port()}", "RINGJAX_NUM_PROCESSES": "2", "RAY_ADDRESS": cluster,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = []
    try:
        for i in range(2):
            log = open(tmp_path / f"sender{i}.log", "w")  # closed below
            cmd = [sys.executable, str(SENDER), str(tmp_path / "ckpt"), names, str(tmp_path / f"sender{i}.json")]
            procs.append((subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **dist, "RINGJAX_PROCESS_ID": str(i)},
                                           stdout=log, stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + TIMEOUT_S
        for i, (proc, _) in enumerate(procs):
            proc.wait(timeout=max(1, deadline - time.monotonic()))
            log_tail = _tail(tmp_path / f"sender{i}.log")
            assert proc.returncode == 0, f"sender {i} exited with {proc.returncode}:\n{log_tail}"
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    sent = [json.loads((tmp_path / f"sender{i}.json").read_text()) for i in range(2)]
    want = cast_weights(flat_weights(restore_model(str(tmp_path / "ckpt"))), "bfloat16")  # the disk load
    total = sum(v.nbytes for v in want.values())
    assert [s["devices"] for s in sent] == [4, 4]
    assert [s["large_arrays_whole_here"] for s in sent] == [0, 0], "every large array spans both processes"
    assert sum(s["bytes"] for s in sent) == total, "each element is sent once, by one process"
    assert all(0 < s["bytes"] < total for s in sent) and all(s["buckets"] > 1 for s in sent)
    assert all(s["resent"] == 0 for s in sent)
    return sent, want


def _check_worker_weights(worker, want):
    info = ray.get(worker.ping.remote())
    assert info["version"] == 3 and not info["stats"].get("assemblies_dropped")
    got = ray.get(worker.weight_checksums.remote())
    assert sorted(got) == sorted(want)
    bad = [k for k in want if got[k] != checksum(want[k])]
    assert not bad, f"tensors that differ from the disk load: {bad[:5]}"


def _requests(prefix):
    rng = np.random.default_rng(0)
    return [Request(f"{prefix}{i}", rng.integers(1, 512, size=int(rng.integers(3, 10))),
                    SamplingParams(temperature=0.0, max_tokens=8)) for i in range(4)]


@pytest.fixture(scope="module")
def sent(cluster, tmp_path_factory):
    """One run of the two sender processes, to a JAX-engine worker and (where SGLang is installed) an SGLang worker,
    each in its own pool: ({"jax": pool, "sglang": pool}, the disk load's bfloat16 weights, the model config)."""
    tmp = tmp_path_factory.mktemp("shards")
    cfg = ringjax.preset("tiny-v2")
    start = ringjax.create_model(cfg, seed=0)
    with contextlib.ExitStack() as stack:
        factory = JaxEngineFactory(cfg, {k: np.asarray(v) for k, v in flat_weights(start).items()}, slots=4,
                                   max_context=64, decode_chunk=4)
        pools = {"jax": stack.enter_context(RayEnginePool(factory, 1, runtime_env=WORKER_ENV,
                                                          name=f"shards-{uuid.uuid4().hex[:6]}"))}
        if sglang_available():
            from rollout.sglang.engine import SGLangConfig

            path = ringjax.save_pretrained(start, str(tmp / "hf"))
            config = SGLangConfig(path, device="cpu", dtype="float32", max_total_tokens=4096,
                                  fix_cpu_routed_scaling=True)
            pools["sglang"] = stack.enter_context(RayEnginePool(
                SGLangEngineFactory(config, cfg, env=engine_env()), 1, runtime_env=WORKER_ENV,
                name=f"shards-{uuid.uuid4().hex[:6]}"))
        _, want = _send_from_two_processes(cluster, tmp, ",".join(p.worker_names[0] for p in pools.values()))
        yield pools, want, cfg


def test_two_trainer_processes_send_their_shards_to_a_jax_engine_worker(sent):
    pools, want, cfg = sent
    _check_worker_weights(pools["jax"].workers[0], want)
    requests = _requests("j")
    outs = run_to_completion(pools["jax"], requests)
    local = JaxEngine(model_from_flat(cfg, want), slots=4, max_context=64, decode_chunk=4, version=3)
    ref = run_to_completion(local, requests)
    for r in requests:
        np.testing.assert_array_equal(outs[r.id].tokens, ref[r.id].tokens)
        np.testing.assert_allclose(outs[r.id].logprobs, ref[r.id].logprobs, atol=1e-5, rtol=0)
        assert np.all(outs[r.id].versions == 3)


@pytest.mark.sglang
def test_two_trainer_processes_send_their_shards_to_an_sglang_worker(sent):
    """The worker's engine is an SGLang CPU server (float32): the worker assembles the shards and loads them into
    its server over its own weight-update group. Its greedy tokens must be ringjax's argmax on the disk load (a
    near-tie, top two within 2 TOL, may go either way) and its log-probs ringjax's within TOL."""
    pools, want, cfg = sent
    if "sglang" not in pools:
        pytest.skip("SGLang is not installed: run scripts/install_sglang_cpu.sh")
    _check_worker_weights(pools["sglang"].workers[0], want)
    requests = _requests("s")
    outs = run_to_completion(pools["sglang"], requests)
    model = model_from_flat(cfg, want)
    for r in requests:
        o = outs[r.id]
        assert o.finish == "length" and o.error is None and np.all(o.versions == 3)
        logp = full_logprobs(model, np.concatenate([r.prompt, o.tokens])[None].astype(np.int32))[0]
        dist = logp[len(r.prompt) - 1 + np.arange(len(o.tokens))]
        chosen = dist[np.arange(len(o.tokens)), o.tokens]
        assert (dist.max(-1) - chosen).max() <= 2 * TOL, f"{r.id}: a token that is not ringjax's argmax"
        assert np.abs(o.logprobs - chosen).max() < TOL
