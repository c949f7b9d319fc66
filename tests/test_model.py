import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import settings_by_parameter
from model import GPT, GPTConfig, KVCache, sample_next

TINY = dict(block_size=16, vocab_size=37, n_layer=2, n_head=4, n_embd=32)
VARIANTS = {
    'gpt2': {},
    'rope': dict(pos_emb='rope'),
    'gqa': dict(n_kv_head=2),
    'mqa-rope': dict(n_kv_head=1, pos_emb='rope'),
    'llama': dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', n_kv_head=2, bias=False, tie_embeddings=False, d_ff=48),
    'qwen3': dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', n_kv_head=2, bias=False, qk_norm=True, head_size=6,
                  qkv_bias=True, rope_scaling=(8.0, 1.0, 4.0, 8)),  # and Qwen2's q/k/v biases, Llama 3's rope
}


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **kw})).eval()


def test_shapes():
    model = tiny_model()
    idx = torch.randint(0, 37, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 37) and loss.shape == ()
    assert abs(loss.item() - math.log(37)) < 0.5  # an untrained model is close to uniform
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 37) and loss is None  # inference: last position only


def test_sequence_longer_than_context_is_an_error():
    with pytest.raises(ValueError, match='block_size'):
        tiny_model()(torch.zeros(1, 17, dtype=torch.long))


def test_gpt2_non_embedding_count_and_defaults():
    with torch.device('meta'):
        model = GPT(GPTConfig(vocab_size=50257))
    assert model.get_num_params() == 123_653_376  # GPT-2's 124,439,808 less wpe's 1024 x 768: nanoGPT's "123.65M"
    cfg = GPTConfig()
    assert (cfg.block_size, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout, cfg.bias) == \
        (1024, 50304, 12, 12, 768, 0.0, True)
    assert (cfg.d_ff, cfg.n_kv_head) == (3072, 12)


@pytest.mark.parametrize('kwargs, words', [
    (dict(n_embd=100, n_head=12), ['n_embd=100', 'n_head=12']),
    (dict(n_head=12, n_kv_head=5), ['n_kv_head=5', '[1, 2, 3, 4, 6, 12]']),
    (dict(n_embd=36, n_head=4, pos_emb='rope'), ['even head size', '9']),
    (dict(n_layer=0), ['n_layer=0', 'positive']),
    (dict(head_size=0), ['head_size=0', 'positive']),
    (dict(rope_scaling=(8.0, 4.0, 1.0, 8192)), ['rope_scaling=', 'low below high']),
    (dict(norm_eps=0.0), ['norm_eps=0.0', 'positive']),
    (dict(n_embd=-8), ['n_embd=-8', 'positive']),
    (dict(d_ff=0), ['d_ff=0']),
    (dict(block_size=0), ['block_size=0']),
    (dict(dropout=1.0), ['dropout=1.0', '[0, 1)']),
    (dict(dropout=-0.1), ['dropout=-0.1']),
    (dict(norm='batchnorm'), ["norm='batchnorm'", "'rmsnorm'"]),
    (dict(pos_emb='alibi'), ["pos_emb='alibi'", "'rope'"]),
    (dict(mlp='relu'), ["mlp='relu'", "'swiglu'"]),
    (dict(n_layer='2'), ["n_layer='2'", 'int']),
    (dict(bias='yes'), ["bias='yes'", 'bool']),
    (dict(rope_theta=0.0), ['rope_theta=0.0']),
])
def test_validation_errors_name_the_field_value_and_fix(kwargs, words):
    with pytest.raises(ValueError) as e:
        GPTConfig(**kwargs)
    for word in words:
        assert word in str(e.value)


def test_validation_lists_every_problem_at_once():
    with pytest.raises(ValueError) as e:
        GPTConfig(n_layer=0, dropout=2.0, mlp='relu')
    assert 'n_layer=0' in str(e.value) and 'dropout=2.0' in str(e.value) and "mlp='relu'" in str(e.value)


def test_meta_device_builds_7b_without_memory():
    with torch.device('meta'):
        model = GPT(GPTConfig(n_layer=32, n_head=32, n_embd=4096, vocab_size=32000, d_ff=11008, block_size=4096,
                              mlp='swiglu', norm='rmsnorm', pos_emb='rope', bias=False, tie_embeddings=False))
    assert all(p.device.type == 'meta' for p in model.parameters())


