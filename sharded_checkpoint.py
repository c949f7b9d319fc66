"""
FSDP's checkpoint: out_dir/ckpt.dcp, a folder of shards written by every process with torch.distributed.checkpoint
(DCP), readable by any number of processes (or one without torchrun) and by every script that reads ckpt.pt.

    ckpt.dcp/latest              the name of the complete checkpoint, e.g. iter_0000500 (one atomic write)
    ckpt.dcp/iter_0000500/       DCP's shards of the model and the optimizer state, its index .metadata,
                                 and rank 0's train_state.pt (model_args, iteration, RNG states, ...)

DCP reads its index (.metadata, a pickle) with pickle.load: here an unpickler that builds only the index's own
classes reads it, and every file it names must lie in the checkpoint's folder.
"""

import os
import pickle
import re
import shutil
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from atomic import atomic_path, inside, save_failed
from configurator import one_line

SHARDED, TRAIN_STATE = 'ckpt.dcp', 'train_state.pt'
RESTORE = 'restore the folder, or start again with --init_from=scratch'


def save(model, optimizer, state, out_dir, machine):
    """Save an FSDP run as out_dir/ckpt.dcp/iter_N/, whole or not at all (every process takes part): each process
    writes its shards of the model and the optimizer state, rank 0 the rest (`state`) to train_state.pt; then
    rank 0 points ckpt.dcp/latest at it with one atomic write and removes the previous checkpoint (and a ckpt.pt
    this run resumed from). Killed at any moment, `latest` names a complete checkpoint."""
    root = os.path.join(out_dir, SHARDED)
    name = f"iter_{state['iter_num']:07d}"
    path = os.path.join(root, name)
    if machine.master:
        os.makedirs(root, exist_ok=True)
        if os.path.isdir(path):
            shutil.rmtree(path)  # left by a save that was killed before it was complete
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    try:
        dcp.save({'model': model_state, 'optimizer': optimizer_state['state']}, checkpoint_id=path)
        if machine.master:
            with atomic_path(os.path.join(path, TRAIN_STATE)) as tmp:
                torch.save(dict(state, optimizer_groups=optimizer_state['param_groups']), tmp)
            with atomic_path(os.path.join(root, 'latest')) as tmp, open(tmp, 'w') as f:
                f.write(name + '\n')
    except dcp.api.CheckpointException as e:  # DCP wraps each process's failure
        raise save_failed(path, first_failure(e)) from None
    except (OSError, RuntimeError) as e:  # torch's writer reports a full disk as a RuntimeError
        raise save_failed(root, e) from None
    if machine.master:
        for other in os.listdir(root):
            if other.startswith('iter_') and other != name:
                shutil.rmtree(os.path.join(root, other))
        if os.path.exists(os.path.join(out_dir, 'ckpt.pt')):
            os.remove(os.path.join(out_dir, 'ckpt.pt'))  # the older checkpoint this run started from
    dist.barrier()


def remove(out_dir):
    """Remove out_dir/ckpt.dcp once a newer ckpt.pt is complete (a run that changed from FSDP to DDP)."""
    if os.path.isdir(os.path.join(out_dir, SHARDED)):
        shutil.rmtree(os.path.join(out_dir, SHARDED))


def load_train_state(root):
    """The checkpoint's train_state.pt (everything but the tensors of the model and the optimizer), with
    'sharded' set to the folder of its shards, which load_model and load_optimizer read."""
    try:
        with open(os.path.join(root, 'latest')) as f:
            name = f.read().strip()
    except OSError:
        raise ValueError(f'{root} has no readable `latest` file: its first save was interrupted, or it was copied '
                         f'incompletely; {RESTORE}') from None
    if not re.fullmatch(r'iter_\d+', name):
        raise ValueError(f'{root}/latest names {name!r}, which is not a checkpoint folder (iter_N): {RESTORE}')
    path = inside(root, name)  # iter_N may be a planted link out of the folder
    if not os.path.isfile(os.path.join(path, '.metadata')):
        raise ValueError(f'{root}/latest names {name!r}, which is not a complete checkpoint in {root}: {RESTORE}')
    ShardReader(path).read_metadata()  # the index is checked before anything else reads it
    try:
        state = torch.load(os.path.join(path, TRAIN_STATE), map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f'checkpoint {path} is unreadable or corrupt ({one_line(e)}): {RESTORE}') from None
    if not isinstance(state, dict):
        raise ValueError(f'{path}/{TRAIN_STATE} was not written by train.py')
    state['sharded'] = path
    return state


