"""Tolerances for two float32 computations of the same values whose sums run in different orders.

Two code paths (sharded vs unsharded, micro-batched vs one batch, KV cache vs full forward, two processes vs one)
compute the same float32 values with their reductions split or ordered differently, and another CPU (vector width,
threads, matmul kernel) orders them differently again. Whatever the order, a float32 sum of n terms lies within
(n - 1) * u * sum|terms| of the exact sum (u = eps32 / 2, to first order; Higham, "Accuracy and Stability of
Numerical Algorithms", 2nd ed., chapter 4), so two orders differ by at most n * eps32 * sum|terms|. A value at
the end of a chain of such reductions (a log-prob: norm, projections, attention and expert matmuls layer after
layer, then a log-sum-exp over the vocabulary) inherits each stage's relative error in turn, so its bound is the
sum of the stages' lengths times eps32, relative to the magnitude of the values involved. These are worst-case
bounds (every rounding the same way); the typical error is far smaller, which also leaves room for terms larger
than the result where sums cancel.

Equivalence tests compare what the code computes BEFORE an optimiser or a sampler amplifies rounding: Adam's first
update is about lr * sign(g) wherever |g| >> its eps (1e-8), so a gradient within rounding of zero (1e-6 made of
terms of 10), whose sign depends on the summation order, moves a parameter by up to 2 lr; a near-tie in an argmax
flips a token and with it the rest of a sequence. Hence losses, log-probs, gradients (as the update of one SGD
step with learning rate 1), and for greedy tokens the teacher-forced check `assert_greedy`: every token must be an
argmax up to the tolerance, so a near-tie may go either way.
"""

import jax
import jax.numpy as jnp
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23 ~ 1.19e-7


def forward_chain(cfg, seq_len: int) -> int:
    """Sum of the lengths of the float32 reductions one log-prob of `cfg` goes through in sequence, on rows of
    `seq_len` tokens (tiny presets at 24 tokens: ~2.1e3): per layer the attention norm, q/k/v projection, QK-norm,
    scores, softmax, values and output projection, then the MLP / MoE norm, gate / up (and router) projection, down
    projection and the combine of the chosen and shared experts; then the final norm, head and vocabulary
    log-sum-exp."""
    h, d = cfg.hidden_size, cfg.head_dim
    attention = h + h + d + d + seq_len + seq_len + cfg.num_attention_heads * d
    ffn = h + h + max(cfg.intermediate_size, cfg.moe_intermediate_size) + cfg.num_experts_per_tok + max(
        cfg.num_shared_experts, 1)
    return cfg.num_hidden_layers * (attention + ffn) + h + h + cfg.vocab_size


def grad_chain(cfg, seq_len: int, positions: int) -> int:
    """The same for a parameter gradient: the forward chain, its transpose (the backward pass reduces over the
    other dimension of each stage, of the same lengths), and the sum over the batch's `positions` token positions
    that forms every weight gradient (tiny presets, 24-token rows, 192 positions: ~4.5e3)."""
    return 2 * forward_chain(cfg, seq_len) + positions


def logit_scale(head, final_norm, temperature: float = 1.0) -> float:
    """Bound on sum_i |h_i W_vi| / T, the terms of any logit, from the head weight [V H] and the final norm weight
    (Cauchy-Schwarz: the RMS-normalised hidden state has norm <= sqrt(H) * max|final norm weight|): the magnitude a
    log-prob's rounding is relative to. E.g. `logit_scale(model.head_weight(), model.final_norm[...])`."""
    head = np.asarray(head, np.float64)
    return float(np.sqrt(head.shape[-1]) * np.max(np.abs(np.asarray(final_norm, np.float64)))
                 * np.linalg.norm(head, axis=-1).max() / temperature)


def logprob_tol(cfg, seq_len: int, scale: float) -> float:
    """Bound on the difference of two float32 computations of one log-prob in different orders: the forward chain
    at eps32 relative to logits of magnitude `scale` (`logit_scale`), plus the log-sum-exp's relative error, which
    the log turns absolute: forward_chain * eps32 * (scale + 1). tiny-v2 on 24-token rows: ~6.7e-4 at init (scale
    ~1.6), ~2.7e-3 with the std-0.1 weights of tests/helpers.py (scale ~10)."""
    return forward_chain(cfg, seq_len) * EPS32 * (scale + 1.0)


def model_logprob_tol(model, seq_len: int, temperature: float = 1.0) -> float:
    """`logprob_tol` of `model`'s log-probs at `temperature` on rows of `seq_len` tokens."""
    scale = logit_scale(model.head_weight(), model.final_norm[...], temperature)
    return logprob_tol(model.config, seq_len, scale)


