"""ringjax: reinforcement learning of Ling / Ring MoE reasoning models in JAX."""

from ringjax.model import (V1, V2, ComputeConfig, Ling, LingConfig, RopeScaling, abstract_model, create_model,
                           init_cache, preset)
from ringjax.sharding import initialize_distributed, make_mesh

__all__ = ["V1", "V2", "ComputeConfig", "Ling", "LingConfig", "RopeScaling", "abstract_model", "create_model",
           "init_cache", "initialize_distributed", "make_mesh", "preset"]
__version__ = "0.1.0"
