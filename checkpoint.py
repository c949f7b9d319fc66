"""
Checkpoints: the model a run starts from (init_from), and out_dir/ckpt.pt, saved and loaded.

ckpt.pt has nanoGPT's keys: model (the state dict), optimizer, model_args, iter_num, best_val_loss, config
(the run's resolved settings); and ours: rng (the random generators of every process), scaler. For a
GPT-2-architecture model, model_args holds nanoGPT's GPTConfig keys only, so nanoGPT's own sample.py
reads it; a modern option (rmsnorm, rope, ...) adds its key. Loading never runs code (weights_only).

A resumed or pretrained model keeps its architecture: a config that asks for another value of any model
field (but dropout) is an error, and block_size may only shrink (the model is cropped).
"""

import os
import pickle
import random
import re
import shutil
import warnings
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

import parallel
from atomic import atomic_path, inside
from model import GPT, GPTConfig

MODEL_KEYS = [f.name for f in fields(GPTConfig)]
# fields a checkpoint or pretrained model fixes; dropout may change, block_size may only shrink
LOCKED_KEYS = [k for k in MODEL_KEYS if k not in ('dropout', 'block_size')]
NANOGPT_KEYS = ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias')
PRETRAINED = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')


# ----------------------------------------------------------------------------------------------
# the model a run starts from


def init_model(cfg, given, meta, m=None):
    """(model, checkpoint or None) for cfg['init_from']: 'scratch', 'resume' (out_dir's checkpoint), 'gpt2*' or a
    Hugging Face GPT-2 folder. `given` is the set of keys the user set (configurator.configure). With
    cfg['parallel'] == 'fsdp' the model comes back sharded over the processes of the Machine `m`: built on the
    meta device and filled shard by shard (parallel.sharded), never whole on any process but rank 0 while it
    reads pretrained weights."""
    init_from = cfg['init_from']
    fsdp = cfg.get('parallel') == 'fsdp'
    if init_from == 'scratch':
        config = model_config(cfg, given, meta)
        return (parallel.sharded(config, m, cfg['cpu_offload']) if fsdp else GPT(config)), None
    if init_from == 'resume':
        path = find(cfg['out_dir'])
        ckpt = load(path)
        config = model_config(cfg, given, meta, ckpt['model_args'], 'the checkpoint')
        if 'sharded' in ckpt and config.block_size < ckpt['model_args']['block_size']:
            raise ValueError(f'block_size={config.block_size} would crop the model of the sharded checkpoint {path}: '
                             'a sharded checkpoint resumes at its own block_size; drop --block_size')
        if fsdp:
            model = parallel.sharded(config, m, cfg['cpu_offload'], empty='sharded' in ckpt,
                                     state_dict=None if 'sharded' in ckpt else cropped(ckpt['model'], config))
            if 'sharded' in ckpt:
                load_sharded_model(ckpt, model)
            return model, ckpt
        model = model_from(ckpt, dropout=cfg['dropout'], source=path)
    elif init_from in PRETRAINED or os.path.isdir(init_from):
        import hf
        ckpt = None
        if fsdp and not m.master:  # rank 0 reads the weights and sends each process its shard
            dist.barrier()  # rank 0 downloads first; the others read the files from the cache
            config = model_config(cfg, given, meta, model_args(hf.read_gpt2_config(hf.hf_gpt2_files(init_from)[0])),
                                  init_from)
            return parallel.sharded(config, m, cfg['cpu_offload'], from_rank0=True), None
        model = hf.load_gpt2(init_from, dropout=cfg['dropout'])
        config = model_config(cfg, given, meta, model_args(model.config), init_from)
        if fsdp:
            dist.barrier()
            return parallel.sharded(config, m, cfg['cpu_offload'], from_rank0=True,
                                    state_dict=cropped(model.state_dict(), config)), None
    else:
        raise ValueError(f"init_from={init_from!r} is not 'scratch', 'resume', one of {', '.join(PRETRAINED)}, "
                         'or a folder holding a Hugging Face GPT-2 checkpoint')
    if config.block_size < model.config.block_size:
        model.crop_block_size(config.block_size)
    return model, ckpt


