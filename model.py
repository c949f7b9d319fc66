"""
The GPT language model, in one file.

Defaults reproduce OpenAI's GPT-2 exactly; modern options are plain GPTConfig fields picked at construction:
  norm='rmsnorm'       RMSNorm instead of LayerNorm               (Zhang & Sennrich 2019)
  pos_emb='rope'       rotary positions instead of a learned table (Su et al. 2021)
  mlp='swiglu'         gated SiLU MLP instead of GELU              (Shazeer 2020)
  n_kv_head < n_head   grouped-query / multi-query attention       (Ainslie et al. 2023)
  tie_embeddings=False a separate lm_head matrix
  qkv_bias, qk_norm    biases on q/k/v only (Qwen2), RMSNorm on each head's q and k (Qwen3); rope_scaling: Llama 3's

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65))
    logits, loss = model(idx, targets)
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=200)

The attention, dropout and GELU at the end of the file are the one place where the device picks a kernel.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

NORMS, POS_EMBS, MLPS = ('layernorm', 'rmsnorm'), ('learned', 'rope'), ('gelu', 'swiglu')


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and norms, as GPT-2; False is a bit faster and often better
    norm: str = 'layernorm'
    pos_emb: str = 'learned'
    norm_eps: float = 1e-5  # GPT-2's; Qwen's RMSNorm uses 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()  # Llama 3's (factor, low_freq_factor, high_freq_factor, original context); () for none
    mlp: str = 'gelu'
    d_ff: int = None  # MLP hidden size; None means 4 * n_embd
    n_kv_head: int = None  # key/value heads; None means n_head (plain multi-head attention)
    head_size: int = None  # None means n_embd // n_head; Qwen3-0.6B has 16 heads of 128 for n_embd 1024
    qkv_bias: bool = False  # biases on the q, k, v projections even when bias=False (Qwen2)
    qk_norm: bool = False  # the model's norm on each head's queries and keys, before the rotary (Qwen3: RMSNorm)
    tie_embeddings: bool = True

    def __post_init__(self):
        self.d_ff = 4 * self.n_embd if self.d_ff is None else self.d_ff
        self.n_kv_head = self.n_head if self.n_kv_head is None else self.n_kv_head
        if self.head_size is None:  # n_embd / n_head; 0 when that is not whole (or not numbers): problems() says so
            whole = type(self.n_embd) is type(self.n_head) is int and self.n_head > 0 and self.n_embd % self.n_head == 0
            self.head_size = self.n_embd // self.n_head if whole else 0
        problems = self.problems()
        if problems:
            raise ValueError('invalid GPTConfig: ' + '; '.join(problems))

    def problems(self):
        """Every problem with this config, each saying the field, the value and the fix."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            expected = (int, float) if f.type is float else f.type  # an int is a fine float
            if not isinstance(value, expected) or (f.type is not bool and isinstance(value, bool)):
                out.append(f'{f.name}={value!r} must be of type {f.type.__name__}')
        if out:
            return out  # the checks below assume the right types
        for name in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'd_ff', 'n_kv_head', 'rope_theta',
                     'norm_eps') + (('head_size',) if self.head_size or (self.n_head > 0 and self.n_embd % self.n_head == 0) else ()):
            if getattr(self, name) <= 0:
                out.append(f'{name}={getattr(self, name)} must be positive')
        if not 0.0 <= self.dropout < 1.0:
            out.append(f'dropout={self.dropout} must be in [0, 1), e.g. 0.0 for pretraining or 0.1 for finetuning')
        scaling = self.rope_scaling
        if scaling and (len(scaling) != 4 or not all(type(v) in (int, float) and v > 0 for v in scaling) or scaling[1] >= scaling[2]):
            out.append(f'rope_scaling={scaling!r} must be () or Llama 3\'s positive (factor, low_freq_factor, '
                       'high_freq_factor, original context), low below high, e.g. (32.0, 1.0, 4.0, 8192)')
        for name, allowed in (('norm', NORMS), ('pos_emb', POS_EMBS), ('mlp', MLPS)):
            if getattr(self, name) not in allowed:
                out.append(f"{name}={getattr(self, name)!r} is not an option: use one of {', '.join(map(repr, allowed))}")
        if self.n_head > 0 and self.n_embd > 0 and not self.head_size and self.n_embd % self.n_head:
            near = sorted((h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0), key=lambda h: abs(h - self.n_head))[:2]
            out.append(f'n_embd={self.n_embd} is not divisible by n_head={self.n_head}: '
                       f'choose n_head among {sorted(near)}, n_embd a multiple of {self.n_head} or a head_size')
        if self.n_head > 0 and self.n_kv_head > 0 and self.n_head % self.n_kv_head:
            divisors = [k for k in range(1, self.n_head + 1) if self.n_head % k == 0]
            out.append(f'n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}: choose n_kv_head among {divisors}')
        if self.pos_emb == 'rope' and self.head_size % 2:
            out.append(f'rotary positions need an even head size, but head_size = {self.head_size}: change n_embd, '
                       'n_head or head_size, or use pos_emb=\'learned\'')
        return out


