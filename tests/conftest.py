"""Every test sees 8 simulated CPU devices, so all mesh and sharding paths run without accelerators."""

import gc
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drops JAX's compiled executables after each test module. Every XLA:CPU executable keeps memory mappings
    for its code, and a single process running the whole suite would otherwise pass the kernel's limit on
    mappings per process (vm.max_map_count, 65530 by default), where the next mmap fails and the process crashes."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope="session")
def _compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache, shared by the suite's processes for this session: many tests build the
    same tiny models and train steps, and a later build loads the executable instead of compiling it again."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla_cache"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    yield