def cropped(state_dict, config):
    """A full state dict with its learned position table cut to config.block_size (GPT.crop_block_size's cut)."""
    if 'transformer.wpe.weight' in state_dict:
        state_dict = dict(state_dict)
        state_dict['transformer.wpe.weight'] = state_dict['transformer.wpe.weight'][:config.block_size]
    return state_dict


def model_config(cfg, given, meta, source_args=None, source=''):
    """The GPTConfig of the run: cfg's model keys for a new model; else the architecture of `source` (a
    checkpoint's or a pretrained model's model_args), with cfg's dropout and, if given, a smaller block_size."""
    if source_args is None:
        args = {k: cfg[k] for k in MODEL_KEYS}
        args['vocab_size'] = vocab_size_for(cfg['vocab_size'], meta)
        return GPTConfig(**args)
    has = model_args(GPTConfig(**source_args), full=True)
    for key in LOCKED_KEYS:
        if key in given and cfg[key] != has[key] and not (cfg[key] is None and key in ('d_ff', 'n_kv_head')):
            raise ValueError(f'{key}={cfg[key]!r} was asked for, but {source} has {key}={has[key]!r}: the '
                             f'architecture of {source} cannot change; drop --{key} or start with --init_from=scratch')
    block_size = has['block_size']
    if 'block_size' in given:
        if cfg['block_size'] > block_size:
            raise ValueError(f"block_size={cfg['block_size']} is larger than the {block_size} of {source}: "
                             'a context can be cropped, not grown')
        block_size = cfg['block_size']
    if meta and meta['vocab_size'] > has['vocab_size']:
        raise ValueError(f"the dataset's vocabulary ({meta['vocab_size']} tokens) does not fit the vocab_size="
                         f"{has['vocab_size']} of {source}: train on data made with the model's tokenizer")
    return GPTConfig(**dict(has, dropout=cfg['dropout'], block_size=block_size))


