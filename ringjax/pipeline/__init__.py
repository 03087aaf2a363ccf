"""`ringjax train`: the Ring recipe as one command (config, data, stages, evaluation, export)."""

from ringjax.pipeline.config import PipelineConfig, check_inputs, load_pipeline
from ringjax.pipeline.run import accuracy_table, run_pipeline

__all__ = ["PipelineConfig", "accuracy_table", "check_inputs", "load_pipeline", "run_pipeline"]
