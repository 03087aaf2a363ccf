"""`rollout.sglang.engine.SGLangEngine` against a real SGLang 0.5.23 server on the CPU (float32, tiny Ling 2.0).

Reference: ringjax itself. Greedy tokens must be identical to `ringjax.generate.greedy` and every returned log-prob
must equal ringjax's `token_logprobs(..., temperature=T)` of the same tokens within TOL (temperature-scaled, no
top-p truncation). tiny-v2's routed_scaling_factor of 2.5 needs the CPU MoE fix, which the engine's launcher
applies (rollout/sglang/_server_main.py). One server serves most tests (module fixture, ~20 s to start); a second one,
whose distributed weight sync cannot start (NCCL on a CPU), checks the disk fallback and is then killed
mid-generation; a third one returns routing records (with the CPU fix its launcher applies for them).
"""

import base64
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ringjax
from helpers import random_model
from numerics import full_logprobs
from ringjax.generate import greedy
from rollout.types import Request, SamplingParams
from sglang_support.runner import engine_env, sglang_available

if not sglang_available():
    pytest.skip("SGLang is not installed: run scripts/install_sglang_cpu.sh", allow_module_level=True)

from rollout.sglang.engine import SGLangConfig, SGLangEngine, SGLangServerError  # noqa: E402 (needs aiohttp)
from rollout.sglang.generate import split_routes  # noqa: E402
from rollout.types import Output  # noqa: E402
from rollout.weights import flat_key, model_from_flat  # noqa: E402

pytestmark = pytest.mark.sglang

