"""The CPU dropout of model.py (cpu_dropout_keep, dropout, cpu_attention_with_dropout) is exact dropout: each element
is zeroed with probability p, the survivors are scaled by 1 / (1 - p), the draws come from torch's global
generator (so a checkpoint's rng_state resumes them), and the gradients are those of the same masked function."""

import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, cpu_attention_with_dropout, cpu_dropout_keep, dropout


@pytest.mark.parametrize('p', [0.1, 0.2, 0.5, 0.9])
def test_each_element_is_dropped_with_probability_p(p):
    torch.manual_seed(0)
    n = 1_000_001  # odd: the last 32-bit number is half of a 64-bit word
    keep = cpu_dropout_keep((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    sigma = math.sqrt(p * (1 - p) / (n // 2))
    # both halves of each 64-bit word, and the start and end of the tensor, are fair
    for part in (keep[0::2], keep[1::2], keep[:n // 2], keep[n // 2:]):
        assert abs((~part).float().mean().item() - p) < 5 * sigma
    # neighbours are independent: P(both kept) = (1 - p)^2
    both = (keep[:-1] & keep[1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)


def test_masks_come_from_the_global_generator():
    torch.manual_seed(1)
    a = cpu_dropout_keep((64, 65), 0.3)
    state = torch.get_rng_state()
    b = cpu_dropout_keep((64, 65), 0.3)
    torch.set_rng_state(state)  # what a resumed run does with its checkpoint's rng_state
    assert torch.equal(cpu_dropout_keep((64, 65), 0.3), b)
    assert not torch.equal(a, b)  # the generator moved on
    torch.manual_seed(1)
    assert torch.equal(cpu_dropout_keep((64, 65), 0.3), a)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_dropout_zeroes_and_scales_and_its_gradient_is_the_mask(dtype):
    p = 0.2
    x = torch.randn(256, 384).to(dtype).requires_grad_()
    torch.manual_seed(2)
    y = dropout(x, p, training=True)
    torch.manual_seed(2)
    keep = cpu_dropout_keep(x.shape, p)
    scale = torch.tensor(1 / (1 - p), dtype=dtype)  # as F.dropout, the scale is rounded to the dtype
    assert y.dtype == dtype and torch.equal(y, torch.where(keep, x.detach() * scale, 0))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.where(keep, scale, 0))
    assert torch.equal(dropout(x, p, training=False), x)  # the identity in evaluation


def reference_attention(q, k, v, keep, p):
    """nanoGPT's attention in float64 with the given dropout mask on the probabilities."""
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float('-inf')).softmax(dim=-1)
    return (att * keep / (1 - p)) @ v


def test_attention_with_dropout_equals_masked_attention_and_its_gradients():
    p = 0.2
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    torch.manual_seed(4)
    y = cpu_attention_with_dropout(q, k, v, p)
    torch.manual_seed(4)
    keep = cpu_dropout_keep((2, 3, 16, 16), p)
    ref = reference_attention(q64, k64, v64, keep, p)
    assert torch.allclose(y.double(), ref, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g.double())
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert torch.allclose(got.double(), want, atol=1e-5)


def test_attention_with_dropout_serves_grouped_query_heads():
    torch.manual_seed(5)
    q = torch.randn(2, 4, 8, 8)
    k, v = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    torch.manual_seed(6)
    y = cpu_attention_with_dropout(q, k, v, 0.3)
    torch.manual_seed(6)
    y_repeated = cpu_attention_with_dropout(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), 0.3)
    assert torch.equal(y, y_repeated)


def test_without_dropout_attention_is_sdpa():
    """p -> 0 keeps everything: the same function as F.scaled_dot_product_attention."""
    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    y = cpu_attention_with_dropout(q, k, v, 1e-12)
    assert torch.allclose(y, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)


def test_bf16_training_forward_uses_the_same_masks_as_fp32():
    """Autocast changes the arithmetic, not the draws: with one seed, bf16 and fp32 see the same dropout."""
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=37, dropout=0.2))
    model.train()
    idx = torch.randint(0, 37, (4, 16))
    torch.manual_seed(8)
    _, loss32 = model(idx, idx)
    after32 = torch.get_rng_state()
    torch.manual_seed(8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, loss16 = model(idx, idx)
    assert torch.equal(torch.get_rng_state(), after32)
    assert abs(loss16.item() - loss32.item()) < 0.02 * loss32.item()
    torch.manual_seed(9)
    _, other = model(idx, idx)
    assert abs(other.item() - loss32.item()) > 1e-4  # another seed, other masks
