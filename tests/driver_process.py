"""One process of a two-process `Driver` exchange (started by tests/test_driver.py; not a test module).

    RINGJAX_COORDINATOR=localhost:PORT RINGJAX_NUM_PROCESSES=2 RINGJAX_PROCESS_ID=K python tests/driver_process.py OUT

Joins the `jax.distributed` run without starting JAX's backends, then through one `Driver`: shares a 5 MB result
(more than two key-value pieces), shares a failure of the leader's function, and (in a second Driver with a 2 s
deadline) waits for a message the leader never sends. Writes what this process saw to OUT.json.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    out = sys.argv[1]
    import numpy as np

    from ringjax.sharding import initialize_distributed, process_layout
    from ringjax.trainer.driver import Driver, LeaderFailed

    initialize_distributed()
    index, count = process_layout()
    seen = {"index": index, "count": count}
    driver = Driver("test")
    big = driver.share(lambda: np.arange(5 << 20, dtype=np.uint8) * 7)
    seen["big_ok"] = bool(big.shape == (5 << 20,) and np.array_equal(big, np.arange(5 << 20, dtype=np.uint8) * 7))

    def fail():
        raise ValueError("the leader's rollout broke")

    try:
        driver.share(fail)
    except (ValueError, LeaderFailed) as e:
        seen["failure"] = f"{type(e).__name__}: {e}"
    quiet = Driver("quiet", timeout_s=2)
    if quiet.leader:
        time.sleep(4)  # publishes nothing
    else:
        try:
            quiet.follow(None)
        except TimeoutError as e:
            seen["timeout"] = str(e)
    seen["jax_backends_started"] = "jax._src.xla_bridge" in sys.modules and bool(
        sys.modules["jax._src.xla_bridge"]._backends)
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
