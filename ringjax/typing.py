"""Shape annotations (jaxtyping) and the one legend of dimension letters used across ringjax.

    B batch        S sequence (query)   K key/value length (cache)   H hidden (embed)
    N query heads  G key/value heads    D head_dim                   R rotary_dim
    E experts      X experts per token  F MLP width                  V vocabulary
    L layers       T tokens (flattened B*S)                          M routed rows (T*X)
"""

from jaxtyping import Array, Bool, Float, Int

__all__ = ["Array", "Bool", "Float", "Int"]
