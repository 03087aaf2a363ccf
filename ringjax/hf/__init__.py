"""Hugging Face checkpoint I/O for the Ling / Ring families (tensor names: layout.py)."""

from ringjax.hf.config_map import from_hf_config, to_hf_config
from ringjax.hf.load import CheckpointReader, from_pretrained, read_config
from ringjax.hf.save import save_pretrained

__all__ = ["CheckpointReader", "from_hf_config", "from_pretrained", "read_config", "save_pretrained", "to_hf_config"]