def vocab_size_for(vocab_size, meta):
    """A new model's vocabulary: as asked, else the dataset's (BPE vocabularies padded to a multiple of 64
    for faster matmuls, as GPT-2's 50257 -> 50304), else GPT-2's padded 50304."""
    if meta is None:
        return vocab_size or 50304
    needed = meta['vocab_size']
    if vocab_size is not None:
        if vocab_size < needed:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the dataset's {needed} tokens: "
                             'drop --vocab_size to take it from meta.pkl')
        return vocab_size
    return needed if meta['tokenizer'] == 'char' else -(-needed // 64) * 64


def model_args(config, full=False):
    """A GPTConfig as the dict a checkpoint stores: nanoGPT's keys, and the others only where they differ
    from what GPTConfig makes of their absence (full=True: every field)."""
    args = {f.name: getattr(config, f.name) for f in fields(GPTConfig)}
    if full:
        return args
    implied = model_args(GPTConfig(**{k: args[k] for k in NANOGPT_KEYS}), full=True)
    return {k: v for k, v in args.items() if k in NANOGPT_KEYS or v != implied[k]}


# ----------------------------------------------------------------------------------------------
# save and load


CKPT, SHARDED, TRAIN_STATE = 'ckpt.pt', 'ckpt.dcp', 'train_state.pt'


def latest(out_dir):
    """out_dir's checkpoint: out_dir/ckpt.pt (one file: DDP or one process) or out_dir/ckpt.dcp (a folder of shards:
    FSDP), None if neither. Both exist only when a save in one format was killed before it removed the older
    checkpoint of the other: the later iteration wins."""
    found = [p for p in (os.path.join(out_dir, CKPT), os.path.join(out_dir, SHARDED)) if os.path.exists(p)]
    if len(found) == 2:
        return max(found, key=lambda path: load(path).get('iter_num', 0))
    return found[0] if found else None


def find(out_dir):
    """latest(out_dir), or a FileNotFoundError that says how to make one."""
    path = latest(out_dir)
    if path is None:
        raise FileNotFoundError(f'no checkpoint at {os.path.join(out_dir, CKPT)} (nor the shards of an FSDP run, '
                                'ckpt.dcp): train one with `python train.py ...`, or check --out_dir')
    return path


def save(checkpoint, path):
    """Write the checkpoint whole or not at all: a full disk or a kill leaves the previous one in place."""
    try:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
    except (OSError, RuntimeError) as e:  # torch's writer reports a full disk as a RuntimeError
        raise disk_error(path, e) from None


def disk_error(path, e):
    """The one-line error of a failed save; e is an OSError, torch's RuntimeError or DCP's CheckpointException."""
    if isinstance(e, dcp.api.CheckpointException):  # DCP wraps each process's failure
        e = next(iter(e.failures.values()))
        e = e[0] if isinstance(e, tuple) else e
    reason = e.strerror if isinstance(e, OSError) and e.strerror else f'is the disk full? {one_line(e, 120)}'
    return OSError(f'could not save {path} ({reason}): the previous checkpoint, if any, is unchanged; free '
                   'some disk space (or choose another --out_dir) and resume with --init_from=resume')


def save_sharded(model, optimizer, state, out_dir, m):
    """Save an FSDP run as out_dir/ckpt.dcp/iter_N/, whole or not at all (every process takes part): each process
    writes its shards of the model and the optimizer state (torch.distributed.checkpoint), rank 0 the rest
    (`state`: model_args, iteration, RNG states, ...) to train_state.pt; then rank 0 points ckpt.dcp/latest at
    it with one atomic write and removes the previous checkpoint (and a ckpt.pt this run resumed from). Killed
    at any moment, `latest` names a complete checkpoint."""
    root = os.path.join(out_dir, SHARDED)
    name = f"iter_{state['iter_num']:07d}"
    path = os.path.join(root, name)
    if m.master:
        os.makedirs(root, exist_ok=True)
        if os.path.isdir(path):
            shutil.rmtree(path)  # left by a save that was killed before it was complete
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    try:
        dcp.save({'model': model_state, 'optimizer': optimizer_state['state']}, checkpoint_id=path)
    except (OSError, dcp.api.CheckpointException) as e:
        raise disk_error(path, e) from None
    if m.master:
        save(dict(state, optimizer_groups=optimizer_state['param_groups']), os.path.join(path, TRAIN_STATE))
        try:
            with atomic_path(os.path.join(root, 'latest')) as tmp, open(tmp, 'w') as f:
                f.write(name + '\n')
        except OSError as e:
            raise disk_error(root, e) from None
    if m.master:
        for other in os.listdir(root):
            if other.startswith('iter_') and other != name:
                shutil.rmtree(os.path.join(root, other))
        if os.path.exists(os.path.join(out_dir, CKPT)):
            os.remove(os.path.join(out_dir, CKPT))  # the older checkpoint this run started from
    dist.barrier()


def remove_sharded(out_dir):
    """Remove out_dir/ckpt.dcp once a newer ckpt.pt is complete (a run that changed from FSDP to DDP)."""
    if os.path.isdir(os.path.join(out_dir, SHARDED)):
        shutil.rmtree(os.path.join(out_dir, SHARDED))


def load(path, map_location='cpu'):
    """A checkpoint of this project or of nanoGPT, loaded safely (nothing in it can run code) and checked: a
    ValueError says what is wrong with a file that is damaged or was not written by train.py. `path` is a ckpt.pt
    or a ckpt.dcp folder; of the latter only train_state.pt is read, with 'sharded' set to the folder of the
    shards (load_sharded_model and load_optimizer read them)."""
    if os.path.isdir(path):
        return load_train_state(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no checkpoint at {path}: train one with `python train.py ...` '
                                f'(it writes out_dir/ckpt.pt), or check --out_dir')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:
        reason = one_line(e)
        raise ValueError(f'checkpoint {path} is unreadable or corrupt ({reason}); it may be from an interrupted '
                         'copy: restore it, or start again with --init_from=scratch') from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        raise ValueError(f'checkpoint {path} has no model and model_args: it was not written by train.py (or nanoGPT)')
    check_model_args(ckpt, path)
    check_fields(ckpt, path)
    ckpt['model'] = clean_state_dict(ckpt['model'])
    return ckpt


def load_train_state(root):
    """A sharded checkpoint's train_state.pt (everything but the tensors of the model and the optimizer)."""
    try:
        with open(os.path.join(root, 'latest')) as f:
            name = f.read().strip()
    except OSError:
        raise ValueError(f'{root} has no readable `latest` file: its first save was interrupted, or it was copied '
                         'incompletely; restore it, or start again with --init_from=scratch') from None
    if not re.fullmatch(r'iter_\d+', name):
        raise ValueError(f'{root}/latest names {name!r}, which is not a checkpoint folder (iter_N): restore the '
                         'folder, or start again with --init_from=scratch')
    path = inside(root, name)  # iter_N may be a planted link out of the folder
    if not os.path.isfile(os.path.join(path, '.metadata')):
        raise ValueError(f'{root}/latest names {name!r}, which is not a complete checkpoint in {root}: '
                         'restore the folder, or start again with --init_from=scratch')
    ShardReader(path).read_metadata()  # the index is checked before anything else reads it
    try:
        ckpt = torch.load(os.path.join(path, TRAIN_STATE), map_location='cpu', weights_only=True)
    except Exception as e:
        reason = one_line(e)
        raise ValueError(f'checkpoint {path} is unreadable or corrupt ({reason}): restore it, or start again '
                         'with --init_from=scratch') from None
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}/{TRAIN_STATE} was not written by train.py')
    check_model_args(ckpt, path)
    check_fields(ckpt, path)
    ckpt['sharded'] = path
    return ckpt


