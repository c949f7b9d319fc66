"""
Muon for the weight matrices inside the transformer blocks, AdamW for everything else, as one optimizer.

    optimizer = MuonAdamW([{'params': matrices, 'muon': True, 'lr': 0.02},
                           {'params': others, 'muon': False, 'lr': 6e-4, 'weight_decay': 0.1}])
    optimizer = muon.configure(model, cfg, machine)   # train.py's split (training.configure_optimizer)

Muon (Keller Jordan, https://kellerjordan.github.io/posts/muon/) replaces the Nesterov momentum of a matrix's
gradient by the nearest semi-orthogonal matrix (Newton-Schulz): every direction moves alike, however small its
gradient. Only for 2-D weights that multiply activations; the rest goes to AdamW (arXiv 2502.16982, nanochat).
"""

import math

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

# Newton-Schulz quintic x -> a x + b x^3 + c x^5 on the singular values, Keller Jordan's coefficients: small ones
# rise fastest; 5 steps (15 matmuls) leave them around 0.7-1.2, which trains as well as the exact U V^T.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(G, steps=5, dtype=torch.bfloat16):
    """G (2-D) with its singular values pushed towards 1: about U V^T for G = U S V^T, in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T  # work on the wide side: X @ X.T is then the smaller square
    X = X / (X.norm() + 1e-7)  # singular values <= 1 (the spectral norm is at most the Frobenius norm)
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A^2, in one kernel
        X = torch.addmm(X, B, X, beta=a)  # a X + B X
    return X.T if tall else X


def configure(model, cfg, machine):
    """Muon for the 2-D weights inside the blocks, AdamW for the rest (weight decay on its 2-D tensors only), with
    train.py's settings. Chosen by name and shape: a wrapped model (compiled, DDP, FSDP) is split the same way."""
    matrices, others = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (matrices if 'transformer.h.' in name and p.dim() == 2 else others).append(p)
    # Newton-Schulz in bf16 where the device multiplies it natively (Keller Jordan's choice), else fp32
    ns_dtype = torch.bfloat16 if machine.native_bf16 else torch.float32
    return MuonAdamW([
        {'params': matrices, 'muon': True, 'lr': cfg['muon_lr'], 'momentum': cfg['muon_momentum'],
         'weight_decay': cfg['muon_weight_decay']},
        {'params': [p for p in others if p.dim() >= 2], 'lr': cfg['learning_rate'],
         'weight_decay': cfg['weight_decay']},
        {'params': [p for p in others if p.dim() < 2], 'lr': cfg['learning_rate'], 'weight_decay': 0.0},
    ], betas=(cfg['beta1'], cfg['beta2']), ns_dtype=ns_dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with muon=True, torch.optim.AdamW's arithmetic for the rest, in one Optimizer (state_dict,
    GradScaler, clip_grad_norm_ as with AdamW). ns_dtype: float32 where bf16 is not native (~100x slower on AVX2)."""

    def __init__(self, param_groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, momentum=0.95,
                 nesterov=True, ns_steps=5, ns_dtype=torch.bfloat16):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        nesterov=nesterov, ns_steps=ns_steps, muon=False)
        super().__init__(param_groups, defaults)
        self.ns_dtype = ns_dtype  # a property of this machine, not of the run: not in the state_dict
        for group in self.param_groups:
            if group['muon'] and any(p.dim() != 2 for p in group['params']):
                raise ValueError('Muon updates 2-D weight matrices only; give other parameters to a muon=False group')

    @torch.no_grad()
    def step(self, closure=None):  # torch's signature; no closure is ever passed (nor needed)
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            (self._muon_step if group['muon'] else self._adamw_step)(group, params)

    def _muon_step(self, group, params):
        lr, momentum = group['lr'], group['momentum']
        for p in params:
            state = self.state[p]
            if not state:
                state['momentum_buffer'] = torch.zeros_like(p)
            buf = state['momentum_buffer']
            buf.lerp_(p.grad, 1 - momentum)  # an average of the gradients, as Adam's first moment
            update = p.grad.lerp(buf, momentum) if group['nesterov'] else buf
            if isinstance(update, DTensor):  # FSDP: each process holds some rows; Newton-Schulz needs them all
                whole = orthogonalize(update.full_tensor(), group['ns_steps'], self.ns_dtype)
                update = distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)
            else:
                update = orthogonalize(update, group['ns_steps'], self.ns_dtype)
            p.mul_(1 - lr * group['weight_decay'])
            # scaled to an RMS of 1 / sqrt(cols) for every shape, so that tall matrices move as much as wide ones
            p.add_(update.to(p.dtype), alpha=-lr * max(1, p.size(0) / p.size(1)) ** 0.5)

    def _adamw_step(self, group, params):
        lr, (beta1, beta2) = group['lr'], group['betas']
        for p in params:
            state = self.state[p]
            if not state:  # the step count a tensor, as torch's AdamW: checkpoints of shards hold tensors only
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state['step'] += 1
            step = state['step'].item()
            exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            p.mul_(1 - lr * group['weight_decay'])
            denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group['eps'])
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
