"""Sampler: KV-cache decoding against the full (no-cache) forward, log-probs, eos, and the sampling law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ringjax
from ringjax.generate import Sampling, generate, greedy, sample_logits
from numerics import assert_greedy, model_logprob_tol
from ringjax.sampling import nucleus_mask_rows, sample_rows

LENS = np.array([7, 3, 5, 1])  # right-padded prompts of different lengths in one batch
P, N = 7, 6


@pytest.fixture(scope="module", params=["tiny-v1", "tiny-v2"])
def model(request):
    return ringjax.create_model(ringjax.preset(request.param), seed=0)


def _prompts(vocab, lens=LENS, width=P, seed=0):
    ids = np.random.default_rng(seed).integers(1, vocab, (len(lens), width))
    ids[np.arange(width)[None, :] >= lens[:, None]] = 0
    return ids


def _full_logits(model):
    """logits [B S V] of the plain forward (no cache), jitted once per model."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, tokens: (lambda m: m.logits(m(tokens).hidden))(nnx.merge(graphdef, state)))
    return lambda tokens: np.asarray(fn(state, jnp.asarray(tokens, jnp.int32)))


def _continuations(prompts, lens, tokens):
    """Each row's prompt followed by its generated tokens, in a [B, P + N] buffer."""
    seq = np.zeros((len(lens), prompts.shape[1] + tokens.shape[1]), np.int64)
    for b, n in enumerate(lens):
        seq[b, :n] = prompts[b, :n]
        seq[b, n:n + tokens.shape[1]] = tokens[b]
    return seq


def test_greedy_matches_full_forward_argmax(model):
    """Each cached-decoding token is the argmax of the full forward over the sequence so far (teacher-forced, up to
    a float32 near-tie, tests/numerics.py), with that forward's log-prob."""
    prompts = _prompts(model.config.vocab_size)
    out = greedy(model, jnp.asarray(prompts), jnp.asarray(LENS), N)
    assert_greedy(model, [p[:n] for p, n in zip(prompts, LENS)], np.asarray(out.tokens), np.asarray(out.logprobs))
    np.testing.assert_array_equal(np.asarray(out.lengths), N)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_full_forward(model, temperature):
    prompts = _prompts(model.config.vocab_size, seed=1)
    out = generate(model, jnp.asarray(prompts), jnp.asarray(LENS), N, rng=jax.random.key(3),
                   temperature=temperature, top_p=0.9)  # log-probs ignore the top-p cut
    tokens = np.asarray(out.tokens)
    logits = _full_logits(model)(_continuations(prompts, LENS, tokens)) / temperature
    logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    at = LENS[:, None] - 1 + np.arange(N)  # position whose logits predict generated token t
    want = np.take_along_axis(np.asarray(logp)[np.arange(len(LENS))[:, None], at], tokens[..., None], -1)[..., 0]
    # two float32 computations of a log-prob (cache vs full forward), logits scaled by 1 / T: ~1e-3 at T = 0.7
    tol = model_logprob_tol(model, P + N, temperature)
    np.testing.assert_allclose(np.asarray(out.logprobs), want, atol=tol, rtol=0)


def test_eos_stops_a_row(model):
    prompts = jnp.asarray(_prompts(model.config.vocab_size, seed=2))
    free = np.asarray(greedy(model, prompts, jnp.asarray(LENS), N).tokens)
    eos = int(free[0, 2])  # row 0 stops after its third token
    out = greedy(model, prompts, jnp.asarray(LENS), N, eos_id=eos, pad_id=-1)
    tokens, lengths, logp = np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.logprobs)
    for b in range(len(LENS)):
        hits = np.flatnonzero(free[b] == eos)
        n = hits[0] + 1 if hits.size else N
        assert lengths[b] == n
        np.testing.assert_array_equal(tokens[b, :n], free[b, :n])
        np.testing.assert_array_equal(tokens[b, n:], -1)
        np.testing.assert_array_equal(logp[b, n:], 0.0)
        assert np.all(logp[b, :n] < 0)
    assert lengths[0] == 3


def test_all_rows_done_stops_early(model):
    prompts = jnp.asarray(_prompts(model.config.vocab_size, lens=np.array([4, 4]), seed=4))
    first = np.asarray(greedy(model, prompts, jnp.asarray([4, 4]), 1).tokens)[:, 0]
    if first[0] != first[1]:  # both rows end at once only if they share the eos; use row 0's prompt twice
        prompts = jnp.stack([prompts[0], prompts[0]])
    out = greedy(model, prompts, jnp.asarray([4, 4]), N, eos_id=int(first[0]))
    np.testing.assert_array_equal(np.asarray(out.lengths), 1)
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, 1:], 0)


