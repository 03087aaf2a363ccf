"""One trainer process sending its shards of a model to a rollout worker (started by
tests/test_shards_multiprocess.py; not a test module).

    RINGJAX_COORDINATOR=localhost:PORT RINGJAX_NUM_PROCESSES=2 RINGJAX_PROCESS_ID=0 RAY_ADDRESS=HOST:PORT \\
        python tests/shard_sender.py CKPT_DIR WORKER_NAMES OUT.json

Joins the `jax.distributed` run (2 CPU devices here), creates tiny-v2 sharded over a (fsdp 2, expert 2) mesh that
spans both processes, saves it with Orbax to CKPT_DIR (every process writes its shards), joins the Ray cluster,
finds the workers by their actor names (comma-separated) and sends them this process's parts in bfloat16 buckets of
64 kB (`rollout.shards.send_weights`, version 3). Writes the send statistics, this process's share of the model's bytes
and whether any of its arrays was fully addressable here to OUT.json.
"""

from __future__ import annotations

import json
import os
import re
import sys


def main() -> None:
    ckpt, names, out = sys.argv[1:4]
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ.update(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    import jax
    import ray

    import ringjax
    from ringjax.sharding import initialize_distributed, make_mesh
    from ringjax.trainer.model_checkpoint import save_model
    from rollout.ray_pool import NAMESPACE
    from rollout.shards import send_weights
    from rollout.weights import flat_weights

    initialize_distributed()
    model = ringjax.create_model(ringjax.preset("tiny-v2"), make_mesh(fsdp=2, expert=2), seed=5)
    save_model(model, ckpt)
    weights = flat_weights(model)
    ray.init(address=os.environ["RAY_ADDRESS"], namespace=NAMESPACE, logging_level="warning")
    workers = {name: ray.get_actor(name, namespace=NAMESPACE) for name in names.split(",")}
    stats = send_weights(workers, weights, 3, dtype="bfloat16", bucket_bytes=64 << 10, timeout_s=120)
    share = sum(s.data.nbytes for v in weights.values() for s in v.addressable_shards if s.replica_id == 0)
    whole_here = sum(v.is_fully_addressable for v in weights.values() if v.size > 1024)
    with open(out, "w") as f:
        json.dump({**stats, "process": jax.process_index(), "share_bytes": share, "large_arrays_whole_here":
                   whole_here, "devices": jax.device_count()}, f)
    ray.shutdown()


if __name__ == "__main__":
    main()
