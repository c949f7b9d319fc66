"""
LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685): finetune a model by training two thin matrices next to each
chosen weight W (out x in) of the blocks, A (rank x in) and B (out x rank), while W stays frozen:

    y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T

B starts at zero, so the adapted model starts as the base model, exactly. Only A and B are trained, given to the
optimizer and saved: for GPT-2 XL at rank 8 on every matrix, 0.6% of the parameters. merge() folds them into W
(W + alpha / rank * B A), which makes the model an ordinary GPT again, for export and generation.

The targets are named as inside a block (model.py): attn.c_attn (the fused query, key and value projection),
attn.c_proj, mlp.c_fc (SwiGLU's fused gate and up projections) and mlp.c_proj.

A LoRA run (train.py --lora_rank=8 --init_from=gpt2) and its checkpoint, below the math: build() is
checkpoint.init_model's model of a LoRA run, merged_model() checkpoint.load_model's of a LoRA checkpoint (for
sample.py, evaluate.py, serve.py), checkpoint_entries() what train.py saves. The checkpoint holds the adapters, the
optimizer state and the base's identity: its init_from and a fingerprint of its weights, checked at every load.

    model = lora.build(config, cfg, source, machine)   # base loaded and frozen, adapters added (resumed: loaded)
    model = lora.merged_model(model, source)           # a LoRA checkpoint as one ordinary GPT
"""

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')


class LoRALinear(nn.Module):
    """An nn.Linear's frozen weight and bias (the same tensors under the same state_dict keys) plus an adapter."""

    def __init__(self, linear, rank, alpha, dropout):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        device = linear.weight.device  # the adapters train in float32 whatever the base's dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) draw it
        self.scaling, self.dropout = alpha / rank, dropout

    def forward(self, x):
        adapter = F.linear(F.linear(F.dropout(x, self.dropout, self.training), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + self.scaling * adapter

    @torch.no_grad()
    def merged(self):
        """A plain nn.Linear holding W + scaling * B A (computed in float32, stored in W's dtype)."""
        delta = self.scaling * self.lora_B.float() @ self.lora_A.float()
        self.weight.copy_(self.weight.float() + delta)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device='meta')
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def target_problems(targets):
    unknown = [t for t in targets if t not in TARGETS]
    return [f"lora_targets has {', '.join(unknown)}: the targets are {', '.join(TARGETS)}"] if unknown else []


def add_adapters(model, rank, alpha, dropout, targets, base_dtype=None):
    """Freeze the model, hold the blocks' matrices in base_dtype (bfloat16 halves them; the run then needs autocast)
    and give each target an adapter. A's are drawn from the global generator in module order: one seed, one start."""
    model.requires_grad_(False)
    for block in model.transformer.h:
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear):
                module.to(base_dtype)
                if name in targets:
                    parent, attr = name.split('.')
                    setattr(getattr(block, parent), attr, LoRALinear(module, rank, alpha, dropout))
    return model


def merge(model):
    """Fold every adapter into its weight: the model is then an ordinary GPT (its state_dict has no lora_ keys)."""
    for block in model.transformer.h:
        for name, module in list(block.named_modules()):
            if isinstance(module, LoRALinear):
                parent, attr = name.split('.')
                setattr(getattr(block, parent), attr, module.merged())
    return model


def adapter_state(model):
    """The trained tensors only: what a LoRA checkpoint holds besides the optimizer (and the base model's identity)."""
    return {k: v for k, v in model.state_dict().items() if '.lora_' in k}


# ----------------------------------------------------------------------------------------------
# a LoRA run: its settings, its model and its checkpoint

SETTINGS = ('lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets', 'lora_base_dtype')
BASE_DTYPES = ('auto', 'float32', 'bfloat16', 'float16')


def targets_of(cfg):
    return [t.strip() for t in cfg['lora_targets'].split(',') if t.strip()]