TOL = 1e-4  # max |log p_ringjax - log p_sglang| per token, fp32
PROMPTS = ([5, 17, 301, 44, 9], [400, 3, 3, 81, 250, 16, 7, 120, 33], [1, 2])
N = 12  # greedy tokens per prompt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, model, perturbed flat weights, their model, checkpoint folder)."""
    cfg = ringjax.preset("tiny-v2")
    model = random_model(cfg, seed=3)
    path = str(tmp_path_factory.mktemp("sglang_engine") / "tiny-v2")
    ringjax.save_pretrained(model, path)
    rng = np.random.default_rng(7)
    flat = {flat_key(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}
    flat2 = {k: (v + 0.05 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in flat.items()}
    model2 = model_from_flat(cfg, {k: jnp.asarray(v) for k, v in flat2.items()})
    return cfg, model, flat2, model2, path


def _config(path, **kw):
    return SGLangConfig(path, device="cpu", dtype="float32", max_total_tokens=4096, fix_cpu_routed_scaling=True, **kw)


@pytest.fixture(scope="module")
def engine(tiny):
    with SGLangEngine(_config(tiny[-1]), env=engine_env()) as eng:
        yield eng
    assert eng._server.proc.poll() is not None


@pytest.fixture(scope="module")
def fragile(tiny):
    """A second server whose distributed weight sync cannot start (NCCL needs a GPU in this process)."""
    with SGLangEngine(_config(tiny[-1], sync_backend="nccl"), env=engine_env()) as eng:
        yield eng


def _run(engine, requests, timeout_s=120):
    engine.submit(requests)
    done, deadline = {}, time.monotonic() + timeout_s
    while len(done) < len(requests):
        assert time.monotonic() < deadline, "engine did not finish in time"
        done.update((o.id, o) for o in engine.step())
    assert engine.num_pending() == 0
    return done


def _ringjax_greedy(model, prompts, n):
    width = max(map(len, prompts))
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    out = greedy(model, jnp.asarray(tokens), jnp.asarray([len(p) for p in prompts], jnp.int32), n)
    return np.asarray(out.tokens), np.asarray(out.logprobs)


def _ringjax_scores(model, contexts, ns, temperature):
    """log p of the last n tokens of each context under logits / temperature."""
    width = max(map(len, contexts))
    tokens = np.zeros((len(contexts), width), np.int32)
    for i, c in enumerate(contexts):
        tokens[i, :len(c)] = c
    logp, _ = jax.jit(lambda t: ringjax.Ling.token_logprobs(model, t, temperature=temperature))(jnp.asarray(tokens))
    logp = np.asarray(logp)
    return [logp[i, len(c) - 1 - n:len(c) - 1] for i, (c, n) in enumerate(zip(contexts, ns))]


def _greedy_requests(prefix="g", n=N, **sampling):
    return [Request(f"{prefix}{i}", np.array(p), SamplingParams(temperature=0.0, max_tokens=n, **sampling))
            for i, p in enumerate(PROMPTS)]


def test_greedy_matches_ringjax(tiny, engine):
    """SGLang's greedy tokens are ringjax's argmax, its log-probs ringjax's, teacher-forced on SGLang's own output:
    each framework is within TOL of the exact value, so at a near-tie (top two within 2 TOL) either token may come
    out under another reduction order; every other token must be ringjax's argmax."""
    _, model, *_ = tiny
    want_tokens, want_logp = _ringjax_greedy(model, PROMPTS, N)
    got = _run(engine, _greedy_requests())
    for i, prompt in enumerate(PROMPTS):
        o = got[f"g{i}"]
        assert o.finish == "length" and o.error is None and len(o.tokens) == N
        logp = full_logprobs(model, np.concatenate([prompt, o.tokens])[None].astype(np.int32))[0]  # [S V]
        dist = logp[len(prompt) - 1 + np.arange(N)]  # [N V] the distributions that chose the N tokens
        chosen = dist[np.arange(N), o.tokens]
        assert (dist.max(-1) - chosen).max() <= 2 * TOL, f"prompt {i}: a token that is not ringjax's argmax"
        assert np.abs(o.logprobs - chosen).max() < TOL
        assert (o.versions == 0).all()
        if np.array_equal(o.tokens, want_tokens[i]):  # the usual case: ringjax's own greedy run agrees exactly
            assert np.abs(o.logprobs - want_logp[i]).max() < TOL
    # a sharp comparison: many different tokens, log-probs that differ far beyond TOL
    assert len(np.unique(want_tokens)) > 10 and np.ptp(want_logp) > 100 * TOL


def test_bad_requests_come_back_as_errors(engine):
    ok = Request("ok", np.array([1, 2, 3]), SamplingParams(temperature=0.0, max_tokens=2))
    bad = [Request("empty", np.zeros((0,), np.int32), SamplingParams(max_tokens=4)),
           Request("done", np.array([1]), SamplingParams(max_tokens=2), generated=np.array([4, 5])),
           Request("long", np.array([1, 2]), SamplingParams(max_tokens=4000))]  # beyond the 512-token context
    got = _run(engine, [ok] + bad)
    assert got["ok"].finish == "length" and len(got["ok"].tokens) == 2
    for r in bad:
        assert got[r.id].finish == "error" and got[r.id].error and len(got[r.id].tokens) == 0
    assert "context" in got["long"].error


def test_sampled_logprobs_are_temperature_scaled_and_untruncated(tiny, engine):
    _, model, *_ = tiny
    t = 0.7
    reqs = [Request(f"s{i}", np.array(p), SamplingParams(temperature=t, top_p=0.8, max_tokens=16))
            for i, p in enumerate(PROMPTS)]
    got = _run(engine, reqs)
    contexts = [np.concatenate([r.prompt, got[r.id].tokens]) for r in reqs]
    want = _ringjax_scores(model, contexts, [len(got[r.id].tokens) for r in reqs], t)
    for r, w in zip(reqs, want):
        o = got[r.id]
        assert o.finish == "length" and len(o.tokens) == 16
        assert np.abs(o.logprobs - w).max() < TOL
    # top-p renormalisation would raise every log-prob; temperature 1 would give other values
    t1 = _ringjax_scores(model, contexts, [16] * len(reqs), 1.0)
    assert max(np.abs(got[r.id].logprobs - w1).max() for r, w1 in zip(reqs, t1)) > 100 * TOL


def test_continuation_and_stop_ids(tiny, engine):
    _, model, *_ = tiny
    want_tokens, want_logp = _ringjax_greedy(model, PROMPTS, N)
    k = 5
    cont = [Request(f"c{i}", np.array(p), SamplingParams(temperature=0.0, max_tokens=N), generated=want_tokens[i, :k])
            for i, p in enumerate(PROMPTS)]
    stops = {}
    for i in range(len(PROMPTS)):  # stop at the first token at index >= 3 not seen before it
        j = next(j for j in range(3, N) if want_tokens[i, j] not in want_tokens[i, :j])
        stops[i] = j
    stop = [Request(f"t{i}", np.array(p), SamplingParams(temperature=0.0, max_tokens=N,
                                                            stop_ids=(int(want_tokens[i, stops[i]]), 100000)))
            for i, p in enumerate(PROMPTS)]
    got = _run(engine, cont + stop)
    for i in range(len(PROMPTS)):
        c = got[f"c{i}"]
        assert c.finish == "length", c.error
        np.testing.assert_array_equal(c.tokens, want_tokens[i, k:])
        assert np.abs(c.logprobs - want_logp[i, k:]).max() < TOL
        s = got[f"t{i}"]
        assert s.finish == "stop"
        np.testing.assert_array_equal(s.tokens, want_tokens[i, :stops[i] + 1])  # the stop id is kept, last
        assert np.abs(s.logprobs - want_logp[i, :stops[i] + 1]).max() < TOL


def test_abort_returns_partial_outputs(tiny, engine):
    _, model, *_ = tiny
    long = SamplingParams(temperature=1.0, max_tokens=500)
    reqs = [Request(f"a{i}", np.array([7, 8, 9]), long) for i in range(3)]
    engine.submit(reqs)
    time.sleep(1.0)
    first = engine.abort(["a0", "not-a-request"])
    assert [o.id for o in first] == ["a0"]
    rest = engine.abort()
    assert engine.num_pending() == 0 and engine.step() == []
    outs = first + rest
    assert sorted(o.id for o in outs) == ["a0", "a1", "a2"]
    for o in outs:
        assert o.finish == "abort" and o.error is None
        assert 0 < len(o.tokens) < 500 and len(o.logprobs) == len(o.tokens)
    # the partial tokens are real samples: their log-probs are ringjax's
    o = outs[0]
    want = _ringjax_scores(model, [np.concatenate([[7, 8, 9], o.tokens])], [len(o.tokens)], 1.0)[0]
    assert np.abs(o.logprobs - want).max() < TOL
    # a request the server may not have seen yet is aborted too
    engine.submit([Request("fresh", np.array([1, 2, 3]), long)])
    (fresh,) = engine.abort(["fresh"])
    assert fresh.finish == "abort" and len(fresh.tokens) < 500
    assert engine.num_pending() == 0


def test_update_weights_distributed(tiny, engine):
    _, model, flat2, model2, _ = tiny
    want_tokens, want_logp = _ringjax_greedy(model2, PROMPTS, N)
    engine.update_weights(flat2, version=1)
    assert engine.version == 1 and engine.last_update_method == "distributed" and engine.last_update_s > 0
    got = _run(engine, _greedy_requests("u"))
    for i in range(len(PROMPTS)):
        o = got[f"u{i}"]
        np.testing.assert_array_equal(o.tokens, want_tokens[i])
        assert np.abs(o.logprobs - want_logp[i]).max() < TOL
        assert (o.versions == 1).all()
    # an update while a request runs: it continues under the new weights, its tokens tagged by version
    engine.submit([Request("live", np.array([7, 8, 9]), SamplingParams(temperature=1.0, max_tokens=400))])
    time.sleep(0.5)
    engine.update_weights(model, version=2)  # a Ling works as well as flat weights
    (live,) = _drain(engine)
    assert live.finish == "length" and len(live.tokens) == 400
    assert set(np.unique(live.versions)) == {1, 2} and (np.diff(live.versions) >= 0).all()
    # back at the original weights
    back = _run(engine, _greedy_requests("b"))
    np.testing.assert_array_equal(back["b0"].tokens, _ringjax_greedy(model, PROMPTS, N)[0][0])
    assert engine.stats["disk_fallbacks"] == 0


def _drain(engine, timeout_s=120):
    out, deadline = [], time.monotonic() + timeout_s
    while engine.num_pending():
        assert time.monotonic() < deadline
        out += engine.step()
    return out


def test_update_weights_from_disk(tiny, engine):
    _, model, flat2, model2, _ = tiny
    want_tokens, _ = _ringjax_greedy(model2, PROMPTS, N)
    engine.update_weights(flat2, version=3, method="disk")
    assert engine.last_update_method == "disk"
    got = _run(engine, _greedy_requests("d"))
    for i in range(len(PROMPTS)):
        np.testing.assert_array_equal(got[f"d{i}"].tokens, want_tokens[i])
        assert (got[f"d{i}"].versions == 3).all()
    engine.update_weights(nnx.state(model), version=4)  # an nnx.State works too
    assert engine.last_update_method == "distributed"
    got = _run(engine, _greedy_requests("e"))
    np.testing.assert_array_equal(got["e1"].tokens, _ringjax_greedy(model, PROMPTS, N)[0][1])


def test_distributed_sync_falls_back_to_disk(tiny, fragile, caplog):
    _, model, flat2, model2, _ = tiny
    want_tokens, want_logp = _ringjax_greedy(model2, PROMPTS, N)
    fragile.update_weights(flat2, version=5)
    assert fragile.last_update_method == "disk" and fragile.stats["disk_fallbacks"] == 1
    assert any("falling back" in r.message for r in caplog.records)
    got = _run(fragile, _greedy_requests("f"))
    for i in range(len(PROMPTS)):
        np.testing.assert_array_equal(got[f"f{i}"].tokens, want_tokens[i])
        assert np.abs(got[f"f{i}"].logprobs - want_logp[i]).max() < TOL
        assert (got[f"f{i}"].versions == 5).all()


def test_server_death_fails_inflight_requests(fragile):
    fragile.submit([Request(f"k{i}", np.array([7, 8, 9]), SamplingParams(max_tokens=500)) for i in range(3)])
    time.sleep(0.5)
    os.killpg(fragile.pid, signal.SIGKILL)
    outs = _drain(fragile, timeout_s=60)
    assert sorted(o.id for o in outs) == ["k0", "k1", "k2"]
    for o in outs:
        assert o.finish == "error" and "exited" in o.error and len(o.tokens) == 0
    assert not fragile.alive()
    with pytest.raises(SGLangServerError, match="exited"):
        fragile.submit([Request("late", np.array([1, 2]))])
    with pytest.raises(SGLangServerError, match="exited"):
        fragile.update_weights({}, version=9)
    fragile.close()
    fragile.close()  # idempotent


def test_server_that_cannot_start_fails_fast(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SGLangServerError, match="no config.json"):
        SGLangEngine(_config(str(empty)), env=engine_env())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"],
                                                    "model_type": "no_such_model"}))
    start = time.monotonic()
    with pytest.raises(SGLangServerError, match="exited with code") as err:
        SGLangEngine(_config(str(broken), start_timeout_s=120), env=engine_env())
    assert time.monotonic() - start < 100
    assert "log tail" in str(err.value) and len(str(err.value)) > 200