def one_line(e, limit=200):
    """An exception as one line of at most `limit` characters, for the error that explains it."""
    return ' '.join(f'{type(e).__name__}: {e}'.split())[:limit]


def check_fields(ckpt, path):
    """What train.py reads besides the model, checked for presence and type (a ValueError, one line per file);
    what may be missing is normalized: config None -> {}; optimizer missing -> finetune with a fresh one
    (load_optimizer says so); RNG states that do not fit this torch -> dropped (restore draws new ones)."""
    problems = []
    if ckpt.get('config') is None:
        ckpt['config'] = {}  # nanoGPT's checkpoints hold one; a stripped or hand-made one may not
    elif not isinstance(ckpt['config'], dict):
        problems.append(f"config is a {type(ckpt['config']).__name__}, not a dict")
    if 'iter_num' in ckpt and (not isinstance(ckpt['iter_num'], int) or isinstance(ckpt['iter_num'], bool)
                               or ckpt['iter_num'] < 0):
        problems.append(f"iter_num={ckpt['iter_num']!r} is not a whole number >= 0")
    if 'best_val_loss' in ckpt and (not isinstance(ckpt['best_val_loss'], (int, float, torch.Tensor))
                                    or isinstance(ckpt['best_val_loss'], bool)):
        problems.append(f"best_val_loss={ckpt['best_val_loss']!r} is not a number")
    for key in ('optimizer', 'scaler'):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            problems.append(f'{key} is a {type(ckpt[key]).__name__}, not a dict')
    if problems:
        raise ValueError(f"checkpoint {path} is damaged or foreign: {'; '.join(problems)}; restore it, or start again "
                         'with --init_from=scratch')
    if 'rng' in ckpt and not usable_rng_states(ckpt['rng']):
        ckpt['rng'] = []  # another torch or program wrote them: restore() says the run draws new random numbers


