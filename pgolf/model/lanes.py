"""Two parallel residual lanes from a layer on (openai/parameter-golf PR #1530; concept PR #1204).

In a parallel block the attention reads the attention lane A (mixed with x0 as usual) and the MLP
reads the MLP lane M, both from before the block; each lane keeps itself times a learned factor
r_l (init 1.1) and takes both outputs through learned weights p[s, l] (source s: 0 attention,
1 MLP; init 1):
    A' = r_0 A + p[0,0] attn + p[1,0] mlp,    M' = r_1 M + p[0,1] attn + p[1,1] mlp.
The lanes open as copies of the stream; the final norm reads their mean or one of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Lanes = tuple[Tensor, Tensor]  # (attention lane, MLP lane)

RESID_INIT = 1.1


class LaneMix(nn.Module):
    """The learned lane factors of one physical block (shared by all its applications)."""

    def __init__(self) -> None:
        super().__init__()
        self.resid = nn.Parameter(torch.full((2,), RESID_INIT))  # r_l
        self.post = nn.Parameter(torch.ones(2, 2))  # p[s, l]

    def forward(self, lanes: Lanes, attn_out: Tensor, mlp_out: Tensor) -> Lanes:
        r, p = self.resid.to(attn_out.dtype), self.post.to(attn_out.dtype)
        attn_lane = r[0] * lanes[0] + p[0, 0] * attn_out + p[1, 0] * mlp_out
        mlp_lane = r[1] * lanes[1] + p[0, 1] * attn_out + p[1, 1] * mlp_out
        return attn_lane, mlp_lane


FINAL_LANE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean": lambda attn_lane, mlp_lane: 0.5 * (attn_lane + mlp_lane),
    "attn": lambda attn_lane, mlp_lane: attn_lane,
    "mlp": lambda attn_lane, mlp_lane: mlp_lane,
}


def final_lane(lanes: Lanes, how: str) -> Tensor:
    """The stream the final norm reads: `how` names an entry of FINAL_LANE."""
    if how not in FINAL_LANE:
        raise ValueError(f"parallel_final {how!r}: expected one of {sorted(FINAL_LANE)}")
    return FINAL_LANE[how](*lanes)


def lane_start(encoder: list[int], decoder: list[int], parallel_from: int | None) -> int | None:
    """Decoder position where the lanes open (None: never). Every logical layer whose block is
    >= parallel_from must lie in the decoder, as one unbroken run to its end."""
    if parallel_from is None:
        return None
    in_encoder = sorted({layer for layer in encoder if layer >= parallel_from})
    tail = [i for i, layer in enumerate(decoder) if layer >= parallel_from]
    if in_encoder or not tail or tail != list(range(tail[0], len(decoder))):
        raise ValueError(
            f"parallel_from ({parallel_from}): blocks >= it must run only at the end of the decoder half; "
            f"layer order is encoder {encoder}, decoder {decoder}"
        )
    return tail[0]