def test_rl_loop_generates_with_sglang_and_syncs_its_weights(tmp_path, monkeypatch):
    """`rollout.engine: sglang`: the RL loop exports the starting model, serves it with SGLang and pushes the
    weights after every update. With nothing carried over (sync mode, leftover dropped), every trained token was
    sampled by the current weights, so the train-inference gap stays at float32 noise only if the sync worked."""
    from ringjax.config_io import load_config
    from ringjax.data import PromptRecord
    from ringjax.trainer.rl import RLConfig, train_rl

    for key in ("PYTHONPATH", "SGLANG_USE_CPU_ENGINE"):
        monkeypatch.setenv(key, engine_env()[key])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(RLConfig, os.path.join(root, "configs", "tiny_rl.yaml"), [
        "steps=2", "checkpoint_every=0", "leftover=drop", "rollout.engine=sglang",
        "rollout.sglang={device: cpu, dtype: float32, max_total_tokens: 4096, fix_cpu_routed_scaling: true}"])
    records = [PromptRecord(id=f"p{i}", prompt=f"What is {i} + {i}?", domain="math", answer=str(2 * i))
               for i in range(6)]
    # A reward that separates any two different texts (a parity reward gives a whole group one value, so zero
    # advantages and a zero gradient, about once in 64 runs): SGLang's sampling is not seeded by the test.
    result = train_rl(random_model(ringjax.preset("tiny-v2"), seed=3), records,
                      lambda record, text: zlib.crc32(text.encode()) / 2**32, cfg, run_dir=str(tmp_path / "run"))
    assert [h["tokens"] for h in result.history] == [cfg.phi, cfg.phi]
    assert all(h["rollout_failed_groups"] == 0 for h in result.history)
    for h in result.history:
        assert h["logp_diff_max"] < 1e-3, h["logp_diff_max"]
    assert result.history[1]["grad_norm"] > 0