def test_sampling_is_reproducible(model):
    prompts, lens = jnp.asarray(_prompts(model.config.vocab_size, seed=5)), jnp.asarray(LENS)
    a = generate(model, prompts, lens, N, rng=jax.random.key(7))
    b = generate(model, prompts, lens, N, rng=jax.random.key(7))
    c = generate(model, prompts, lens, N, rng=jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def _chi2_critical(dof: int, z: float = 3.719) -> float:
    """Upper 1e-4 quantile of chi-square(dof), Wilson-Hilferty approximation."""
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def _chi2(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson statistic with bins of expected count < 5 pooled into one; returns (statistic, dof)."""
    expected = probs * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep])), int(keep.sum() - 1)


@pytest.mark.parametrize("top_p", [1.0, 0.6])
def test_one_step_distribution(top_p):
    """4096 samples of one step from one prompt follow softmax(logits / T), cut to the top-p nucleus."""
    model = ringjax.create_model(ringjax.preset("tiny-v1"), seed=0)
    temperature, n = 0.3, 4096  # random tiny logits span ~2.4: at T = 0.3 the 0.6-nucleus holds ~77 tokens
    prompt = _prompts(model.config.vocab_size, lens=np.array([5]), width=5, seed=6)
    out = generate(model, jnp.asarray(np.repeat(prompt, n, 0)), jnp.full((n,), 5), 1, rng=jax.random.key(0),
                   temperature=temperature, top_p=top_p)
    logits = jnp.asarray(_full_logits(model)(prompt)[:, -1] / temperature)  # [1 V]
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))[0]
    nucleus = np.asarray(nucleus_mask_rows(jax.nn.log_softmax(logits), jnp.full((1,), top_p)))[0]
    tokens = np.asarray(out.tokens)[:, 0]
    assert nucleus.all() == (top_p == 1.0) and 1 < nucleus.sum()
    assert nucleus[tokens].all(), "sampled a token outside the top-p nucleus"
    target = np.where(nucleus, probs, 0.0) / probs[nucleus].sum()
    stat, dof = _chi2(np.bincount(tokens, minlength=probs.size).astype(np.float64), target)
    assert dof >= 3 and stat < _chi2_critical(dof), (stat, dof)


def test_nucleus_mask_and_greedy_sample():
    logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
    for top_p, want in ((0.75, [False, True, False, True]), (0.85, [False, True, True, True]),
                        (0.4, [False, True, False, False]), (1.0, [True] * 4)):
        np.testing.assert_array_equal(np.asarray(nucleus_mask_rows(logits, jnp.full((1,), top_p))), [want])
    tok, logp = sample_logits(logits * 3, jax.random.key(0), Sampling(temperature=0.0))
    assert int(tok[0]) == 1
    np.testing.assert_allclose(np.asarray(logp), np.asarray(jax.nn.log_softmax(logits * 3))[:, 1], rtol=1e-6)


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (0.7, 1.0), (1.3, 0.6), (0.5, 0.9)])
def test_static_sampler_draws_like_the_per_row_sampler(temperature, top_p):
    """One sampling rule: for the same key, the static sampler's draws and log-probs are the per-row sampler's,
    whose rows also draw the same whatever settings the other rows of their batch have (the engine's slots)."""
    logits = jax.random.normal(jax.random.key(1), (16, 64)) * 3.0  # [B V]
    key = jax.random.key(2)
    tok, logp = sample_logits(logits, key, Sampling(temperature=temperature, top_p=top_p))
    rows = jnp.arange(16) % 2 == 0  # even rows: these settings; odd rows: other settings
    t = jnp.where(rows, temperature, 1.1)
    p = jnp.where(rows, top_p, 0.3)
    got_tok, got_logp = sample_rows(logits, key, t, p, use_top_p=True)
    np.testing.assert_array_equal(np.asarray(got_tok)[::2], np.asarray(tok)[::2])
    np.testing.assert_array_equal(np.asarray(got_logp)[::2], np.asarray(logp)[::2])


def test_sharded_generation_matches_unsharded():
    """Under an 8-way expert mesh (all-gather EP MoE, sharded cache) greedy decoding is the unsharded model's:
    teacher-forced through its full forward, every token is its argmax up to a float32 near-tie (where the two
    paths may pick different tokens and go on differently), with its log-prob (tests/numerics.py)."""
    cfg = ringjax.preset("tiny-v2")
    lens = np.array([7, 3, 5, 1, 6, 2, 4, 7])
    prompts = _prompts(cfg.vocab_size, lens=lens, seed=8)
    mesh = ringjax.make_mesh(expert=8)
    with jax.set_mesh(mesh):
        got = greedy(ringjax.create_model(cfg, mesh, seed=0), jnp.asarray(prompts), jnp.asarray(lens), N)
    assert_greedy(ringjax.create_model(cfg, seed=0), [p[:n] for p, n in zip(prompts, lens)],
                  np.asarray(got.tokens), np.asarray(got.logprobs))


def test_greedy_on_a_context_mesh_splits_rows_and_matches_unsharded():
    """On a mesh with a context axis, decoding splits rows over fsdp x context (`ringjax.sharding.decode_layout`):
    the same tokens as the unsharded model's full forward."""
    cfg = ringjax.preset("tiny-v2")
    lens = np.array([7, 3, 5, 1, 6, 2, 4, 7])
    prompts = _prompts(cfg.vocab_size, lens, seed=4)
    mesh = ringjax.make_mesh(fsdp=2, context=4)
    with jax.set_mesh(mesh):
        sharded = ringjax.create_model(cfg, mesh, seed=0)
        out = greedy(sharded, jnp.asarray(prompts), jnp.asarray(lens), N)
    assert_greedy(ringjax.create_model(cfg, seed=0), [p[:n] for p, n in zip(prompts, lens)], np.asarray(out.tokens),
                  np.asarray(out.logprobs))
