"""
LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685): finetune a model by training two thin matrices next to each
chosen weight W (out x in) of the blocks, A (rank x in) and B (out x rank), while W stays frozen:

    y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T

B starts at zero, so the adapted model starts as the base model, exactly. Only A and B are trained, given to the
optimizer and saved: for GPT-2 XL at rank 8 on every matrix, 0.6% of the parameters. merge() folds them into W
(W + alpha / rank * B A), which makes the model an ordinary GPT again, for export and generation.

The targets are named as inside a block (model.py): attn.c_attn (the fused query, key and value projection),
attn.c_proj, mlp.c_fc (SwiGLU's fused gate and up projections) and mlp.c_proj.
"""

import math

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
