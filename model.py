"""
The GPT language model, in one file.

Defaults reproduce OpenAI's GPT-2 exactly (LayerNorm, learned positions, GELU MLP,
tied embeddings). Modern options are plain GPTConfig fields picked at construction:
  norm='rmsnorm'       RMSNorm instead of LayerNorm               (Zhang & Sennrich 2019)
  pos_emb='rope'       rotary positions instead of a learned table (Su et al. 2021)
  mlp='swiglu'         gated SiLU MLP instead of GELU              (Shazeer 2020)
  n_kv_head < n_head   grouped-query / multi-query attention       (Ainslie et al. 2023)
  tie_embeddings=False a separate lm_head matrix

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65))
    logits, loss = model(idx, targets)
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=200)
"""

import inspect
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

NORMS = ('layernorm', 'rmsnorm')
POS_EMBS = ('learned', 'rope')
MLPS = ('gelu', 'swiglu')


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
    rope_theta: float = 10000.0
    mlp: str = 'gelu'
    d_ff: int = None  # MLP hidden size; None means 4 * n_embd
    n_kv_head: int = None  # key/value heads; None means n_head (plain multi-head attention)
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.n_embd
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        problems = self.problems()
        if problems:
            raise ValueError('invalid GPTConfig: ' + '; '.join(problems))

    @property
    def head_size(self):
        return self.n_embd // self.n_head

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
        for name in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'd_ff', 'n_kv_head'):
            if getattr(self, name) <= 0:
                out.append(f'{name}={getattr(self, name)} must be a positive integer')
        if not 0.0 <= self.dropout < 1.0:
            out.append(f'dropout={self.dropout} must be in [0, 1), e.g. 0.0 for pretraining or 0.1 for finetuning')
        if self.rope_theta <= 0:
            out.append(f'rope_theta={self.rope_theta} must be positive (10000.0 is the usual value)')
        for name, allowed in (('norm', NORMS), ('pos_emb', POS_EMBS), ('mlp', MLPS)):
            if getattr(self, name) not in allowed:
                out.append(f"{name}={getattr(self, name)!r} is not an option: use one of {', '.join(map(repr, allowed))}")
        if self.n_head > 0 and self.n_embd > 0 and self.n_embd % self.n_head:
            near = sorted((h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0), key=lambda h: abs(h - self.n_head))[:2]
            out.append(f'n_embd={self.n_embd} is not divisible by n_head={self.n_head}: '
                       f'choose n_head among {sorted(near)} or n_embd a multiple of {self.n_head}')
        if self.n_head > 0 and self.n_kv_head > 0 and self.n_head % self.n_kv_head:
            divisors = [k for k in range(1, self.n_head + 1) if self.n_head % k == 0]
            out.append(f'n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}: '
                       f'choose n_kv_head among {divisors}')
        if (self.pos_emb == 'rope' and self.n_head > 0 and self.n_embd % self.n_head == 0
                and self.head_size % 2):
            out.append(f'rotary positions need an even head size, but n_embd/n_head = {self.n_embd}/{self.n_head} = {self.head_size}: '
                       f'change n_embd or n_head, or use pos_emb=\'learned\'')
        return out


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1 and we keep GPT-2's eps)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """Not in GPT-2: scales by the root mean square only, no centring and no bias (Llama)."""

    def __init__(self, ndim, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, 1e-5)


class Rotary(nn.Module):
    """Not in GPT-2: rotary position embeddings, applied to queries and keys, no parameters.
    Uses the half-split ("rotate_half") layout of Hugging Face's Llama, so exported weights need no permutation."""

    def __init__(self, head_size, block_size, theta):
        super().__init__()
        self.theta = theta
        self.register_buffer('cos', torch.empty(block_size, head_size), persistent=False)  # (T, hs)
        self.register_buffer('sin', torch.empty(block_size, head_size), persistent=False)  # (T, hs)
        self.reset_tables()

    def reset_tables(self):
        """Fill the cos/sin tables (computed on the CPU, so that every device gets the same values)."""
        T, hs = self.cos.shape
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, hs, 2, dtype=torch.float32, device='cpu') / hs))
        angles = torch.outer(torch.arange(T, dtype=torch.float32, device='cpu'), inv_freq)  # (T, hs/2)
        # both halves turn by the same angles; the first half's sine is negated so that the rotation is one addcmul
        self.cos.copy_(torch.cat((angles.cos(), angles.cos()), dim=-1))
        self.sin.copy_(torch.cat((-angles.sin(), angles.sin()), dim=-1))

    def forward(self, x, start):
        # x: (B, nh, T, hs); positions start..start+T-1. (x1 cos - x2 sin, x2 cos + x1 sin) in 3 operations, not 7:
        # on CPUs the rotation of small heads costs its number of operations (7 took ~15% of a small model's step)
        T = x.size(2)
        cos, sin = self.cos[start:start + T].to(x.dtype), self.sin[start:start + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)