def make_norm(config, size=None):
    """GPT-2's LayerNorm (bias as config.bias), or RMSNorm (not in GPT-2: no centring, no bias; Llama)."""
    if config.norm == 'layernorm':
        return nn.LayerNorm(size or config.n_embd, eps=config.norm_eps, bias=config.bias)
    return nn.RMSNorm(size or config.n_embd, eps=config.norm_eps)


class Rotary(nn.Module):
    """Not in GPT-2: rotary position embeddings, applied to queries and keys, no parameters.
    Uses the half-split ("rotate_half") layout of Hugging Face's Llama, so exported weights need no permutation."""

    def __init__(self, head_size, block_size, theta, scaling=()):
        super().__init__()
        self.theta, self.scaling = theta, scaling
        for name in ('cos', 'sin'):
            self.register_buffer(name, torch.empty(block_size, head_size), persistent=False)  # (T, hs)
        self.reset_tables()

    def reset_tables(self):
        """Fill the cos/sin tables (computed on the CPU, so that every device gets the same values)."""
        T, hs = self.cos.shape
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, hs, 2, dtype=torch.float32, device='cpu') / hs))
        if self.scaling:  # Llama 3: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between
            factor, low, high, context = self.scaling
            smooth = (context * inv_freq / (2 * math.pi) - low) / (high - low)  # context / wavelength, rescaled
            inv_freq = torch.lerp(inv_freq / factor, inv_freq, smooth.clamp(0, 1))
        angles = torch.outer(torch.arange(T, dtype=torch.float32, device='cpu'), inv_freq)  # (T, hs/2)
        # both halves turn by the same angles; the first half's sine is negated so that the rotation is one addcmul
        self.cos.copy_(torch.cat((angles.cos(), angles.cos()), dim=-1))
        self.sin.copy_(torch.cat((-angles.sin(), angles.sin()), dim=-1))

    def forward(self, x, start):
        # x: (B, nh, T, hs) at positions start..: (x1 cos - x2 sin, x2 cos + x1 sin) in 3 operations, not 7 (CPUs)
        cos, sin = (table[start:start + x.size(2)].to(x.dtype) for table in (self.cos, self.sin))
        x1, x2 = x.chunk(2, dim=-1)
        return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)