def flat(tree) -> dict[str, np.ndarray]:
    """{path: float64 host array} of a pytree of arrays (parameters, gradients)."""
    return {jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def params_logprob_tol(cfg, seq_len: int, params: dict[str, np.ndarray]) -> float:
    """`logprob_tol` of the model with these host parameters (`flat`; an untied LM head)."""
    head = next(v for k, v in params.items() if "lm_head" in k)
    norm = next(v for k, v in params.items() if "final_norm" in k and "mtp" not in k)
    return logprob_tol(cfg, seq_len, logit_scale(head, norm))


def assert_same_train_steps(cfg, seq_len: int, positions: int, weight: float, got, want):
    """Two runs of the same RL train steps under SGD with learning rate 1 (the first update is minus the gradient),
    from the same parameters up to an ulp (as a sharded init may differ). `got` / `want`: (metrics of each step,
    host parameters `flat` before the first step and after each); `weight`: sum_t w_t |A_t| over the step's tokens
    (advantages times token weights); `positions`: token positions of the step's batch. The losses, step 1's
    gradient norm and step 1's update agree within float32 bounds (~1e-3 relative for the tiny presets at init)."""
    (got_sums, got_params), (want_sums, want_params) = got, want
    for k, (g, w) in enumerate(zip(got_sums, want_sums, strict=True)):
        assert g["tokens"] == w["tokens"]
        masked = abs(g["icepop_masked_frac"] - w["icepop_masked_frac"]) * w["tokens"]
        assert masked < 0.5, "IcePop masked different tokens"  # a fraction of tokens: the same count
        # loss = -sum_t w_t A_t r_t (r: ratio x IcePop weight, 1 or 0, the same tokens masked in both runs): each
        # r is exp(logp - logp_old), 1 within one log-prob tolerance in each run, and the token terms sum in
        # another order (tokens x eps32). The parameters the step starts from differ (by step 1's update
        # difference, or an ulp of the init) by |dp|, which moves the loss by <= |grad| |dp| (Cauchy-Schwarz; the
        # curvature term is of order |dp|^2 ~ 1e-12).
        dp = np.sqrt(sum(np.sum((got_params[k][p] - x) ** 2) for p, x in want_params[k].items()))
        tol = (2 * params_logprob_tol(cfg, seq_len, want_params[k]) + w["tokens"] * EPS32) * weight
        tol += w["grad_norm"] * dp
        assert abs(g["loss"] - w["loss"]) <= tol, f"step {k + 1}: loss {g['loss']} vs {w['loss']} (tol {tol:.3g})"
    # gradients: the chain (`grad_chain`), and the ratio multiplying each token's gradient: 1 within one log-prob
    # tolerance in each run
    grad_rel = grad_chain(cfg, seq_len, positions) * EPS32 + 2 * params_logprob_tol(cfg, seq_len, want_params[0])
    # the norm: off by at most the norm of the gradient difference (<= grad_rel relative) plus its own sum of
    # squares, as many positive terms as the largest parameter, at eps32 each
    norm_rel = grad_rel + max(x.size for x in want_params[0].values()) * EPS32
    g, w = got_sums[0]["grad_norm"], want_sums[0]["grad_norm"]
    assert abs(g - w) <= norm_rel * w, f"gradient norm {g} vs {w} (tol {norm_rel * w:.3g})"
    for path, p0 in want_params[0].items():
        update, want_update = got_params[1][path] - got_params[0][path], want_params[1][path] - p0
        # the new parameters are rounded once in each run (eps32 / 2 of |param|), hence the second term
        tol = grad_rel * np.abs(want_update).max() + EPS32 * np.abs(want_params[1][path]).max()
        diff = np.abs(update - want_update).max()
        assert diff <= tol, f"{path}: step 1's update differs by {diff:.3g} > {tol:.3g}"


def full_logprobs(model, sequences: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log-softmax(logits / T) [B S V] of the plain forward (no cache, no chunking) of right-padded sequences."""
    logits = model.logits(model(jnp.asarray(sequences, jnp.int32)).hidden)
    return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1))


def assert_greedy(model, prompts, generated, logprobs=None):
    """Greedy continuations `generated[i]` of `prompts[i]`, produced by any path (KV cache, continuous batching,
    sharded), checked teacher-forced against `model`'s full forward (no cache) on prompt + continuation: each token
    is an argmax within two log-prob tolerances (each path within one of the exact value, so a near-tie may go
    either way under another reduction order) and its log-prob, when given, within one."""
    prompts = [np.asarray(p) for p in prompts]
    generated = [np.asarray(g) for g in generated]
    width = max(len(p) + len(g) for p, g in zip(prompts, generated, strict=True))
    seq = np.zeros((len(prompts), width), np.int32)
    for i, (p, g) in enumerate(zip(prompts, generated)):
        seq[i, :len(p) + len(g)] = np.concatenate([p, g])
    logp = full_logprobs(model, seq)  # [B S V]
    tol = model_logprob_tol(model, width)
    for i, (p, g) in enumerate(zip(prompts, generated)):
        at = len(p) - 1 + np.arange(len(g))  # the position whose logits predict generated token t
        dist = logp[i, at]  # [N V]
        chosen = dist[np.arange(len(g)), g]
        gap = dist.max(-1) - chosen if len(g) else np.zeros(0)
        assert np.all(gap <= 2 * tol), f"row {i}: token {np.argmax(gap)} is {gap.max():.3g} below the argmax " \
                                       f"(tolerance {2 * tol:.3g})"
        if logprobs is not None:
            err = np.abs(np.asarray(logprobs[i], np.float64) - chosen)
            assert np.all(err <= tol), f"row {i}: log-probs differ by {err.max():.3g} (tolerance {tol:.3g})"
