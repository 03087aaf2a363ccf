"""Parity with an implementation nobody here wrote: SGLang 0.5.23's own Bailing model code, run on the CPU.

Tiny random Ling 1.0 and Ling 2.0 models are exported with `ringjax.save_pretrained`, loaded by
`sglang.Engine(device="cpu", dtype="float32")` (see sglang_support/runner.py), and both score the same token
sequences. Per-token log-probs must agree within TOL, fixed up front for fp32 on both sides.

SGLang 0.5.23's CPU MoE path never applies `routed_scaling_factor` (its CUDA runner does; see
sglang_support/_engine_main.py). So Ling 2.0 is checked twice: with scaling factor 1.0 against unmodified SGLang,
and with the preset's 2.5 against SGLang with the one-line CPU fix, and the test also shows that unmodified
SGLang disagrees there, so the fix stays needed and stays small.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringjax
from helpers import random_model
from sglang_support.runner import sglang_available, sglang_token_logprobs, sglang_version

pytestmark = pytest.mark.sglang

TOL = 1e-4  # max |log p_ringjax - log p_sglang| per token, fp32
LENGTHS = (150, 64, 37, 12, 2)  # 150 > YaRN's original_max_position_embeddings (128) of tiny-v2


@pytest.fixture(scope="module", autouse=True)
def _require_sglang():
    if not sglang_available():
        pytest.fail("SGLang is not installed: run scripts/install_sglang_cpu.sh (the README's test command does)")
    assert sglang_version() == "0.5.23", sglang_version()


def _sequences(vocab, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in LENGTHS]


def _ringjax_logprobs(model, sequences):
    """log p of tokens 1..n-1 per sequence, one right-padded batch (padding sits after every scored token)."""
    width = max(map(len, sequences))
    tokens = np.zeros((len(sequences), width), np.int32)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = s
    logp, _ = jax.jit(lambda t: model.token_logprobs(t))(jnp.asarray(tokens))
    logp = np.asarray(logp, np.float64)
    return [logp[i, :len(s) - 1] for i, s in enumerate(sequences)]


def _export(cfg, path, seed, mtp="drop"):
    model = random_model(cfg, seed=seed)
    ringjax.save_pretrained(model, str(path), max_shard_size="200KB", mtp=mtp)
    return model


def _max_diff(got, want):
    assert [len(g) for g in got] == [len(w) for w in want]
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want))


def test_ling_v1_matches_sglang(tmp_path):
    """Ling 1.0: softmax top-k, two shared experts, a first dense layer, norm_head."""
    cfg = ringjax.preset("tiny-v1")
    assert cfg.norm_head and cfg.num_shared_experts == 2 and cfg.first_k_dense_replace == 1
    model = _export(cfg, tmp_path / "v1", seed=1)
    config = json.load(open(tmp_path / "v1" / "config.json"))
    assert config["architectures"] == ["BailingMoeForCausalLM"] and os.path.exists(
        tmp_path / "v1" / "configuration_bailing_moe.py")
    seqs = _sequences(cfg.vocab_size, seed=11)
    want = _ringjax_logprobs(model, seqs)
    got = sglang_token_logprobs(str(tmp_path / "v1"), seqs, fix_cpu_routed_scaling=False)
    assert _max_diff(got, want) < TOL
    # the comparison is sharp: log-probs spread well beyond TOL, so a wrong layer could not hide
    assert np.concatenate(want).std() > 0.3


def test_ling_v2_unit_scaling_matches_unmodified_sglang(tmp_path):
    """Ling 2.0 with routed_scaling_factor 1.0: SGLang's CPU path needs no fix at all. Exported with mtp="keep":
    SGLang's main model skips the MTP layer's tensors."""
    cfg = ringjax.preset("tiny-v2", routed_scaling_factor=1.0)
    model = _export(cfg, tmp_path / "v2", seed=2, mtp="keep")
    assert json.load(open(tmp_path / "v2" / "config.json"))["num_nextn_predict_layers"] == 1
    seqs = _sequences(cfg.vocab_size, seed=12)
    want = _ringjax_logprobs(model, seqs)
    got = sglang_token_logprobs(str(tmp_path / "v2"), seqs, fix_cpu_routed_scaling=False)
    assert _max_diff(got, want) < TOL


def test_ling_v2_matches_sglang(tmp_path):
    """Ling 2.0 as the preset has it: sigmoid + expert bias, group-limited top-k, x2.5, QK-norm, partial RoPE with
    YaRN, a first dense layer, one MTP layer in the model, which the default export leaves out."""
    cfg = ringjax.preset("tiny-v2")
    assert cfg.routed_scaling_factor == 2.5 and cfg.n_group > cfg.topk_group and cfg.use_expert_bias
    assert cfg.rope_scaling is not None and cfg.num_nextn_predict_layers == 1 and cfg.partial_rotary_factor < 1
    model = _export(cfg, tmp_path / "v2", seed=3)
    assert json.load(open(tmp_path / "v2" / "config.json"))["num_nextn_predict_layers"] == 0
    seqs = _sequences(cfg.vocab_size, seed=13)
    want = _ringjax_logprobs(model, seqs)
    got = sglang_token_logprobs(str(tmp_path / "v2"), seqs, fix_cpu_routed_scaling=True)
    assert _max_diff(got, want) < TOL
    unfixed = sglang_token_logprobs(str(tmp_path / "v2"), seqs, fix_cpu_routed_scaling=False)
    assert _max_diff(unfixed, want) > 100 * TOL, "SGLang's CPU path now applies routed_scaling_factor: drop the fix"