class ShardReader(dcp.FileSystemReader):
    """DCP's reader, but its index (.metadata, a pickle) is read by an unpickler that builds only the index's own
    classes: a planted .metadata cannot run code. Checkpoints with pickled (non-tensor) values are refused: DCP
    would unpickle them without restriction; train.py writes none."""

    def read_metadata(self, *args, **kwargs):
        path = os.path.join(self.path, '.metadata')
        try:
            with open(path, 'rb') as f:
                metadata = IndexUnpickler(f).load()
        except Exception as e:
            raise ValueError(f'{path} is not the index of a checkpoint train.py wrote ({one_line(e)})') from None
        if any(isinstance(item, BytesStorageMetadata) for item in metadata.state_dict_metadata.values()):
            raise ValueError(f'{path} lists pickled values: not a checkpoint train.py wrote')
        for item in metadata.storage_data.values():
            inside(self.path, item.relative_path)  # a shard named '../../other/run/x' is never read
        metadata.storage_meta = metadata.storage_meta or StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class IndexUnpickler(pickle.Unpickler):
    """Unpickles the classes of a DCP index and nothing else: exact (module, name) pairs, and torch's dtypes. A
    dotted name (pickle protocol 4 looks up 'a.b' as an attribute path) could reach anything a module imports."""
    ALLOWED = {('torch', 'Size'), ('torch.serialization', '_get_layout'), ('pathlib', 'PosixPath'),
               ('pathlib', 'PurePosixPath'), ('pathlib', 'WindowsPath'), ('collections', 'OrderedDict'),
               ('torch.distributed.checkpoint.filesystem', '_StorageInfo')} | {
        ('torch.distributed.checkpoint.metadata', name) for name in (
            'Metadata', 'MetadataIndex', 'StorageMeta', 'TensorStorageMetadata', 'BytesStorageMetadata',
            'ChunkStorageMetadata', 'TensorProperties', '_MEM_FORMAT_ENCODING')}

    def find_class(self, module, name):
        if '.' not in name and ((module, name) in self.ALLOWED or (
                module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'{module}.{name} is not part of a checkpoint index')


def read_shards(state, ckpt):
    """Fill the tensors of `state` from the sharded checkpoint, under torchrun or in one plain process."""
    try:
        with warnings.catch_warnings():  # one process without torchrun is the intent, not an accident
            warnings.filterwarnings('ignore', message='torch.distributed is disabled')
            dcp.load(state, storage_reader=ShardReader(ckpt['sharded']), no_dist=not dist.is_initialized())
    except dcp.api.CheckpointException as e:
        raise ValueError(f"the shards in {ckpt['sharded']} do not match its model_args or are damaged "
                         f'({one_line(first_failure(e), 300)}): {RESTORE}') from None


def first_failure(e):
    """The exception of one failed process in DCP's CheckpointException."""
    failure = next(iter(e.failures.values()))  # (exception, traceback) of one process
    return failure[0] if isinstance(failure, tuple) else failure


def load_model(ckpt, model):
    """The checkpoint's weights into `model`, sharded or whole, on any number of processes: DCP reads each
    process's part of every tensor, whatever parts the saving processes held."""
    state = get_model_state_dict(model)
    read_shards({'model': state}, ckpt)
    set_model_state_dict(model, state)


def load_optimizer(ckpt, model, optimizer):
    """The checkpoint's optimizer state (a sharded checkpoint's, or a ckpt.pt's full one) into the optimizer of an
    FSDP `model`."""
    if 'sharded' in ckpt:
        _, state = get_state_dict(model, optimizer)  # fills a fresh optimizer's state, to be overwritten
        read_shards({'optimizer': state['state']}, ckpt)
        set_optimizer_state_dict(model, optimizer, {'state': state['state'], 'param_groups': ckpt['optimizer_groups']})
    else:
        set_optimizer_state_dict(model, optimizer, keyed_by_name(ckpt['optimizer'], model, optimizer),
                                 options=StateDictOptions(full_state_dict=True))


def keyed_by_name(optimizer_state, model, optimizer):
    """torch's optimizer state dict, whose parameters are numbers (their order in the param groups), with the
    parameters' names instead, as DCP's state dict functions take it. The numbers are those of `optimizer`:
    train.py builds its param groups the same way on every run."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group['params']]
    return {'state': {order[i]: s for i, s in optimizer_state['state'].items()},
            'param_groups': [dict(g, params=[order[i] for i in g['params']]) for g in optimizer_state['param_groups']]}