def setting_problems(cfg):
    """training.setting_problems' sentences for a run with lora_rank != 0."""
    out = [f'{k}={cfg[k]} {wording}' for k, wording, bad in (
        ('lora_rank', 'must be 0 (off) or more, e.g. 8', cfg['lora_rank'] < 0),
        ('lora_alpha', 'must be more than 0, e.g. 16 (adapters are scaled by alpha / rank)', cfg['lora_alpha'] <= 0),
        ('lora_dropout', 'must be in [0, 1), e.g. 0.05', not 0 <= cfg['lora_dropout'] < 1)) if bad]
    targets = targets_of(cfg)
    out += target_problems(targets) if targets else [f"lora_targets is empty: give some of {', '.join(TARGETS)}"]
    if cfg['lora_base_dtype'] not in BASE_DTYPES:
        out.append(f"lora_base_dtype={cfg['lora_base_dtype']!r} is not one of {', '.join(BASE_DTYPES)}")
    if cfg['optimizer'] == 'muon':  # Muon orthogonalizes a whole weight's update; B A's factors are not weights
        out.append("optimizer='muon' is not supported with LoRA: Muon orthogonalizes the update of a full weight "
                   "matrix, and a rank-r factor (B starting at 0) is not one; use --optimizer=adamw")
    if cfg['parallel'] == 'fsdp' or cfg['cpu_offload']:
        out.append('parallel=fsdp (and cpu_offload) is not supported with LoRA: the frozen base is not sharded, and '
                   'the adapters are small; use --parallel=ddp (or one process) with lora_base_dtype=bfloat16')
    return out


def base_dtype(setting, run_dtype):
    """The frozen base's dtype: 'auto' is the run's autocast dtype (bf16, fp16), else float32; a half-precision base
    needs that autocast (a float32 activation cannot multiply a bf16 weight)."""
    if setting == 'auto':
        return run_dtype if run_dtype in ('bfloat16', 'float16') else 'float32'
    if setting != 'float32' and setting != run_dtype:
        raise ValueError(f'lora_base_dtype={setting} holds the frozen base in {setting}, which needs --dtype={setting} '
                         f'autocast (this run is {run_dtype}): add --dtype={setting}, or use lora_base_dtype=float32')
    return setting


def fingerprint(model):
    """The base a LoRA run trained on, whatever dtype it was held or stored in: sha256 over the sha256 of each
    tensor of the model's state dict (its name, shape and float32 values), in sorted order. The tensors are
    hashed on parallel threads (hashlib lets go of the GIL): GPT-2 XL holds 6.5 GB."""
    def tensor_digest(item):
        name, tensor = item
        digest = hashlib.sha256(f'{name} {tuple(tensor.shape)}\n'.encode())
        digest.update(tensor.detach().float().cpu().contiguous().view(torch.uint8).numpy())
        return digest.digest()
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return hashlib.sha256(b''.join(pool.map(tensor_digest, sorted(model.state_dict().items())))).hexdigest()


def build(config, cfg, source, machine):
    """checkpoint.init_model's model of a LoRA run: the base loaded and frozen, adapters added. Resuming (source is a
    LoRA checkpoint), the base is the one recorded and the adapters are the checkpoint's."""
    import checkpoint
    from model import GPT
    recorded = checked_record(source) if 'lora' in (source.ckpt or {}) else None
    if recorded is None and source.ckpt is not None:
        raise ValueError(f'{source.path} is a full model, not a LoRA run: to train adapters on it, export it '
                         '(python export.py) and give that folder as --init_from, with another --out_dir')
    if recorded is not None:
        settings = {k: recorded[k] for k in SETTINGS}
        if any(cfg[k] != v for k, v in settings.items()):
            raise ValueError(f'{source.path} is a LoRA run with other settings: resume it with '
                             + ' '.join(f'--{k}={v}' for k, v in settings.items()))
        if config.block_size != source.ckpt['model_args']['block_size']:
            raise ValueError(f'block_size={config.block_size} would crop the base of the LoRA run {source.path}: a '
                             "LoRA run resumes at its own block_size; drop --block_size")
    model = GPT(config)  # a new base's initialization is drawn here
    if recorded is not None:
        load_base(model, source)
    else:
        if source.model_args is not None:
            with checkpoint.master_first(machine):  # rank 0 downloads pretrained weights, the others read the cache
                checkpoint.load_weights(model, source)
        init_from = cfg['init_from']
        recorded = {'base': {'init_from': os.path.abspath(init_from) if os.path.isdir(init_from) else init_from,
                             'seed': cfg['seed'], 'fingerprint': fingerprint(model)},
                    **{k: cfg[k] for k in SETTINGS}}
    dtype = base_dtype(cfg['lora_base_dtype'], machine.dtype)
    add_adapters(model, cfg['lora_rank'], cfg['lora_alpha'], cfg['lora_dropout'], targets_of(cfg),
                 getattr(torch, dtype))
    if source.ckpt is not None:
        load_adapters(model, source)
    model.lora_record = recorded  # what checkpoint_entries saves
    if machine.master:
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"LoRA: rank {cfg['lora_rank']} on {', '.join(targets_of(cfg))}: {trained:,} parameters train "
              f"({trained / model.get_num_params(non_embedding=False):.2%}), the base is frozen in {dtype}")
    return model