class KVCache:
    """Keys and values of the tokens seen so far, (B, n_kv_head, max_len, hs) per layer; for generation only."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (batch_size, config.n_kv_head, max_len, config.head_size)
        self.k, self.v = ([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)] for _ in 'kv')
        self.max_len, self.pos = max_len, 0  # pos: how many positions are filled

    def update(self, layer, k, v):
        """Store this step's k, v for `layer` and return all keys and values so far."""
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos:end], self.v[layer][:, :, self.pos:end] = k, v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx, rotary=None):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, config.head_size
        self.layer_idx = layer_idx  # which of the KV cache's layers is this one's
        # query, key and value projections in one matmul; with grouped-query attention k and v are narrower
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_size,
                                bias=config.bias or config.qkv_bias)  # qkv_bias: not in GPT-2 nor Llama; Qwen2
        self.c_proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias)
        # not in GPT-2 nor Llama: each head's q and k RMS-normalized (Qwen3), which keeps attention logits bounded
        self.q_norm, self.k_norm = (make_norm(config, config.head_size) if config.qk_norm else nn.Identity() for _ in 'qk')
        self.rotary = rotary  # shared by all layers; None for learned positions
        self.dropout = config.dropout

    def forward(self, x, kv_cache=None):
        B, T, _ = x.size()
        hs = self.head_size
        q, k, v = self.c_attn(x).split([self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=2)
        q = self.q_norm(q.view(B, T, self.n_head, hs)).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_norm(k.view(B, T, self.n_kv_head, hs)).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        start = kv_cache.pos if kv_cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nkv, start + T, hs)
        y = attention(q, k, v, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # re-assemble all head outputs side by side
        return dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    """GPT-2's MLP: Linear, tanh-approximated GELU, Linear."""
    width = 1  # c_fc's outputs per hidden unit

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, self.width * config.d_ff, bias=config.bias)
        self.c_proj = nn.Linear(config.d_ff, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def activation(self, h):
        return gelu(h)

    def forward(self, x):
        return dropout(self.c_proj(self.activation(self.c_fc(x))), self.dropout, self.training)


class SwiGLU(MLP):
    """Not in GPT-2: a gated MLP, silu(x W_gate) * (x W_up) then W_down (Llama). c_fc holds gate and up stacked."""
    width = 2

    def activation(self, h):
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up


class Block(nn.Module):
    def __init__(self, config, layer_idx, rotary=None):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx, rotary)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config) if config.mlp == 'gelu' else SwiGLU(config)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.activation_checkpointing = False  # recompute each block in backward: less memory, ~1/3 more compute
        device = torch.get_default_device()  # where the model is built
        with torch.device('meta'):  # no memory and no random draws yet: init_weights below sets every value
            rotary = Rotary(config.head_size, config.block_size, config.rope_theta, config.rope_scaling) \
                if config.pos_emb == 'rope' else None
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd) if rotary is None else None,
                h=nn.ModuleList([Block(config, i, rotary) for i in range(config.n_layer)]),
                ln_f=make_norm(config),
            ))
            self.rotary = rotary  # registered once here; the blocks hold references to the same module
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.to_empty(device=device)
        if config.tie_embeddings:  # lm_head is wte (https://paperswithcode.com/method/weight-tying)
            self.transformer.wte.weight = self.lm_head.weight
        self.init_weights()

    def init_weights(self):
        """GPT-2's initialization, each parameter drawn whole from the global generator in named_parameters'
        order (so that parallel.py's shards start as one process does for a seed), and the rotary tables."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                self.init_parameter(name, param)
        if self.rotary is not None:
            self.rotary.reset_tables()

    def init_parameter(self, name, tensor):
        """Set `tensor` to parameter `name`'s initial value: N(0, 0.02), norm gains 1, biases 0; GPT-2 scales each
        residual projection (c_proj) by 1/sqrt(2 * n_layer), two per block, to keep the residual variance bounded."""
        if name.endswith('bias'):
            torch.nn.init.zeros_(tensor)
        elif tensor.dim() == 1:  # norm gains
            torch.nn.init.ones_(tensor)
        else:
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith('c_proj.weight') else 0.02
            torch.nn.init.normal_(tensor, mean=0.0, std=std)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """nn.Module's; assign=True (a model built on the meta device takes the tensors as they are: no copy, their
        dtype kept) then ties lm_head to wte again and makes the rotary tables."""
        result = super().load_state_dict(state_dict, strict, assign)
        if assign and self.config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        if assign and self.rotary is not None:
            self.rotary.to_empty(device=self.lm_head.weight.device).reset_tables()
        return result

    def get_num_params(self, non_embedding=True):
        """Parameters (a tied matrix once); non_embedding leaves out wpe, and wte unless it is lm_head (nanoGPT)."""
        n = sum(p.numel() for p in self.parameters())
        embeddings = [self.transformer.wpe] + ([] if self.config.tie_embeddings else [self.transformer.wte])
        return n - sum(e.weight.numel() for e in embeddings if e is not None) if non_embedding else n

    def forward(self, idx, targets=None, kv_cache=None):
        B, T = idx.size()
        start, limit = (kv_cache.pos, kv_cache.max_len) if kv_cache is not None else (0, self.config.block_size)
        if start + T > limit:
            raise ValueError(f'cannot forward a sequence of {start + T} tokens: the context (block_size) is '
                             f'{limit}; crop the input to its last {limit} tokens')
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(torch.arange(start, start + T, dtype=torch.long, device=idx.device))
        x = dropout(x, self.config.dropout, self.training)
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)  # keeps only x; the block runs again in backward
            else:
                x = block(x, kv_cache)
        x = self.transformer.ln_f(x)
        if kv_cache is not None:
            kv_cache.pos += T
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        else:  # inference: only the last position's logits are needed (a list index keeps the time dimension)
            logits, loss = self.lm_head(x[:, [-1], :]), None
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices and embeddings (2-D tensors) only, not on biases and norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                  {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
        fused = {'fused': True} if device_type in ('cuda', 'cpu') else {}  # the whole update in one launch per group
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **fused)

    def flops_per_token(self, seq_len=None):
        """Training (forward + backward) FLOPs per token: 6 per parameter that multiplies (a tied wte does, as
        lm_head) plus 12 * n_layer * seq_len * n_head * head_size for attention's scores and sum (PaLM, appendix B)."""
        c, T = self.config, seq_len or self.config.block_size
        return 6 * self.get_num_params(non_embedding=True) + 12 * c.n_layer * T * c.n_head * c.head_size

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops, seq_len=None):
        """Model FLOPs utilization: fwdbwd_per_iter sequences in dt seconds as a fraction of peak_flops."""
        T = seq_len or self.config.block_size
        return self.flops_per_token(T) * T * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, on_token=None, vocab_size=None):
        """Continue each row of idx (LongTensor (B, T)) by max_new_tokens tokens with a KV cache (temperature=0 is
        greedy). When the cache is full, the last block_size // 2 tokens are re-run as a fresh prefill: each token
        sees at least half a context. on_token(tokens (B, 1)) is called after each step (streaming; True stops: EOS);
        vocab_size limits sampling to the ids a tokenizer decodes. Nothing here waits for the device: a GPU runs ahead."""
        was_training = self.training
        self.eval()
        block_size = self.config.block_size
        device = idx.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.lm_head.weight.dtype
        cache = KVCache(self.config, idx.size(0), min(block_size, idx.size(1) + max_new_tokens), idx.device, dtype)
        logits, _ = self(idx[:, -block_size:], kv_cache=cache)
        for _ in range(max_new_tokens):
            idx_next = sample_next(logits[:, -1, :vocab_size], temperature, top_k, top_p)
            idx = torch.cat((idx, idx_next), dim=1)
            if on_token is not None and on_token(idx_next):
                break
            if cache.pos == block_size:  # full: start again from the last half context
                cache.pos = 0
                logits, _ = self(idx[:, -(block_size // 2 or 1):], kv_cache=cache)
            else:
                logits, _ = self(idx_next, kv_cache=cache)
        self.train(was_training)
        return idx


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick the next token from last-position logits (B, vocab): greedy when temperature is 0, else sample (with
    `generator`, else the global one) from the softmax at that temperature, top_k most likely, nucleus top_p."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = (logits.float() - logits.amax(dim=-1, keepdim=True)) / temperature  # the top logit is 0: no NaN
    # masked_fill, not logits[mask] = ...: boolean indexing finds the mask's elements on the host, a GPU sync
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, -1:], -float('inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # keep the token that crosses top_p
        logits = logits.scatter(1, sorted_idx, sorted_logits.masked_fill(remove, -float('inf')))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


# ---- kernels: attention, dropout and GELU, whose implementation is picked here and nowhere else ----------


def cpu_eager(x):
    """Whether x takes the CPU kernels below. PyTorch's tanh-GELU, dropout and attention with dropout are slow on
    CPUs (docs/benchmarks.md); under torch.compile, inductor fuses PyTorch's own (and cannot trace random_)."""
    return x.device.type == 'cpu' and not torch.compiler.is_compiling()


def attention(q, k, v, dropout_p):
    """Causal attention of q (B, nh, T, hs), the last T of the S positions of k, v (B, nkv, S, hs) (S > T: cached)."""
    T, S = q.size(2), k.size(2)
    if dropout_p > 0 and cpu_eager(q):
        return cpu_attention_with_dropout(q, k, v, dropout_p)
    # plain Python branches, so that torch.compile sees a constant is_causal even when T is a symbol
    mask, is_causal = None, False  # a single new token sees every key
    if T > 1 and S == T:  # queries and keys start together
        is_causal = True
    elif T > 1:  # a chunk appended to the cache: the causal mask shifted by the S - T cached positions
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                          enable_gqa=k.size(1) != q.size(1))


def dropout(x, p, training):
    """F.dropout(x, p, training); in eager mode on CPUs with masks from cpu_dropout_keep, the same arithmetic."""
    if training and p > 0 and cpu_eager(x):
        return x * cpu_dropout_keep(x.shape, p).to(x.dtype).div_(1 - p)
    return F.dropout(x, p, training)


def gelu(x):
    """GPT-2's GELU, F.gelu(x, approximate='tanh'); by CPUTanhGELU for float32 in eager mode on CPUs."""
    if x.dtype == torch.float32 and cpu_eager(x):
        return CPUTanhGELU.apply(x)
    return F.gelu(x, approximate='tanh')


class CPUTanhGELU(torch.autograd.Function):
    """GPT-2's GELU as x sigmoid(2C (x + K x^3)), the same function since 1 + tanh(z) = 2 sigmoid(2z): PyTorch's
    CPU tanh is slower than its sigmoid. It keeps one tensor for backward, the derivative: one multiply there."""
    C, K = math.sqrt(2 / math.pi), 0.044715  # GPT-2's 0.5 x (1 + tanh(C (x + K x^3)))

    @staticmethod
    def forward(ctx, x):
        C, K = CPUTanhGELU.C, CPUTanhGELU.K
        c2 = x.new_tensor(2 * C)
        s = torch.addcmul(c2, x, x, value=2 * C * K).mul_(x).sigmoid_()  # sigmoid(v), v = 2C (x + K x^3)
        if ctx.needs_input_grad[0]:
            # d/dx x sigmoid(v) = s + x v' s (1 - s), with v' = 2C (1 + 3K x^2)
            d = torch.addcmul(c2, x, x, value=6 * C * K).mul_(x)  # x v'
            torch.ops.aten.sigmoid_backward.grad_input(d, s, grad_input=d)  # x v' s (1 - s), in place
            ctx.save_for_backward(d.add_(s))
        return s.mul_(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.saved_tensors[0]  # the derivative


def cpu_dropout_keep(shape, p):
    """Which elements dropout keeps (bool), from torch's global generator: 64 random bits per int64 cut into two
    32-bit numbers u, faster than F.dropout's one Bernoulli draw at a time. An element is dropped when u, uniform
    in [0, 2^32), is below floor(p 2^32): probability p within 2^-32, closer than p's float32 rounding."""
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-2 ** 63, None)  # 64 uniform bits each
    u = words.view(torch.int32)[:n].view(shape)  # u - 2^31, as signed 32-bit integers
    return u >= int(p * 2 ** 32) - 2 ** 31


def cpu_attention_with_dropout(q, k, v, dropout_p):
    """Causal attention with dropout on the probabilities (SDPA's CPU path with dropout is unfused and fp32):
    nanoGPT's manual attention in the autocast dtype with cpu_dropout_keep. q: (B, nh, T, hs); k, v: (B, nkv, T, hs)."""
    T, hs = q.size(-2), q.size(-1)
    if k.size(1) != q.size(1):  # grouped-query attention: each key/value head serves n_head // n_kv_head queries
        k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))
    att = (q * (1.0 / math.sqrt(hs))) @ k.transpose(-2, -1)  # scaling q is 1/T of the work of scaling att
    # an additive -inf above the diagonal: its backward is free, masked_fill's is one more pass over att
    causal = torch.full((T, T), float('-inf'), device=q.device).triu(1).to(att.dtype)
    att = F.softmax(att + causal, dim=-1)
    # dropout's 1 / (1 - p) scales v, T / hs times fewer elements than att (the same product up to rounding)
    return (att * cpu_dropout_keep(att.shape, dropout_p).to(att.dtype)) @ (v * (1 / (1 - dropout_p)))