def _routed_reply(ids):
    """A /generate reply body carrying `ids` the way SGLang's detokenizer sends them: base64 of int32 bytes."""
    return {"meta_info": {"routed_experts": base64.b64encode(np.asarray(ids, np.int32).tobytes()).decode()}}


def test_split_routes_drops_dense_layers_and_splits_context_from_output():
    """tiny-v2: 3 layers, the first dense (SGLang sends zeros for it), top-2 of 8 experts. A call with a context of
    C = 4 ids (prompt 3 + generated 1) that produced n = 3 tokens fed positions 0..5: rows 0..2 are the context
    minus its last id, rows 3..5 produced the 3 tokens."""
    cfg = ringjax.preset("tiny-v2")
    moe = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 0]], [[0, 1], [2, 3]],
                    [[4, 5], [6, 7]], [[7, 6], [5, 4]], [[3, 2], [1, 0]]])  # [6 positions, 2 MoE layers, 2]
    ids = np.concatenate([np.zeros((6, 1, 2), np.int32), moe], axis=1)  # + the dense layer's row: [6 3 2]
    context_routes, routes = split_routes(_routed_reply(ids), 4, 3, cfg)
    assert context_routes.dtype == routes.dtype == np.uint8
    np.testing.assert_array_equal(context_routes, moe[:3])
    np.testing.assert_array_equal(routes, moe[3:])
    with pytest.raises(ValueError, match="expected 7 positions"):  # one token more than the record covers
        split_routes(_routed_reply(ids), 4, 4, cfg)
    with pytest.raises(ValueError, match="no meta_info.routed_experts"):
        split_routes({"meta_info": {}}, 4, 3, cfg)
    with pytest.raises(ValueError, match="outside"):
        split_routes(_routed_reply(np.where(ids == 7, 8, ids)), 4, 3, cfg)
    # the engine keeps the tokens of a reply whose record is unusable, without a record, and counts it
    engine = types.SimpleNamespace(stats=collections.Counter(), model_config=cfg)
    request = Request("r", np.array([1, 2, 3]), generated=np.array([4]))
    out = Output("r", [5, 6, 7], [-1.0, -2.0, -3.0], [0, 0, 0], "length")
    good = SGLangEngine._with_routes(engine, out, request, _routed_reply(ids))
    np.testing.assert_array_equal(good.routes, moe[3:])
    np.testing.assert_array_equal(good.context_routes, moe[:3])
    bad = SGLangEngine._with_routes(engine, out, request, _routed_reply(ids[:5]))
    assert bad.routes is None and bad.context_routes is None and len(bad.tokens) == 3
    assert engine.stats["routes_missing"] == 1


