"""The `ternary` quantizer (issue 15 item 4; BitNet b1.58 as in the ternary record, PR #640): for a
checkpoint trained with `train.model.block_linear: ternary`, every block matrix (attention q/k/v/
out, MLP fc/proj) is stored exactly as the model computes with it, `pgolf.model.ternary.ternarize`
of its latent weight: trits in {-1, 0, 1} (2-bit symbols on the symmetric grid) and one float16
scale per `train.model.ternary_group` input columns. Which tensors those are comes from the
checkpoint's model config (its block_linear and ternary_group) and the block matrices' names; the
other matrices (embedding, other) take the standard path (see `pgolf.quant.methods`).
"""

from __future__ import annotations

from torch import Tensor

from pgolf.model.ternary import ternarize, ternary_group
from pgolf.quant.rtn import as_fp16_scale
from pgolf.quant.scheme import QuantizedTensor


def ternary_tensor(name: str, group: str, w: Tensor, model_config: dict, dtype: str) -> QuantizedTensor | None:
    """The ternarized block matrix as a QuantizedTensor (scales rounded to float16), or None: not ternary."""
    size = ternary_group(model_config, name)
    if size is None:
        return None
    trits, scales = ternarize(w, size)
    return QuantizedTensor(name, group, 2, trits, as_fp16_scale(scales).half(), dtype, {}, scale_group=size)