def test_init_follows_gpt2():
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=1000, block_size=64))
    assert model.transformer.wte.weight is model.lm_head.weight  # tied
    assert abs(model.transformer.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.002
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert abs(model.transformer.h[3].mlp.c_proj.weight.std().item() - residual_std) < 0.1 * residual_std
    assert abs(model.transformer.h[3].attn.c_proj.weight.std().item() - residual_std) < 0.1 * residual_std
    assert model.transformer.h[0].attn.c_attn.bias.abs().sum() == 0
    untied = GPT(GPTConfig(**TINY, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_rope_and_untied_counts():
    rope = GPT(GPTConfig(**TINY, pos_emb='rope'))
    learned = GPT(GPTConfig(**TINY))
    assert rope.transformer.wpe is None
    assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in rope.parameters()) == 16 * 32
    untied = GPT(GPTConfig(**TINY, tie_embeddings=False))
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in learned.parameters()) == 37 * 32


def manual_attention(attn, x):
    """Plain attention with the key/value heads repeated for each query group: an independent reference."""
    B, T, C = x.shape
    hs, nh, nkv = attn.head_size, attn.n_head, attn.n_kv_head
    q, k, v = attn.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
    q = q.view(B, T, nh, hs).transpose(1, 2)
    k = k.view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    v = v.view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
    att = att.masked_fill(torch.ones(T, T).tril() == 0, float('-inf')).softmax(dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


@pytest.mark.parametrize('n_kv_head', [4, 2, 1])
def test_grouped_query_attention_matches_repeated_heads(n_kv_head):
    model = tiny_model(n_kv_head=n_kv_head)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(attn(x), manual_attention(attn, x), rtol=1e-5, atol=1e-6)


def test_rotary_is_relative():
    """Rotary positions: q.k depends only on the distance between positions, not on where they are."""
    model = tiny_model(pos_emb='rope')
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 16, 8)
    rq = model.rotary(q, 0)
    dots = (rq[0, 0, 5] @ rq[0, 0, 2], rq[0, 0, 12] @ rq[0, 0, 9])
    assert torch.allclose(*dots, atol=1e-5)
    assert torch.allclose(model.rotary(q[:, :, :13], 3)[0, 0, 0], rq[0, 0, 3])


def greedy_recompute(model, idx, n):
    """The test oracle: recompute the whole sequence for every new token, no cache."""
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


@pytest.mark.parametrize('variant', VARIANTS)
def test_kv_cache_generation_equals_recomputation(variant):
    model = tiny_model(**VARIANTS[variant])
    prompt = torch.randint(0, 37, (3, 4))
    cached = model.generate(prompt, 12, temperature=0)  # 16 tokens in all = block_size
    assert torch.equal(cached, greedy_recompute(model, prompt, 12))


@pytest.mark.parametrize('variant', VARIANTS)
def test_kv_cache_logits_match_full_forward(variant):
    """Prefill in two chunks, then one token at a time: every position's logits equal the full forward's."""
    model = tiny_model(**VARIANTS[variant])
    idx = torch.randint(0, 37, (2, 16))
    full = model.lm_head(model.transformer.ln_f(run_blocks(model, idx)))
    cache = KVCache(model.config, 2, 16, 'cpu', torch.float32)
    pieces = [idx[:, :5], idx[:, 5:11]] + [idx[:, t:t + 1] for t in range(11, 16)]
    outs = [model.lm_head(model.transformer.ln_f(run_blocks(model, p, cache))) for p in pieces]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-4, atol=1e-5)


def run_blocks(model, idx, cache=None):
    start = cache.pos if cache is not None else 0
    x = model.transformer.wte(idx)
    if model.transformer.wpe is not None:
        x = x + model.transformer.wpe(torch.arange(start, start + idx.size(1)))
    for block in model.transformer.h:
        x = block(x, cache)
    if cache is not None:
        cache.pos += idx.size(1)
    return x


def greedy_windowed_recompute(model, idx, n):
    """Oracle for generation past block_size, by recomputation: the documented strategy keeps a window that
    starts where the last (re-)prefill started; when a new token would make it longer than block_size it
    restarts with the last block_size // 2 tokens, the new one included."""
    bs = model.config.block_size
    start = max(0, idx.size(1) - bs)
    for _ in range(n):
        if idx.size(1) - start > bs:
            start = idx.size(1) - bs // 2
        logits, _ = model(idx[:, start:])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