def test_routing_records_on_cpu_are_the_models_own_top_k(tiny):
    """A CPU server with `return_routed_experts` (its launcher applies `patch_routed_experts_host_cache_on_cpu`)
    returns, for every position it fed, the experts ringjax's own forward chooses there: greedy requests and one
    continuation (C = prompt + 4 generated ids), compared with `Ling(prompt + generated + output).aux.experts` as
    sets per position and MoE layer. tiny-v2's first layer is dense: its all-zero rows must be the ones dropped,
    else the records would not match. A float32 near-tie may flip between the two implementations, nothing more."""
    cfg, model, *_ = tiny
    moe_layers, k = cfg.num_hidden_layers - cfg.first_k_dense_replace, cfg.num_experts_per_tok
    assert cfg.first_k_dense_replace >= 1 and moe_layers >= 2
    requests = _greedy_requests("r") + [Request("rc", np.array(PROMPTS[1]), SamplingParams(temperature=0.0,
                                                max_tokens=10), generated=np.array([60, 61, 62, 63]))]
    with SGLangEngine(_config(tiny[-1], return_routed_experts=True), env=engine_env()) as eng:
        got = _run(eng, requests)
    assert eng.stats["routes_missing"] == 0
    agree, sets = [], set()
    for r in requests:
        o = got[r.id]
        context = len(r.prompt) + len(r.generated)
        assert o.error is None and len(o.tokens) == r.remaining
        assert o.routes.shape == (len(o.tokens), moe_layers, k) and o.routes.dtype == np.uint8
        assert o.context_routes.shape == (context - 1, moe_layers, k)
        record = np.concatenate([o.context_routes, o.routes])  # positions 0 .. C + n - 2
        sequence = np.concatenate([r.prompt, r.generated, o.tokens]).astype(np.int32)
        own = np.asarray(model(jnp.asarray(sequence[None])).aux.experts)[:, 0, :-1]  # [L S-1 X]: last never fed
        agree.append(np.all(np.sort(np.moveaxis(own, 0, 1), -1) == np.sort(record, -1), axis=-1).ravel())
        sets.update(map(tuple, np.sort(record, -1).reshape(-1, k).tolist()))
    agree = np.concatenate(agree)
    print(f"routing agreement {agree.mean():.4f} over {agree.size} (position, MoE layer) rows")
    assert agree.size > 100 and agree.mean() >= 0.97, agree.mean()
    assert len(sets) >= 10  # a sharp comparison: the tokens use many of the 28 expert pairs


