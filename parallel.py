"""
How the model is spread over torchrun's processes, chosen by train.py's --parallel:

  ddp   every process holds the whole model, its gradients and its optimizer state (16-18 bytes per parameter
        with AdamW); the gradients are averaged across processes (DistributedDataParallel).
  fsdp  FSDP2 (torch.distributed.fsdp.fully_shard): each process holds 1/N of every parameter, gradient and
        optimizer state; a block's parameters are gathered just before it computes and freed after, so the
        memory per process falls with the number of processes. Each transformer block is one unit, the rest
        (the tied token embedding and lm_head, positions, final norm) the root unit.

    model = parallel.build(config, source, machine)      # checkpoint.init_model's model under --parallel=fsdp
    model = parallel.sharded(GPTConfig(...), machine)   # built on the meta device, memory for its shards only
    parallel.init_shards(model, machine)                # a new model's values, or:
    parallel.load_full(model, state_dict)               # pretrained / a full checkpoint's weights
"""

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor

import checkpoint
import sharded_checkpoint
from model import GPT


def check(parallel, cpu_offload, machine):
    """The parallelism options against the machine, before anything is built: one-line errors."""
    if parallel == 'fsdp' and not machine.backend:
        raise ValueError('parallel=fsdp shards the model across torchrun\'s processes: run it under torchrun, e.g. '
                         '`torchrun --standalone --nproc_per_node=1 train.py ... --parallel=fsdp` on one GPU')
    if parallel == 'fsdp' and machine.dtype == 'float16':
        raise ValueError('parallel=fsdp trains in bfloat16 or float32, not float16 (its GradScaler does not '
                         'handle sharded gradients): use --dtype=float32, or --parallel=ddp')
    if cpu_offload and parallel != 'fsdp':
        raise ValueError('cpu_offload=True keeps FSDP\'s shards in host memory: it needs --parallel=fsdp')


def build(config, source, machine, cpu_offload=False):
    """checkpoint.init_model's model, sharded: filled shard by shard, never whole on any process but on rank 0 while
    it reads pretrained weights."""
    model = sharded(config, machine, cpu_offload)
    if source.model_args is None:
        init_shards(model, machine)
    elif 'sharded' in (source.ckpt or {}):
        sharded_checkpoint.load_model(source.ckpt, model)  # each process reads its part of the shards
    else:  # a full state dict: every process reads a ckpt.pt; rank 0 alone reads pretrained weights and sends them
        from_rank0 = source.ckpt is None
        weights = checkpoint.checked_weights(model, source) if machine.master or not from_rank0 else {}
        load_full(model, weights, from_rank0)
    return model


def sharded(config, machine, cpu_offload=False):
    """A GPT sharded over the processes without ever existing whole: built on the meta device (no memory),
    sharded, then given memory for its shards only, their values not yet set (init_shards or load_full next)."""
    with torch.device('meta'):
        model = GPT(config)
    mesh = init_device_mesh(machine.device_type, (machine.world_size,))
    # under bf16 the gathered parameters compute in bf16 while gradients are reduced in fp32
    compute_dtype = torch.bfloat16 if machine.dtype == 'bfloat16' else None
    policy = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
                  offload_policy=CPUOffloadPolicy(pin_memory=machine.device_type == 'cuda') if cpu_offload
                  else OffloadPolicy())
    for block in model.transformer.h:
        fully_shard(block, **policy)
    fully_shard(model, **policy)  # the root unit: embeddings (tied with lm_head: one unit), ln_f
    model.to_empty(device='cpu' if cpu_offload else machine.device)
    if model.rotary is not None:
        model.rotary.to(machine.device)  # buffers stay with the computation, even when the shards live on the CPU
        model.rotary.reset_tables()
    return model


@torch.no_grad()
def init_shards(model, machine):
    """GPT's initialization into the shards: each parameter drawn whole on the CPU from the global generator, in
    GPT.init_weights' order, so that every process keeps its part of the same values that one process would
    draw (the largest parameter, not the model, must fit)."""
    for name, param in model.named_parameters():
        full = torch.empty(param.shape)
        model.init_parameter(name, full)
        shard = distribute_tensor(full.to(machine.device), param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(shard.to_local())  # to the shard's own device: the CPU under cpu_offload


def load_full(model, state_dict, from_rank0=False):
    """Full (unsharded) tensors into the shards; with from_rank0 only rank 0 passes them and they are broadcast."""
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    # a broadcast sends the tensors' memory as it is: in the shards' dtype and contiguous (GPT-2's Conv1D weights
    # arrive transposed, as views)
    state_dict = {k: v.to(dtypes[k]).contiguous() for k, v in state_dict.items()}
    set_model_state_dict(model, state_dict, options=StateDictOptions(full_state_dict=True,
                                                                     broadcast_from_rank0=from_rank0))