class KVCache:
    """Keys and values of the tokens seen so far, for generation only: training never creates one.
    One preallocated (B, n_kv_head, max_len, hs) buffer per layer; `pos` is how many positions are filled."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (batch_size, config.n_kv_head, max_len, config.head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.pos = 0

    def update(self, layer, k, v):
        """Store this step's k, v for `layer` and return all keys and values so far."""
        T = k.size(2)
        end = self.pos + T
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx, rotary=None):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, config.head_size
        self.layer_idx = layer_idx
        # query, key and value projections in one matmul; with grouped-query attention k and v are narrower
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_size, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.rotary = rotary  # shared by all layers; None for learned positions
        self.dropout = config.dropout
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()
        hs = self.head_size
        q, k, v = self.c_attn(x).split([self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        start = kv_cache.pos if kv_cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        # causal mask: plain is_causal when queries and keys start together; a single new token sees everything;
        # a chunk appended to a non-empty cache needs an explicit mask offset by the cache length
        mask, is_causal = None, T > 1
        if start > 0 and T > 1:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            is_causal = False
        dropout_p = self.dropout if self.training else 0.0
        if dropout_p > 0 and x.device.type == 'cpu':
            y = attention_with_dropout_cpu(q, k, v, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                               enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GPT-2's MLP: Linear, tanh-approximated GELU, Linear."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.d_ff, bias=config.bias)
        self.c_proj = nn.Linear(config.d_ff, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))


class SwiGLU(nn.Module):
    """Not in GPT-2: a gated MLP, silu(x W_gate) * (x W_up) then W_down (Llama). c_fc holds gate and up stacked."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 2 * config.d_ff, bias=config.bias)
        self.c_proj = nn.Linear(config.d_ff, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


class Block(nn.Module):

    def __init__(self, config, layer_idx, rotary=None):
        super().__init__()
        Norm = LayerNorm if config.norm == 'layernorm' else RMSNorm
        self.ln_1 = Norm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx, rotary)
        self.ln_2 = Norm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config) if config.mlp == 'gelu' else SwiGLU(config)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f'GPT needs a GPTConfig, got {type(config).__name__}')
        self.config = config
        self.activation_checkpointing = False  # recompute each block in backward: less memory, ~1/3 more compute
        device = torch.get_default_device()
        with torch.device('meta'):  # no memory and no random draws yet: init_weights below sets every value
            rotary = Rotary(config.head_size, config.block_size, config.rope_theta) if config.pos_emb == 'rope' else None
            Norm = LayerNorm if config.norm == 'layernorm' else RMSNorm
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd) if rotary is None else None,
                drop=Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i, rotary) for i in range(config.n_layer)]),
                ln_f=Norm(config.n_embd, bias=config.bias),
            ))
            self.rotary = rotary  # registered once here; the blocks hold references to the same module
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.to_empty(device=device)
        if config.tie_embeddings:
            # the output layer shares the token embedding matrix (https://paperswithcode.com/method/weight-tying)
            self.transformer.wte.weight = self.lm_head.weight
        self.init_weights()

    def init_weights(self):
        """GPT-2's initialization, drawn from the global generator one whole parameter after another in a fixed
        order (named_parameters), so that parallel.py, which gives each process a shard of every parameter,
        starts from the same weights as one process for the same seed; and the rotary tables."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                self.init_parameter(name, param)
        if self.rotary is not None:
            self.rotary.reset_tables()

    def init_parameter(self, name, tensor):
        """Set `tensor` to the initial value of parameter `name`: N(0, 0.02) for matrices and embeddings, norm
        gains 1, biases 0. GPT-2 scales each residual-stream projection (c_proj) by 1/sqrt(2 * n_layer): two
        additions per block, so the residual stream's variance stays bounded with depth."""
        if name.endswith('bias'):
            torch.nn.init.zeros_(tensor)
        elif tensor.dim() == 1:  # norm gains
            torch.nn.init.ones_(tensor)
        else:
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith('c_proj.weight') else 0.02
            torch.nn.init.normal_(tensor, mean=0.0, std=std)

    def get_num_params(self, non_embedding=True):
        """Number of parameters (a tied matrix counts once). With non_embedding the position table is
        left out, and the token embedding too when it is not also the output layer, as in nanoGPT."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.transformer.wpe is not None:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_cache=None):
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        limit = kv_cache.max_len if kv_cache is not None else self.config.block_size
        if start + T > limit:
            raise ValueError(f'cannot forward a sequence of {start + T} tokens: the context (block_size) is '
                             f'{limit}; crop the input to its last {limit} tokens')
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(torch.arange(start, start + T, dtype=torch.long, device=idx.device))
        x = self.transformer.drop(x)
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
        else:
            # inference: only the last position's logits are needed (a list index keeps the time dimension)
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Model surgery: shrink the context, e.g. to finetune GPT-2 (1024) at block_size 256."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f'block_size={block_size} must be in 1..{self.config.block_size} (the model\'s context): '
                             'a context can only be cropped, not grown')
        self.config.block_size = block_size
        if self.transformer.wpe is not None:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        if self.rotary is not None:
            self.rotary.cos = self.rotary.cos[:block_size]
            self.rotary.sin = self.rotary.sin[:block_size]

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices and embeddings (2-D tensors) only, not on biases and norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        # the fused kernel does the whole update in one launch per group; CUDA and (torch >= 2.4) CPU have it
        fused = 'fused' in inspect.signature(torch.optim.AdamW).parameters and device_type in ('cuda', 'cpu')
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({'fused': True} if fused else {}))

    def flops_per_token(self, seq_len=None):
        """Training (forward + backward) FLOPs per token: 6 per parameter that multiplies (the embedding
        lookups do not; a tied wte does, as lm_head) plus the attention scores and weighted sum,
        12 * n_layer * seq_len * n_embd (PaLM paper, appendix B)."""
        T = seq_len or self.config.block_size
        return 6 * self.get_num_params(non_embedding=True) + 12 * self.config.n_layer * T * self.config.n_embd

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops, seq_len=None):
        """Model FLOPs utilization: the FLOP/s achieved by fwdbwd_per_iter sequences in dt seconds, as a
        fraction of the device's peak_flops (machine.peak_flops)."""
        T = seq_len or self.config.block_size
        return self.flops_per_token(T) * T * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, on_token=None, vocab_size=None):
        """Continue each row of idx (LongTensor (B, T)) by max_new_tokens tokens, with a key/value cache:
        the prompt is run once (prefill), then each new token costs one position. temperature=0 is greedy.
        Past block_size the context is cropped: when the cache is full, the last block_size // 2 tokens are
        re-run as a fresh prefill and generation goes on from there, so each token sees at least half a
        context and the re-prefill costs one forward pass every block_size // 2 tokens.
        on_token(tokens (B, 1)) is called after each step, for streaming. vocab_size limits sampling to the ids
        below it: a tokenizer may decode fewer ids than the model's padded vocabulary."""
        was_training = self.training
        self.eval()
        block_size = self.config.block_size
        param = self.lm_head.weight
        dtype = torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(idx.device.type) else param.dtype
        cache = KVCache(self.config, idx.size(0), block_size, idx.device, dtype)
        logits, _ = self(idx[:, -block_size:], kv_cache=cache)
        for _ in range(max_new_tokens):
            idx_next = sample_next(logits[:, -1, :vocab_size], temperature, top_k, top_p)
            idx = torch.cat((idx, idx_next), dim=1)
            if on_token is not None:
                on_token(idx_next)
            if cache.pos == block_size:  # full: start again from the last half context
                cache.pos = 0
                logits, _ = self(idx[:, -(block_size // 2 or 1):], kv_cache=cache)
            else:
                logits, _ = self(idx_next, kv_cache=cache)
        self.train(was_training)
        return idx


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick the next token from last-position logits (B, vocab): greedy when temperature is 0, else sample
    from the softmax at that temperature, keeping the top_k most likely and the nucleus of mass top_p."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # the top logit is 0: no overflow to NaN
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float('inf')
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        remove = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # keep the token that crosses top_p
        sorted_logits[remove] = -float('inf')
        logits = torch.full_like(logits, -float('inf')).scatter(1, sorted_idx, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1)


# ----------------------------------------------------------------------------------------------
# CPU fast path: GPT-2's GELU without the tanh kernel


class TanhGELU(torch.autograd.Function):
    """GPT-2's GELU, 0.5 x (1 + tanh(c (x + k x^3))), computed as x sigmoid(2c (x + k x^3)): the same function,
    since 1 + tanh(z) = 2 sigmoid(2z), but faster on CPUs, whose PyTorch tanh kernel is ~4x slower than its
    sigmoid: forward + backward 2.4x faster than F.gelu(approximate='tanh') on the CPU recipe's activations
    (which made it ~15% of the step), as fast on large ones, where memory traffic bounds both. Like F.gelu it
    keeps one tensor for the backward pass: the derivative itself, so that the backward pass is one multiply."""
    C, K = math.sqrt(2 / math.pi), 0.044715

    @staticmethod
    def forward(ctx, x):
        c2 = x.new_tensor(2 * TanhGELU.C)
        s = torch.addcmul(c2, x, x, value=2 * TanhGELU.C * TanhGELU.K).mul_(x).sigmoid_()  # sigmoid(v), v = 2c (x + k x^3)
        if ctx.needs_input_grad[0]:
            # d/dx x sigmoid(v) = s + x v' s (1 - s), with v' = 2c (1 + 3k x^2)
            d = torch.addcmul(c2, x, x, value=6 * TanhGELU.C * TanhGELU.K).mul_(x)  # x v'
            torch.ops.aten.sigmoid_backward.grad_input(d, s, grad_input=d)  # x v' s (1 - s), in place
            ctx.save_for_backward(d.add_(s))
        return s.mul_(x)

    @staticmethod
    def backward(ctx, grad):
        derivative, = ctx.saved_tensors
        return grad * derivative


def gelu_tanh(x):
    """F.gelu(x, approximate='tanh'); by TanhGELU for float32 on CPUs (GPUs compute F.gelu in one fused kernel)."""
    if x.device.type == 'cpu' and x.dtype == torch.float32:
        return TanhGELU.apply(x)
    return F.gelu(x, approximate='tanh')


# ----------------------------------------------------------------------------------------------
# CPU fast path: dropout from 32 random bits per element, and attention with dropout


class Dropout(nn.Dropout):
    """nn.Dropout, whose masks come from dropout_keep on CPUs (F.dropout elsewhere)."""

    def forward(self, x):
        if not self.training or self.p == 0 or x.device.type != 'cpu':
            return F.dropout(x, self.p, self.training)
        return x * dropout_keep(x.shape, self.p).to(x.dtype).div_(1 - self.p)  # F.dropout's arithmetic


def dropout_keep(shape, p):
    """Which elements dropout keeps, a bool tensor: each is False with probability p, drawn from torch's global
    generator. F.dropout's CPU kernel draws one Bernoulli number at a time (~6 ns each on AMD CPUs, which MKL's
    fast path skips: 60% of the baby GPT's bf16 step went to dropout); filling int64s with 64 random bits each
    and cutting them into 32-bit numbers costs ~1.3 ns per element. An element is dropped when its number u,
    uniform in [0, 2^32), is below floor(p 2^32): probability p within 2^-32, closer than p's float32 rounding."""
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-2 ** 63, None)  # 64 uniform bits each
    u = words.view(torch.int32)[:n].view(shape)  # u - 2^31, as signed 32-bit integers
    return u >= int(p * 2 ** 32) - 2 ** 31


def attention_with_dropout_cpu(q, k, v, dropout_p):
    """Causal attention with dropout on the probabilities, for training on CPUs. PyTorch's CPU SDPA falls
    back to its unfused math path when dropout_p > 0, which also casts bf16 to fp32 (its bmms then ran at an
    eighth of the bf16 speed) and draws its masks one by one. Here the operations are nanoGPT's manual
    attention, in the autocast dtype (fp32 or bf16 scores, as nanoGPT's matmul gives them; the softmax
    accumulates in fp32), with dropout_keep. q: (B, nh, T, hs); k, v: (B, nkv, T, hs)."""
    T, hs = q.size(-2), q.size(-1)
    if k.size(1) != q.size(1):  # grouped-query attention: each key/value head serves n_head // n_kv_head queries
        k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))
    att = (q * (1.0 / math.sqrt(hs))) @ k.transpose(-2, -1)  # scaling q is 1/T of the work of scaling att
    # an additive -inf above the diagonal: its backward is free, masked_fill's is one more pass over att
    causal = torch.full((T, T), float('-inf'), device=q.device).triu(1).to(att.dtype)
    att = F.softmax(att + causal, dim=-1)
    # dropout's 1 / (1 - p) scales v, T / hs times fewer elements than att (the same product up to rounding)
    return (att * dropout_keep(att.shape, dropout_p).to(att.dtype)) @ (v * (1 / (1 - dropout_p)))
