"""The embedded demo behind `ringjax demo` (the README's first command until `ringjax train` lands).

Builds a tiny Ling 2.0 model sharded over every local device, scores a batch with the chunked
log-prob path, samples continuations with the KV-cache generator, exports the model to a Hugging Face
folder, reloads it sharded and checks the reloaded model gives bit-identical log-probs.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringjax.generate import generate
from ringjax.hf import from_pretrained, save_pretrained
from ringjax.model import create_model, preset
from ringjax.sharding import make_mesh


def _logprobs(model, tokens):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, tokens):
        return nnx.merge(graphdef, state).token_logprobs(tokens)[0]

    return run(state, tokens)


def run_demo(out_dir: str, preset_name: str = "tiny-v2", batch: int = 8, prompt_len: int = 16, new_tokens: int = 32,
             seed: int = 0) -> dict:
    t0 = time.perf_counter()
    cfg = preset(preset_name)
    n = jax.device_count()
    expert = math.gcd(n, cfg.num_experts)  # experts over as many devices as divide them, the rest FSDP
    mesh = make_mesh(fsdp=n // expert, expert=expert)
    rng = np.random.default_rng(seed)
    prompts = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    with jax.set_mesh(mesh):
        model = create_model(cfg, mesh, seed=seed)
        logp = _logprobs(model, prompts)
        gen = generate(model, prompts, jnp.full((batch,), prompt_len, jnp.int32), new_tokens,
                       rng=jax.random.key(seed), temperature=1.0)
    export = save_pretrained(model, os.path.join(out_dir, "hf_export"), overwrite=True)
    with jax.set_mesh(mesh):
        reloaded = from_pretrained(export, mesh)
        same = bool(jnp.array_equal(logp, _logprobs(reloaded, prompts)))
    summary = {
        "preset": preset_name, "devices": n, "mesh": dict(mesh.shape),
        "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model)))),
        "prompt_mean_logprob": round(float(jnp.mean(logp)), 4),
        "generated_tokens": int(jnp.sum(gen.lengths)),
        "generated_mean_logprob": round(float(jnp.mean(gen.logprobs)), 4),
        "export": export, "export_reload_bit_exact": same, "seconds": round(time.perf_counter() - t0, 2),
    }
    if not same:
        raise RuntimeError(f"reloaded export gives different log-probs: {json.dumps(summary)}")
    return summary
