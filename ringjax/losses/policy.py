"""The RL policy loss: PPO clipped term x train-inference correction, aggregated, plus optional regularisers.

loss = -agg(w * min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)) + kl_coef * agg(k3(ref, logp))
       - entropy_coef * agg(entropy) + load_balance_coef * aux["load_balance"] + z_loss_coef * aux["z_loss"]
with r = exp(logp - sg(logp_old)), w the stop-gradient correction weight (`correction.CORRECTIONS`) and
agg(x) = sum over valid tokens of the aggregation's token weight * x (`aggregation.AGGREGATIONS`).
The KL and entropy terms cover every valid token (the correction weight only gates the policy-gradient term).
Inputs on padding are replaced by 0 before any arithmetic, so NaN / inf garbage there changes neither the loss
nor the gradient, which is exactly 0 at padding.
Whatever `cfg.correction`, the metrics report what each masking rule WOULD mask (`icepop_masked_frac`,
`kpop_masked_frac`, `seq_masked_frac`), so that every run shows how much the mismatch corrections would act.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ringjax.losses.aggregation import batch_weights, masked_mean, sequence_ids, sequence_sum
from ringjax.losses.config import LossConfig
from ringjax.losses.correction import CORRECTIONS, binary_kl, in_band, kpop_keep, seq_keep, train_inference_ratio
from ringjax.typing import Array, Bool, Float, Int


def ppo_clipped_term(logp: Float[Array, "B S"], logp_old: Float[Array, "B S"], advantages: Float[Array, "B S"],
                     eps_low: float, eps_high: float
                     ) -> tuple[Float[Array, "B S"], Float[Array, "B S"], Bool[Array, "B S"]]:
    """min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), the ratio r, and where the clipped branch is the min."""
    ratio = jnp.exp(logp - jax.lax.stop_gradient(logp_old))  # [B S]
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    return jnp.minimum(unclipped, clipped), ratio, clipped < unclipped


def k3(log_ratio: Float[Array, "..."]) -> Float[Array, "..."]:
    """Schulman's k3 estimator exp(x) - x - 1 of KL(q || p), x = log p - log q for a token sampled from q."""
    return jnp.exp(log_ratio) - log_ratio - 1.0


