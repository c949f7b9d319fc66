"""
What only a torchrun run has to decide (machine.setup and train.py import this module under torchrun only): the
store of each restart of the group, which folders the processes share, and so who prepares the data and whether
the run can resume on every node.

    dist.init_process_group(..., **cluster.attempt_store(rank, world_size))   # machine.setup: this restart's store
    cluster.prepare(dataset, data_dir, out_dir, machine)   # every process, before reading data_dir

A node is one torchrun agent (one machine): LOCAL_RANK numbers its processes, RANK all of them. out_dir must be one
folder for every node (a shared file system): ckpt.pt is written by rank 0 and ckpt.dcp by every process, and a
restart on any node reads them. data_dir may be shared (a built-in dataset is then prepared once, by rank 0) or each
node's own disk (prepared by each node's first process that lacks it). docs/cluster.md tells the whole story.
"""

import os
import uuid

import torch
import torch.distributed as dist

from machine import GROUP_TIMEOUT


def attempt_store(rank, world_size):
    """init_process_group's store, rank and world_size under torchrun's agent store: a key prefix of its own for each
    restart of the group. c10d's rendezvous keeps one store for all restarts (torch 2.13), where a restarted process
    read the dead ones' addresses (gloo: Connection refused). {}: torch's env:// store, as without an agent store."""
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != 'True':
        return {}
    store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), world_size, is_master=False,
                          timeout=GROUP_TIMEOUT)
    prefixed = dist.PrefixStore(f"restart_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)
    return {'store': prefixed, 'rank': rank, 'world_size': world_size}


def prepare(dataset, data_dir, out_dir, machine):
    """Check that out_dir is shared between nodes, and make data_dir/train.bin exist for every process (a collective:
    every process calls it, and all raise the same error)."""
    multi_node = several_nodes(machine)
    if multi_node and not is_shared(out_dir, machine):
        raise ValueError(f'out_dir={out_dir} is not one folder for all nodes (rank 0 wrote a file there that other '
                         'nodes do not see): checkpoints must be readable by every node to resume, so put out_dir '
                         'on a file system they share (NFS, Lustre, ...)')
    missing = not os.path.exists(os.path.join(data_dir, 'train.bin'))
    if not agreed(missing, dist.ReduceOp.MAX):
        return
    shared = not multi_node or is_shared(data_dir, machine)
    import corpus  # writes the bins of a built-in dataset (Tiny Shakespeare); the others wait in its barrier
    corpus.prepare_missing(dataset, data_dir, missing and (machine.master if shared else machine.local_rank == 0))


def several_nodes(machine):
    """Whether the processes run on more than one node (torchrun's --nnodes > 1)."""
    return int(os.environ.get('LOCAL_WORLD_SIZE', machine.world_size)) < machine.world_size


def is_shared(folder, machine):
    """Whether every process sees the same folder, not its node's own (a collective): rank 0 leaves a file there
    (creating the folder) that the others look for."""
    name = [f'.shared-{uuid.uuid4().hex}' if machine.master else None]
    dist.broadcast_object_list(name)
    probe = os.path.join(folder, name[0])
    if machine.master:
        os.makedirs(folder, exist_ok=True)
        open(probe, 'w').close()
    dist.barrier()
    try:
        return agreed(os.path.exists(probe), dist.ReduceOp.MIN)  # after every process looked
    finally:
        if machine.master:
            os.remove(probe)


def agreed(flag, op):
    """flag combined over all processes: ReduceOp.MAX, whether any has it; MIN, whether all have it."""
    flag = torch.tensor(int(flag))
    dist.all_reduce(flag, op=op)
    return bool(flag)
