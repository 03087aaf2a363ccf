"""The Ling (Bailing) MoE family in Flax NNX."""

from ringjax.model.config import V1, V2, ComputeConfig, LingConfig, RopeScaling
from ringjax.model.create import abstract_model, create_model, model_shardings
from ringjax.model.kv_cache import init_cache
from ringjax.model.model import ExpertBias, Ling, ModelOutput
from ringjax.model.params import ParamCount, count_params
from ringjax.model.presets import PRESETS, preset

__all__ = ["V1", "V2", "ComputeConfig", "ExpertBias", "Ling", "LingConfig", "ModelOutput", "PRESETS", "ParamCount",
           "RopeScaling", "abstract_model", "create_model", "count_params", "init_cache", "model_shardings", "preset"]
