"""Hessian collection: every call of a layer counts; identical inputs share one stored group."""

import torch
from torch import nn

from pgolf.quant.hessian import HessianAccumulator, collect_hessians


class TwiceUsed(nn.Module):
    """An embedding, then one linear applied twice (as depth recurrence does), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.shared = nn.Linear(6, 6, bias=False)
        self.q = nn.Linear(6, 4, bias=False)
        self.k = nn.Linear(6, 4, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x0 = self.emb(idx)
        x1 = self.shared(x0)
        x2 = self.shared(torch.tanh(x1))  # second call, different input
        return self.q(x2) + self.k(x2)  # q and k see the same tensor


def test_layer_used_twice_accumulates_every_call():
    torch.manual_seed(0)
    model = TwiceUsed()
    batches = [torch.randint(0, 11, (2, 5)) for _ in range(3)]
    hs = collect_hessians(model, batches)
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected_qk = torch.zeros(6, 6, dtype=torch.float64)
    with torch.no_grad():
        for b in batches:
            x0 = model.emb(b).reshape(-1, 6)
            x1 = model.shared(x0)
            x2 = model.shared(torch.tanh(x1))
            expected += (x0.T @ x0).double() + (torch.tanh(x1).T @ torch.tanh(x1)).double()
            expected_qk += (x2.T @ x2).double()
    h_shared = hs.for_weight("shared.weight")
    assert torch.allclose(h_shared.double(), expected, rtol=1e-5, atol=1e-6)
    # Only the last call's input would be a different matrix: the test fails on that bug.
    last_only = sum((torch.tanh(model.shared(model.emb(b).reshape(-1, 6))).T @ torch.tanh(model.shared(model.emb(b).reshape(-1, 6)))).double() for b in batches)
    assert not torch.allclose(h_shared.double(), last_only.detach(), rtol=1e-3)
    assert torch.allclose(hs.for_weight("q.weight").double(), expected_qk, rtol=1e-5, atol=1e-6)


def test_identical_inputs_share_one_group_and_distinct_ones_do_not():
    torch.manual_seed(1)
    hs = collect_hessians(TwiceUsed(), [torch.randint(0, 11, (2, 5))])
    assert hs.layers["q.weight"] == hs.layers["k.weight"] == "q.weight"
    assert hs.layers["shared.weight"] == "shared.weight"
    assert sorted(hs.hessians) == ["q.weight", "shared.weight"]
    assert hs.tokens == 10


def test_accumulator_add_batch_equals_sum_of_products():
    x = torch.randn(7, 3)
    acc = HessianAccumulator(3)
    acc.add_batch(x[:4])
    acc.add_batch(x[4:])
    assert acc.rows == 7
    assert torch.allclose(acc.h, (x.T @ x).double(), atol=1e-6)