def checked_record(source):
    """A LoRA checkpoint's `lora` entry, checked to hold the settings and the base's identity."""
    recorded = source.ckpt['lora']
    base = recorded.get('base') if isinstance(recorded, dict) else None
    identity = dict(init_from=str, seed=int, fingerprint=str)
    settings = dict(lora_rank=int, lora_alpha=(int, float), lora_dropout=(int, float), lora_targets=str,
                    lora_base_dtype=str)
    if not isinstance(base, dict) or any(not isinstance(base.get(k), t) for k, t in identity.items()) or \
            any(not isinstance(recorded.get(k), t) for k, t in settings.items()) or recorded['lora_rank'] < 1:
        raise ValueError(f'checkpoint {source.path} has a damaged LoRA record (its settings and base): restore it, '
                         'or train again')
    return recorded


def load_base(model, source):
    """The base recorded in a LoRA checkpoint into model, checked against its fingerprint."""
    import checkpoint
    from model import GPT, GPTConfig
    base = checked_record(source)['base']
    if base['init_from'] == 'scratch':  # a new model of the run's seed, drawn again (without touching the global RNG)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(base['seed'])
            weights = GPT(GPTConfig(**source.ckpt['model_args'])).state_dict()
        base_source = checkpoint.Source(f"a new model of seed {base['seed']}", 'scratch', weights=lambda: weights)
    else:
        base_source = checkpoint.open_source(base['init_from'], '')
    checkpoint.load_weights(model, base_source)
    if fingerprint(model) != base['fingerprint']:
        raise ValueError(f"the base model of the LoRA run {source.path}, {base['init_from']}, is not the one it was "
                         'trained on (its weights have another fingerprint): restore that base, or train again')


def load_adapters(model, source):
    adapters = source.ckpt['model']
    expected = adapter_state(model)
    misshapen = [k for k in set(adapters) & set(expected)
                 if not isinstance(adapters[k], torch.Tensor) or adapters[k].shape != expected[k].shape]
    wrong = sorted(set(adapters) ^ set(expected)) + sorted(misshapen)
    if wrong:
        raise ValueError(f"the adapters in {source.path} do not match its LoRA settings ({', '.join(wrong[:4])}): "
                         'the file was edited or written by another program')
    model.load_state_dict(adapters, strict=False)


def merged_model(model, source):
    """checkpoint.load_model's model of a LoRA checkpoint: its base, with the adapters added in float32 and merged."""
    load_base(model, source)
    recorded = checked_record(source)
    with torch.random.fork_rng(devices=[]):  # the A's drawn here are replaced by the checkpoint's
        add_adapters(model, recorded['lora_rank'], recorded['lora_alpha'], 0.0, targets_of(recorded))
    load_adapters(model, source)
    return merge(model)


def checkpoint_entries(model):
    """What a LoRA run's checkpoint holds instead of the model's weights: the adapters and the base's identity."""
    return {'model': adapter_state(model), 'lora': model.lora_record}
