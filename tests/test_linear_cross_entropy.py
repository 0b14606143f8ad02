"""The chunked linear cross-entropy is the plain one: same loss, same gradients."""

import pytest
import torch
import torch.nn.functional as F

from hatllm.training.linear_cross_entropy import linear_cross_entropy


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
def test_loss_and_gradients_match_the_plain_cross_entropy(chunk_rows):
    torch.manual_seed(0)
    hidden = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)  # 50 rows: a partial last chunk
    weight = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (50,))
    expected = F.cross_entropy(hidden @ weight.T, targets)
    (3 * expected).backward()  # a scale on the way back must reach both gradients
    expected_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows)
    (3 * loss).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close((hidden.grad, weight.grad), expected_grads)


def test_gradients_flow_through_a_slice_of_a_tied_embedding():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(11, 4, padding_idx=0)
    hidden = embedding(torch.tensor([[1, 2, 3]])).squeeze(0)
    linear_cross_entropy(hidden, embedding.weight[1:], torch.tensor([4, 5, 6])).backward()
    assert embedding.weight.grad[0].abs().sum() == 0 and embedding.weight.grad[1:].abs().sum() > 0