def usable_rng_states(states):
    """Whether `states` (one rng_state() dict, or a list of them) fit this torch, numpy and Python."""
    states = [states] if isinstance(states, dict) else states
    if not isinstance(states, list):
        return False
    torch_size = torch.get_rng_state().shape
    try:
        return all(s['torch'].dtype == torch.uint8 and s['torch'].shape == torch_size
                   and isinstance(s['cuda'], list) and s['numpy']['keys'].shape == (624,)
                   and isinstance(s['numpy']['pos'], int) and len(s['python']['state']) == 625 for s in states)
    except (KeyError, TypeError, AttributeError):
        return False


def check_model_args(ckpt, path):
    if not isinstance(ckpt.get('model_args'), dict):
        raise ValueError(f'checkpoint {path} has no model and model_args: it was not written by train.py (or nanoGPT)')
    unknown = sorted(set(ckpt['model_args']) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"checkpoint {path} has model_args this GPT does not know ({', '.join(map(repr, unknown))}): "
                         'it was written by another program or a newer version')
    try:
        GPTConfig(**ckpt['model_args'])
    except (TypeError, ValueError) as e:
        raise ValueError(f'checkpoint {path} has invalid model_args: {e}') from None


class ShardReader(dcp.FileSystemReader):
    """torch.distributed.checkpoint's reader, but its index (.metadata, a pickle) is read by an unpickler that
    builds only the index's own classes: a planted .metadata cannot run code. Checkpoints with pickled
    (non-tensor) values are refused: DCP would unpickle them without restriction; train.py writes none."""

    def read_metadata(self, *args, **kwargs):
        path = os.path.join(self.path, '.metadata')
        try:
            with open(path, 'rb') as f:
                metadata = IndexUnpickler(f).load()
        except Exception as e:
            reason = one_line(e)
            raise ValueError(f'{path} is not the index of a checkpoint train.py wrote ({reason})') from None
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
        failure = next(iter(e.failures.values()))  # (exception, traceback) of one process
        failure = failure[0] if isinstance(failure, tuple) else failure
        reason = one_line(failure, 300)
        raise ValueError(f"the shards in {ckpt['sharded']} do not match its model_args or are damaged ({reason}): "
                         'restore the folder, or start again with --init_from=scratch') from None


def load_sharded_model(ckpt, model):
    """Read a sharded checkpoint's weights into `model`, sharded or whole, on any number of processes (or one
    without torchrun): torch.distributed.checkpoint reads each process's part of every tensor, whatever parts
    the saving processes held."""
    state = get_model_state_dict(model)
    read_shards({'model': state}, ckpt)
    set_model_state_dict(model, state)