def test_routed_experts_host_cache_needs_the_cpu_fix():
    """Without the fix, the routed-experts host cache that a CPU server allocates at start cannot be built on a
    machine without CUDA (CUDA host registration): the server would die while it starts. With it, the cache is a
    plain zeroed host buffer. Only the "cpu" entry of SGLang's allocation table changes."""
    script = """if True:
        import traceback
        import torch
        print("CUDA", torch.cuda.is_available())
        from sglang.srt.mem_cache.pool_host import common
        from sglang.srt.state_capturer.base import BaseHostCache
        from rollout.sglang.cpu_fix import patch_routed_experts_host_cache_on_cpu
        try:
            BaseHostCache(5, 3, 2, "routed_experts", "cpu")
            print("UNPATCHED OK")
        except Exception:
            print("UNPATCHED FAILED", traceback.format_exc())
        patch_routed_experts_host_cache_on_cpu()
        patch_routed_experts_host_cache_on_cpu()  # idempotent
        cache = BaseHostCache(5, 3, 2, "routed_experts", "cpu")
        print("PATCHED", tuple(cache.buffer.shape), str(cache.buffer.dtype), int(cache.buffer.abs().sum()))
        print("CUDA ENTRY", common.ALLOC_MEMORY_FUNCS["cuda"] is common.alloc_with_host_register)
    """
    env = engine_env()
    env["PYTHONWARNINGS"] = "ignore"  # SGLang's import-time warnings about quantisation kernels, not our subject
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    if "CUDA False" in out.stdout:  # the machines this suite runs on; with CUDA, registration works unpatched
        assert re.search(r"(?s)UNPATCHED FAILED.*_cuda_host_register.*NVIDIA driver", out.stdout), out.stdout[-3000:]
    assert "PATCHED (5, 3, 2) torch.int32 0" in out.stdout and "CUDA ENTRY True" in out.stdout, out.stdout[-3000:]
