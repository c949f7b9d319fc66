"""
How the model is spread over torchrun's processes, chosen by train.py's --parallel:

  ddp   every process holds the whole model, its gradients and its optimizer state (16-18 bytes per parameter
        with AdamW); the gradients are averaged across processes (DistributedDataParallel).
  fsdp  FSDP2 (torch.distributed.fsdp.fully_shard): each process holds 1/N of every parameter, gradient and
        optimizer state; a block's parameters are gathered just before it computes and freed after, so the
        memory per process falls with the number of processes. Each transformer block is one unit, the rest
        (the tied token embedding and lm_head, positions, final norm) the root unit.

    model = parallel.sharded(GPTConfig(...), m)            # built on the meta device, then shard by shard
    model = parallel.sharded(config, m, state_dict=sd)     # pretrained / a full checkpoint's weights
"""

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor

from model import GPT

PARALLELS = ('ddp', 'fsdp')


def check(parallel, cpu_offload, m):
    """The parallelism options against the machine, before anything is built: one-line errors."""
    if parallel not in PARALLELS:
        raise ValueError(f"parallel={parallel!r} is not one of {', '.join(PARALLELS)} (ddp: every process holds the "
                         'whole model; fsdp: each holds a shard)')
    if parallel == 'fsdp' and not m.backend:
        raise ValueError('parallel=fsdp shards the model across torchrun\'s processes: run it under torchrun, e.g. '
                         '`torchrun --standalone --nproc_per_node=1 train.py ... --parallel=fsdp` on one GPU')
    if parallel == 'fsdp' and m.dtype == 'float16':
        raise ValueError('parallel=fsdp trains in bfloat16 or float32, not float16 (its GradScaler does not '
                         'handle sharded gradients): use --dtype=float32, or --parallel=ddp')
    if cpu_offload and parallel != 'fsdp':
        raise ValueError('cpu_offload=True keeps FSDP\'s shards in host memory: it needs --parallel=fsdp')


def is_sharded(model):
    """Whether the model (or the model torch.compile wraps) is an FSDP one."""
    return isinstance(getattr(model, '_orig_mod', model), FSDPModule)


def sharded(config, m, cpu_offload=False, state_dict=None, from_rank0=False, empty=False):
    """A GPT sharded over the processes without ever existing whole: built on the meta device (no memory),
    sharded, then given memory for its shards only. Its values: `state_dict` (full, unsharded tensors; with
    from_rank0 only rank 0 passes one and it is broadcast), else GPT's initialization, each parameter drawn
    whole on the CPU from the global generator, in GPT.init_weights' order, so that every process keeps its
    part of the same values that one process would draw (the largest parameter, not the model, must fit);
    with empty, no values (a sharded checkpoint is loaded into them next)."""
    with torch.device('meta'):
        model = GPT(config)
    mesh = init_device_mesh(m.device_type, (m.world_size,))
    # under bf16 the gathered parameters compute in bf16 while gradients are reduced in fp32
    compute_dtype = torch.bfloat16 if m.dtype == 'bfloat16' else None
    policy = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
                  offload_policy=CPUOffloadPolicy(pin_memory=m.device_type == 'cuda') if cpu_offload
                  else OffloadPolicy())
    for block in model.transformer.h:
        fully_shard(block, **policy)
    fully_shard(model, **policy)  # the root unit: embeddings (tied with lm_head: one unit), ln_f
    model.to_empty(device='cpu' if cpu_offload else m.device)
    if model.rotary is not None:
        model.rotary.to(m.device)  # buffers stay with the computation, even when the shards live on the CPU
    with torch.no_grad():
        if state_dict is not None or from_rank0:
            set_model_state_dict(model, state_dict or {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0))
        elif not empty:
            for name, param in model.named_parameters():
                full = torch.empty(param.shape)
                model.init_parameter(name, full)
                shard = distribute_tensor(full.to(m.device), mesh, param.placements, src_data_rank=None)
                param.to_local().copy_(shard.to_local())  # to the shard's own device: the CPU under cpu_offload
        if model.rotary is not None:
            model.rotary.reset_tables()
    return model


def my_share(n, rank, world_size, model):
    """The numbers k of this process's share of n items (k % world_size == rank). FSDP's processes gather
    parameters together, so under FSDP each process runs as many forwards: the share is padded with spare
    numbers k >= n, for which the caller repeats item n - 1 and discards the result."""
    padded = -(-n // world_size) * world_size if is_sharded(model) else n
    return range(rank, padded, world_size)


def sync_gradients(model, sync):
    """Whether this micro-step's backward averages the gradients across processes: only the last of a step's
    micro-steps needs to, the others accumulate locally (DDP's no_sync, FSDP's set_requires_gradient_sync)."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
    else:
        model.require_backward_grad_sync = sync