def load_optimizer(ckpt, model, optimizer):
    """Put the checkpoint's optimizer state into `optimizer` of `model`, sharded or not, from either format.
    Returns False, leaving `optimizer` fresh, when the checkpoint has none."""
    if 'sharded' not in ckpt and not ckpt.get('optimizer'):
        return False  # a checkpoint shared without it: the caller says that the optimizer starts fresh
    if 'sharded' in ckpt:
        _, state = get_state_dict(model, optimizer)  # fills a fresh optimizer's state, to be overwritten
        read_shards({'optimizer': state['state']}, ckpt)
        set_optimizer_state_dict(model, optimizer, {'state': state['state'], 'param_groups': ckpt['optimizer_groups']})
    elif parallel.is_sharded(model):
        set_optimizer_state_dict(model, optimizer, keyed_by_name(ckpt['optimizer'], model, optimizer),
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(ckpt['optimizer'])
    return True


def keyed_by_name(optimizer_state, model, optimizer):
    """torch's optimizer state dict, whose parameters are numbers (their order in the param groups), with the
    parameters' names instead, as torch.distributed.checkpoint's state dict functions take it. The numbers are
    those of `optimizer`: train.py builds its param groups the same way on every run."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group['params']]
    return {'state': {order[i]: s for i, s in optimizer_state['state'].items()},
            'param_groups': [dict(g, params=[order[i] for i in g['params']]) for g in optimizer_state['param_groups']]}


def clean_state_dict(state_dict):
    """Undo what torch.compile adds to names (`_orig_mod.`) and drop the causal-mask buffers
    (`attn.bias`) that nanoGPT saved when flash attention was unavailable."""
    return {k.replace('_orig_mod.', ''): v for k, v in state_dict.items()
            if not k.replace('_orig_mod.', '').endswith('.attn.bias')}


def model_from(ckpt, dropout=None, source='the checkpoint'):
    """The GPT a checkpoint holds, with its exact architecture (optionally another dropout). `source` names the
    file in errors."""
    args = dict(ckpt['model_args'])
    if dropout is not None:
        args['dropout'] = dropout
    model = GPT(GPTConfig(**args))
    if 'sharded' in ckpt:
        load_sharded_model(ckpt, model)
        return model
    expected, weights = model.state_dict(), ckpt['model']
    problems = {
        'missing': sorted(set(expected) - set(weights)),
        'unexpected': sorted(set(weights) - set(expected)),
        'wrongly shaped': [f'{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})' for k, v in weights.items()
                           if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)],
    }
    if any(problems.values()):
        listed = '; '.join(f"{what} {keys[:5]}" for what, keys in problems.items() if keys)
        raise ValueError(f'the weights in {source} do not match its model_args: {listed}; the file was edited '
                         'or written by another program')
    model.load_state_dict(weights)
    return model


# ----------------------------------------------------------------------------------------------
# random generators: a resumed run draws what the uninterrupted one would have


def rng_state():
    """Every random generator this process draws from, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'python': {'version': version, 'state': list(state), 'gauss': gauss},
    }


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    p = state['python']
    random.setstate((p['version'], tuple(p['state']), p['gauss']))


def all_rng_states(world_size):
    """The rng_state() of every process, in rank order (a collective: every process must call it)."""
    if world_size == 1:
        return [rng_state()]
    states = [None] * world_size
    dist.all_gather_object(states, rng_state())
    return states


# ----------------------------------------------------------------------------------------------
# a model to sample from, with its tokenizer


def load_for_sampling(init_from, out_dir, data_dir=''):
    """(model, tokenizer) for init_from: 'resume' (out_dir's ckpt.pt or ckpt.dcp; the tokenizer of data_dir, else of the data
    it was trained on), 'gpt2*' or a Hugging Face GPT-2 folder (GPT-2's BPE, unless data_dir says otherwise)."""
    import dataset
    if init_from == 'resume':
        path = find(out_dir)
        ckpt = load(path)
        model = model_from(ckpt, source=path)
        train_cfg = ckpt['config']
        data_dir = data_dir or train_cfg.get('data_dir') or (
            os.path.join('data', train_cfg['dataset']) if train_cfg.get('dataset') else '')
    elif init_from in PRETRAINED or os.path.isdir(init_from):
        import hf
        ckpt, model = None, hf.load_gpt2(init_from)
    else:
        raise ValueError(f"init_from={init_from!r} is not 'resume', one of {', '.join(PRETRAINED)}, "
                         'or a folder holding a Hugging Face GPT-2 checkpoint')
    meta = dataset.load_meta(data_dir) if data_dir else None
    if ckpt:
        dataset.check_fingerprint(ckpt['config'].get('tokenizer'), meta, data_dir, path,
                                  'pass the --data_dir of the data it was trained on')
    tokenizer = dataset.Tokenizer(meta)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f'the tokenizer ({tokenizer.name}, {tokenizer.vocab_size} tokens) does not fit the model '
                         f'(vocab_size={model.config.vocab_size}): pass the --data_dir of the data it was trained on')
    return model, tokenizer
