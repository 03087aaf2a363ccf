"""ringjax: reinforcement learning of Ling / Ring MoE reasoning models in JAX."""

from ringjax.hf import from_pretrained, save_pretrained
from ringjax.model import V1, V2, ComputeConfig, Ling, LingConfig, RopeScaling, abstract_model, create_model
from ringjax.model import count_params, init_cache, preset
from ringjax.sharding import initialize_distributed, make_mesh

__all__ = ["V1", "V2", "ComputeConfig", "Ling", "LingConfig", "RopeScaling", "abstract_model", "count_params",
           "create_model", "from_pretrained", "init_cache", "initialize_distributed", "make_mesh", "preset",
           "save_pretrained"]
__version__ = "0.1.0"