def policy_loss(logp: Float[Array, "B S"], logp_old: Float[Array, "B S"], logp_infer: Float[Array, "B S"],
                advantages: Float[Array, "B S"], mask: Bool[Array, "B S"] | Float[Array, "B S"], cfg: LossConfig, *,
                phi: float | None = None, logp_ref: Float[Array, "B S"] | None = None,
                entropy: Float[Array, "B S"] | None = None, aux: Mapping[str, Float[Array, ""]] | None = None,
                segment_ids: Int[Array, "B S"] | None = None, token_weights: Float[Array, "B S"] | None = None
                ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """Scalar loss to minimise and float32 scalar metrics.

    logp: log-probs under the weights being optimised (the only input gradients flow through, with `entropy`).
    logp_old / logp_infer: trainer pre-update / rollout-engine log-probs of the same tokens (stop-gradient).
    advantages: per token, e.g. `token_advantages(grpo_advantages(...)[...], mask)`.
    phi: the step's C3PO token budget, needed by `cfg.aggregation == "c3po"` without `token_weights`.
    aux: router statistics {"load_balance", "z_loss"}, needed when their coefficient is > 0.
    segment_ids: sequence id within each row for packed rows (see `aggregation`); None = one sequence per row.
    token_weights: the aggregation's per-token weights; None: `cfg.aggregation`'s weights with this batch as the
      whole step (`batch_weights`). The trainer passes those of the WHOLE step (`ringjax.trainer.batch.step_weights`)
      so that micro-batch losses add up exactly to the step's loss whatever the aggregation.

    Mismatch metrics, whatever `cfg.correction` (fractions are of this batch's valid tokens):
    `icepop_masked_frac` (k outside [alpha, beta]), `kpop_masked_frac` (binary KL > kpop_bound),
    `seq_masked_frac` (tokens of sequences whose max |log k| > seq_bound), `seq_masked_seqs` / `num_seqs` (number
    of such sequences / of sequences with valid tokens: additive over micro-batches), `binary_kl_max` /
    `binary_kl_mean` (of max(KL(p||q), KL(q||p)) over valid tokens), `correction_zero_frac` (weight 0 in this mode).
    """
    valid = mask.astype(bool)

    def clean(x):
        return jnp.where(valid, x.astype(jnp.float32), 0.0)

    logp, adv = clean(logp), clean(advantages)
    logp_old, logp_infer = jax.lax.stop_gradient(clean(logp_old)), jax.lax.stop_gradient(clean(logp_infer))
    seq = sequence_ids(valid, segment_ids)
    if token_weights is None:
        token_weights = batch_weights(valid, seq, cfg.aggregation, phi)
    weights = clean(token_weights)

    def aggregate(x):
        return jnp.sum(jnp.where(valid, x * weights, 0.0))

    k = train_inference_ratio(logp_old, logp_infer)  # [B S]
    weight = CORRECTIONS[cfg.correction](logp_old, logp_infer, valid, seq, cfg)  # [B S]
    term, ratio, is_clipped = ppo_clipped_term(logp, logp_old, adv, cfg.eps_low, cfg.eps_high)
    pg_loss = -aggregate(weight * term)
    loss = pg_loss

    out_of_band = valid & ~in_band(k, cfg.alpha, cfg.beta)
    diff = jnp.abs(logp_old - logp_infer)  # 0 on padding
    kl_bin = jnp.where(valid, binary_kl(logp_old, logp_infer), 0.0)  # [B S]
    kpop_out = valid & ~kpop_keep(logp_old, logp_infer, cfg.kpop_bound)
    has_tokens = sequence_sum(valid.astype(jnp.float32), seq) > 0  # [Q]
    seq_out = has_tokens & ~seq_keep(logp_old, logp_infer, valid, seq, cfg.seq_bound)  # [Q]
    metrics = {
        "pg_loss": pg_loss,
        "icepop_masked_frac": masked_mean(out_of_band.astype(jnp.float32), valid),
        "kpop_masked_frac": masked_mean(kpop_out.astype(jnp.float32), valid),
        "seq_masked_frac": masked_mean(seq_out[seq].astype(jnp.float32), valid),
        "seq_masked_seqs": jnp.sum(seq_out).astype(jnp.float32),
        "num_seqs": jnp.sum(has_tokens).astype(jnp.float32),
        "binary_kl_max": jnp.max(kl_bin),
        "binary_kl_mean": masked_mean(kl_bin, valid),
        "correction_zero_frac": masked_mean((weight == 0).astype(jnp.float32), valid),
        "logp_diff_mean": masked_mean(diff, valid),
        "logp_diff_max": jnp.max(diff),
        "kl_infer_train": masked_mean(k3(logp_old - logp_infer), valid),  # KL(pi_infer || pi_old), sampled from infer
        "clip_frac": masked_mean(is_clipped.astype(jnp.float32), valid),
        "ratio_mean": masked_mean(ratio, valid),
        "logp_mean": masked_mean(logp, valid),
        "valid_tokens": jnp.sum(valid).astype(jnp.float32),
    }

    if logp_ref is not None:
        kl_ref = aggregate(k3(jax.lax.stop_gradient(clean(logp_ref)) - logp))  # KL(pi || pi_ref)
        loss = loss + cfg.kl_coef * kl_ref
        metrics["kl_ref"] = kl_ref
    elif cfg.kl_coef > 0:
        raise ValueError(f"loss.kl_coef={cfg.kl_coef} > 0 needs logp_ref")

    if entropy is not None:
        entropy = clean(entropy)
        loss = loss - cfg.entropy_coef * aggregate(entropy)
        metrics["entropy_mean"] = masked_mean(entropy, valid)
        metrics["entropy_masked_mean"] = masked_mean(entropy, out_of_band)  # tokens IcePop masks; 0 if none
    elif cfg.entropy_coef > 0:
        raise ValueError(f"loss.entropy_coef={cfg.entropy_coef} > 0 needs entropy")

    for name, coef in (("load_balance", cfg.load_balance_coef), ("z_loss", cfg.z_loss_coef)):
        if aux is not None and name in aux:
            value = jnp.asarray(aux[name], jnp.float32)
            loss = loss + coef * value
            metrics[f"router_{name}"] = value
        elif coef > 0:
            raise ValueError(f"loss.{name}_coef={coef} > 0 needs aux[{name!r}]")

    metrics["loss"] = loss
    return loss, metrics