@pytest.mark.parametrize('variant', ['gpt2', 'llama'])
@pytest.mark.parametrize('prompt_len', [3, 16, 20])
def test_generation_past_block_size_crops_and_reprefills(variant, prompt_len):
    model = tiny_model(**VARIANTS[variant])
    prompt = torch.randint(0, 37, (2, prompt_len))
    out = model.generate(prompt, 40, temperature=0)
    assert out.shape == (2, prompt_len + 40)
    assert torch.equal(out, greedy_windowed_recompute(model, prompt, 40))


def test_generate_streams_and_restores_training_mode():
    model = tiny_model()
    model.train()
    seen = []
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 5, temperature=0, on_token=seen.append)
    assert model.training
    assert torch.equal(torch.cat(seen, dim=1), out[:, 1:])


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert sample_next(logits, temperature=0).item() == 1
    torch.manual_seed(0)
    assert all(sample_next(logits, top_k=1).item() == 1 for _ in range(20))
    assert all(sample_next(logits, top_p=0.01).item() == 1 for _ in range(20))
    picks = {sample_next(logits, top_k=2).item() for _ in range(200)}
    assert picks == {1, 3}
    # top_p keeps the smallest set whose mass reaches p: tokens 1 and 3 hold ~0.91 of it
    picks = {sample_next(logits, top_p=0.85).item() for _ in range(300)}
    assert picks == {1, 3}
    samples = sample_next(logits.expand(4000, 4)).flatten()
    freq = torch.bincount(samples, minlength=4).float() / 4000
    assert torch.allclose(freq, F.softmax(logits[0], -1), atol=0.03)


class HostSyncs(TorchDispatchMode):
    """Records the operations that make the host wait for a GPU: reading a value (.item(), nonzero) and boolean-mask
    indexing (which calls nonzero on CUDA). On the CPU they run as usual; recording them shows where a GPU would wait."""
    READS = {'aten._local_scalar_dense', 'aten.nonzero', 'aten.is_nonzero', 'aten.equal', 'aten.item'}

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        masks = name in ('aten.index', 'aten.index_put', 'aten.index_put_') and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if name in self.READS or masks:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('sampling', [dict(temperature=0), dict(temperature=0.8, top_k=5, top_p=0.9)])
def test_generation_never_waits_for_the_device(sampling):
    """Issue 21: no host sync per generated token (prefill, steps and the cache refill past block_size)."""
    model = tiny_model(**VARIANTS['llama'])
    with HostSyncs() as syncs:
        out = model.generate(torch.randint(0, 37, (2, 5)), 30, **sampling)
    assert out.shape == (2, 35) and syncs.found == []


def test_configure_optimizers_decays_matrices_only():
    model = tiny_model(**VARIANTS['llama'])
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay = settings_by_parameter(model, opt, 'weight_decay')
    assert {p.dim() for p in model.parameters()} == {1, 2}
    assert all(decay[name] == ((0.1,) if p.dim() == 2 else (0.0,)) for name, p in model.named_parameters())


def test_flops_and_mfu():
    model = tiny_model()
    n = model.get_num_params()
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 16 * 32
    mfu = model.estimate_mfu(fwdbwd_per_iter=4, dt=0.5, peak_flops=1e9)
    assert mfu == pytest.approx(model.flops_per_token(16) * 16 * 4 / 0.5 / 1e9)


def test_tanh_gelu_equals_f_gelu():
    """The sigmoid form of GPT-2's GELU (model.CPUTanhGELU): value and gradient as F.gelu's, to float32 rounding."""
    from model import gelu
    x = (torch.randn(10_000, dtype=torch.float64) * 4).requires_grad_()
    ref = F.gelu(x, approximate='tanh')
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    x32 = x.detach().float().requires_grad_()
    y = gelu(x32)
    y.sum().backward()
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(x32.grad.double(), ref_grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # no derivative is kept, the value is the same
        assert torch.equal(gelu(x32), y)


def test_dropout_only_in_training_mode():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, 37, (2, 16))
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx, idx)[0], model(idx, idx)[0])
