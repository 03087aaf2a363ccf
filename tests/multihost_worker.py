"""One process of a multi-host training run on CPU (started by tests/test_multihost.py; not a test module).

    RINGJAX_COORDINATOR=localhost:PORT RINGJAX_NUM_PROCESSES=2 RINGJAX_PROCESS_ID=0 \
        python tests/multihost_worker.py OUT.npz --local-devices 2

Without the RINGJAX_* variables it is a single-process run on `--local-devices` devices: the reference. Either way
it builds a (data 1, fsdp 2, expert 2, tensor 1) mesh over all global devices, creates the tiny-v2 model sharded,
takes two train steps (SGD with momentum, learning rate 1: the first update is minus the gradient, as in
tests/test_train_step.py) on a deterministic batch (every process holds the same host batch) and writes the
parameters before and after each step, gathered to the host, each step's metrics, and process and device counts
to OUT.npz. Cross-process collectives on CPU
go through gloo over TCP, JAX's default `jax_cpu_collectives_implementation` once `jax.distributed` is initialised.
"""

from __future__ import annotations

import argparse
import os
import re


def _set_device_count(n: int) -> None:
    """Forces `n` host devices, replacing any inherited count (pytest's conftest exports 8); before jax starts."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def _batch(phi: int, rows: int, seed: int = 0):
    """The deterministic step batch of tests/test_train_step.py: 12 random responses, phi-token budget."""
    import numpy as np

    from ringjax.trainer import Response, assemble_step, pack_micro_batches
    from ringjax.trainer.batch import stack_micro_batches

    rng = np.random.default_rng(seed)
    responses = []
    for i in range(12):
        m = int(rng.integers(3, 12))
        responses.append(Response(prompt_id=i, prompt=rng.integers(1, 500, 5), tokens=rng.integers(1, 500, m),
                                  logp_infer=-6.2 + 0.3 * rng.normal(size=m), reward=0.0,
                                  advantage=float(rng.normal())))
    step, _ = assemble_step(responses, phi)
    return stack_micro_batches(pack_micro_batches(step, rows, 24), "c3po", step.phi)


def _host_params(params) -> dict[str, object]:
    """{"path": numpy array}: every process gets the full global value of each (sharded) parameter."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    leaves = jax.tree_util.tree_leaves_with_path(params)
    values = multihost_utils.process_allgather([x for _, x in leaves], tiled=True)
    return {jax.tree_util.keystr(path): np.asarray(v) for (path, _), v in zip(leaves, values, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output .npz path")
    parser.add_argument("--local-devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    _set_device_count(args.local_devices)

    import jax
    import numpy as np
    import optax

    import ringjax
    from ringjax.losses import LossConfig
    from ringjax.trainer.state import abstract_train_state, init_train_state
    from ringjax.trainer.step import finalize_metrics, make_train_step, rl_loss_fn

    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    ringjax.initialize_distributed()  # RINGJAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID; no-op when unset

    phi = 64
    mesh = ringjax.make_mesh(data=1, fsdp=2, expert=2, tensor=1)  # over jax.devices(): every process's devices
    cfg = ringjax.preset("tiny-v2")
    tx = optax.sgd(1.0, momentum=0.9)
    graphdef, state = init_train_state(ringjax.create_model(cfg, mesh, seed=0), tx, 0, mesh)
    init = _host_params(state.params)  # before the first step donates the state
    step = make_train_step(graphdef, tx, rl_loss_fn(LossConfig()),
                           state_shardings=abstract_train_state(cfg, tx, mesh)[1])
    host_batch = _batch(phi, rows=8)
    metrics, params = [], [init]
    for _ in range(args.steps):
        with jax.set_mesh(mesh):
            state, sums = step(state, step.inputs(host_batch, mesh))
        metrics.append(finalize_metrics(jax.device_get(sums)))
        params.append(_host_params(state.params))
    keys = ("loss", "grad_norm", "tokens", "icepop_masked_frac")

    np.savez(args.out, process_index=jax.process_index(), process_count=jax.process_count(),
             local_devices=jax.local_device_count(), global_devices=jax.device_count(),
             mesh_processes=sorted({d.process_index for d in mesh.devices.flat}), step=int(state.step),
             **{k: np.asarray([m[k] for m in metrics]) for k in keys},
             loss_weight=float(np.sum(host_batch["token_weights"] * np.abs(host_batch["advantages"]))),
             positions=host_batch["tokens"].size, seq_len=host_batch["tokens"].shape[-1],
             **{f"params{i}{k}": v for i, p in enumerate(params) for k, v in p.items()})
    if jax.process_count() > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
