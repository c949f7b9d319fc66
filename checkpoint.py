"""
Where a model comes from, and out_dir/ckpt.pt.

    model, ckpt = checkpoint.init_model(cfg, meta, machine)      # train.py: init_from's model, built once
    model, source = checkpoint.load_model('resume', 'out')        # sample.py, evaluate.py, export.py

init_from: 'scratch', 'resume' (out_dir's ckpt.pt, or FSDP's shards ckpt.dcp: sharded_checkpoint.py), pretrained
weights (hf.py: GPT-2, Llama, Qwen2 and Qwen3 folders and hub ids), or 'auto' (resume where out_dir holds a
checkpoint, else scratch). Their architecture is kept: only dropout may change, and block_size shrink (positions cropped).
ckpt.pt has nanoGPT's keys (model, optimizer, model_args, iter_num, best_val_loss, config: the resolved settings)
and ours: rng (every process's generators), scaler. A GPT-2 model's model_args has nanoGPT's GPTConfig keys only,
so nanoGPT's sample.py reads it. Loading never runs code.
"""

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist

import dataset
from atomic import atomic_path, save_failed
from configurator import one_line
from model import GPT, GPTConfig

MODEL_KEYS = [f.name for f in fields(GPTConfig)]
# fields a checkpoint or pretrained model fixes; dropout may change, block_size may only shrink
LOCKED_KEYS = [k for k in MODEL_KEYS if k not in ('dropout', 'block_size')]
NANOGPT_KEYS = ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias')
CKPT = 'ckpt.pt'


# ----------------------------------------------------------------------------------------------
# the model a run starts from: open the source, decide the architecture, build once, load once


@dataclass
class Source:
    name: str  # for messages: 'the checkpoint', 'gpt2-xl', a folder
    path: str = ''  # where its weights are: out/ckpt.pt, out/ckpt.dcp, 'gpt2-xl', a folder
    model_args: dict = None  # its architecture; None for a new model
    ckpt: dict = None  # resume: the checkpoint (its 'model' holds the weights of a ckpt.pt)
    weights: object = None  # pretrained: a function that reads the full state dict, under GPT's names


def source_kind(init_from):
    """'scratch', 'resume' or 'pretrained': the one place that says what an init_from names."""
    if init_from in ('scratch', 'resume'):
        return init_from
    import hf  # only runs that start from pretrained weights read Hugging Face files
    if hf.is_pretrained(init_from):
        return 'pretrained'
    raise ValueError(f"init_from={init_from!r} is not 'scratch', 'resume', 'auto', one of {', '.join(hf.PRETRAINED)}, "
                     'a Hugging Face folder (GPT-2, Llama, Qwen2, Qwen3) or hub id (organization/name)')


def resolved(init_from, out_dir):
    """init_from with 'auto' decided: 'resume' where out_dir holds a checkpoint (ckpt.pt, ckpt.dcp), else 'scratch'."""
    return ('resume' if find_checkpoint(out_dir) else 'scratch') if init_from == 'auto' else init_from


@contextmanager
def master_first(machine):
    """Rank 0 runs the block first (a download fills the cache), then the other processes."""
    parallel = machine is not None and machine.world_size > 1
    if parallel and not machine.master:
        dist.barrier()
    yield
    if parallel and machine.master:
        dist.barrier()


def open_source(init_from, out_dir):
    """The Source of init_from; pretrained weights are read (and downloaded) only when its `weights` is called."""
    kind = source_kind(resolved(init_from, out_dir))
    if kind == 'scratch':
        return Source('a new model')
    if kind == 'resume':
        path = require_checkpoint(out_dir)
        ckpt = load(path)
        return Source('the checkpoint', path, ckpt['model_args'], ckpt)
    import hf  # path: a hub id's snapshot folder, where its config and tokenizer files are
    path = hf.local_folder(init_from)
    return Source(init_from, path, hf.model_args(path), weights=lambda: hf.state_dict(init_from))


def init_model(cfg, meta, machine):
    """(model, checkpoint or None) for cfg.init_from, built once: on this process, or sharded (parallel.build)."""
    source = open_source(cfg['init_from'], cfg['out_dir'])
    config = architecture(cfg, meta, source)
    if cfg['lora_rank'] or 'lora' in (source.ckpt or {}):
        import lora  # a LoRA run: the base frozen, adapters to train (resumed: the recorded base, the checkpoint's)
        return lora.build(config, cfg, source, machine), source.ckpt
    if cfg['parallel'] == 'fsdp':
        import parallel
        return parallel.build(config, source, machine, cfg['cpu_offload']), source.ckpt
    model = GPT(config)  # a new model's initialization is drawn here
    if source.model_args is not None:
        with master_first(machine):  # rank 0 downloads pretrained weights, the others then read the cache
            load_weights(model, source)
    return model, source.ckpt


def load_model(init_from, out_dir='out'):
    """(model, source): the model of a checkpoint or of pretrained weights exactly as saved, for sampling,
    evaluating or exporting, and where it came from (tokenizer.for_model reads what it was trained on)."""
    source = open_source(init_from, out_dir)
    if source.model_args is None:
        raise ValueError("init_from='scratch' has no weights to use: give 'resume' (with --out_dir), a GPT-2 name "
                         'or a Hugging Face folder')
    with torch.device('cpu' if 'sharded' in (source.ckpt or {}) else 'meta'):  # meta: weights taken as stored
        model = GPT(GPTConfig(**source.model_args))
    if 'lora' in (source.ckpt or {}):
        import lora  # a LoRA run's checkpoint: its recorded base with the adapters merged in, one ordinary GPT
        return lora.merged_model(model, source), source
    load_weights(model, source)
    return model, source


def architecture(cfg, meta, source):
    """The run's GPTConfig: cfg's for a new model, else the source's with cfg's dropout and a given --block_size."""
    if source.model_args is None:
        return GPTConfig(**dict({k: cfg[k] for k in MODEL_KEYS}, vocab_size=vocab_size_for(cfg['vocab_size'], meta)))
    has = model_args(GPTConfig(**source.model_args), full=True)
    for key in LOCKED_KEYS:
        derived = cfg[key] is None and key in ('d_ff', 'n_kv_head', 'head_size')  # None: the model's own
        if key in cfg.given and cfg[key] != has[key] and not derived:
            raise ValueError(f'{key}={cfg[key]!r} was asked for, but {source.name} has {key}={has[key]!r}: its '
                             f'architecture cannot change; drop --{key} or start with --init_from=scratch')
    block_size = cfg['block_size'] if 'block_size' in cfg.given else has['block_size']
    if block_size > has['block_size']:
        raise ValueError(f"block_size={block_size} is larger than the {has['block_size']} of {source.name}: "
                         'a context can be cropped, not grown')
    if block_size < has['block_size'] and 'sharded' in (source.ckpt or {}):
        raise ValueError(f'block_size={block_size} would crop the model of the sharded checkpoint '
                         f'{source.name}: a sharded checkpoint resumes at its own block_size; drop --block_size')
    if meta and meta['vocab_size'] > has['vocab_size']:
        raise ValueError(f"the dataset's vocabulary ({meta['vocab_size']} tokens) does not fit the vocab_size="
                         f"{has['vocab_size']} of {source.name}: train on data made with the model's tokenizer")
    return GPTConfig(**dict(has, dropout=cfg['dropout'], block_size=block_size))


def vocab_size_for(vocab_size, meta):
    """A new model's vocabulary: as asked, else the dataset's (BPE ones padded, dataset.padded_vocab), else 50304."""
    if meta is None:
        return vocab_size or 50304
    needed = meta['vocab_size']
    if vocab_size is not None:
        if vocab_size < needed:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the dataset's {needed} tokens: "
                             'drop --vocab_size to take it from meta.pkl')
        return vocab_size
    return needed if meta['tokenizer'] == 'char' else dataset.padded_vocab(needed)


def model_args(config, full=False):
    """A GPTConfig as a checkpoint stores it: nanoGPT's keys, others only where not implied (full=True: all)."""
    args = {f.name: getattr(config, f.name) for f in fields(GPTConfig)}
    if full:
        return args
    implied = model_args(GPTConfig(**{k: args[k] for k in NANOGPT_KEYS}), full=True)
    return {k: v for k, v in args.items() if k in NANOGPT_KEYS or v != implied[k]}


def checked_weights(model, source):
    """The source's full state dict, positions cropped to block_size, checked to hold exactly the model's tensors."""
    weights = dict(source.ckpt['model'] if source.ckpt else source.weights())
    if 'transformer.wpe.weight' in weights:
        weights['transformer.wpe.weight'] = weights['transformer.wpe.weight'][:model.config.block_size]
    if model.config.tie_embeddings and 'transformer.wte.weight' in weights:
        weights['lm_head.weight'] = weights['transformer.wte.weight']  # lm_head is wte
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problems = {
        'missing': sorted(set(expected) - set(weights)), 'unexpected': sorted(set(weights) - set(expected)),
        'wrongly shaped': [f'{k} {tuple(v.shape)} (expected {tuple(expected[k])})' for k, v in sorted(weights.items())
                           if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k])],
    }
    if any(problems.values()):
        listed = '; '.join(f"{what}: {', '.join(keys[:8])}{f' and {len(keys) - 8} more' if len(keys) > 8 else ''}"
                           for what, keys in problems.items() if keys)
        raise ValueError(f'the weights in {source.path} do not match its architecture ({listed}): the files were '
                         'edited, truncated or written by another program')
    return weights


def load_weights(model, source):
    """The source's weights into a model built on this process (whole)."""
    if 'sharded' in (source.ckpt or {}):
        import sharded_checkpoint
        sharded_checkpoint.load_model(source.ckpt, model)
    else:
        model.load_state_dict(checked_weights(model, source), assign=model.lm_head.weight.is_meta)


# ----------------------------------------------------------------------------------------------
# out_dir's checkpoint, saved and loaded


def find_checkpoint(out_dir):
    """out_dir/ckpt.pt (DDP or one process) or the shards of FSDP, out_dir/ckpt.dcp, else None. Both exist only when
    a save was killed before it removed the other format's older checkpoint: the later iteration wins."""
    found = [p for p in (os.path.join(out_dir, CKPT), os.path.join(out_dir, 'ckpt.dcp')) if os.path.exists(p)]
    if len(found) == 2:
        return max(found, key=lambda path: load(path).get('iter_num', 0))
    return found[0] if found else None


def require_checkpoint(out_dir):
    path = find_checkpoint(out_dir)
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
        raise save_failed(path, e) from None


def load(path):
    """A ckpt.pt (ours or nanoGPT's) or a ckpt.dcp's train state, read without running code and checked."""
    if os.path.isdir(path):
        import sharded_checkpoint
        ckpt = sharded_checkpoint.load_train_state(path)
    else:
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except Exception as e:
            raise ValueError(f'checkpoint {path} is unreadable or corrupt ({one_line(e)}); it may be from an '
                             'interrupted copy: restore it, or start again with --init_from=scratch') from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
            ckpt = {}  # no weights: refused below, as a file without model_args
        # names without torch.compile's `_orig_mod.`; no causal-mask buffers (nanoGPT's without flash attention)
        ckpt['model'] = {k.replace('_orig_mod.', ''): v for k, v in ckpt.get('model', {}).items()
                         if not k.endswith('.attn.bias')}
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
    check_fields(ckpt, path)
    return ckpt


def check_fields(ckpt, path):
    """What train.py reads besides the model and the RNG states (resume.py checks those), checked."""
    if ckpt.get('config') is None:
        ckpt['config'] = {}  # nanoGPT's checkpoints hold one; a stripped or hand-made one may not
    problems = [f'{key} is a {type(ckpt[key]).__name__}, not a dict' for key in ('config', 'optimizer', 'scaler')
                if ckpt.get(key) is not None and not isinstance(ckpt[key], dict)]
    iter_num, best_val_loss = ckpt.get('iter_num', 0), ckpt.get('best_val_loss', 0.0)
    if type(iter_num) is not int or iter_num < 0:
        problems.append(f'iter_num={iter_num!r} is not a whole number >= 0')
    if type(best_val_loss) is bool or not isinstance(best_val_loss, (int, float, torch.Tensor)):
        problems.append(f'best_val_loss={best_val_loss!r} is not a number')
    if problems:
        raise ValueError(f"checkpoint {path} is damaged or foreign: {'; '.join(problems)}; restore it, or start again "
                         'with --init_from=scratch')


# ----------------------------------------------------------------------------------------------
# random generators: a resumed run draws what the uninterrupted one would have


def all_rng_states(world_size):
    """Every process's random generators, in rank order (a collective), in types torch.load(weights_only=True)
    accepts: each its own GPU's only (another process count or fewer visible GPUs must still resume)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    mine = {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'python': {'version': version, 'state': list(state), 'gauss': gauss},
    }
    if world_size == 1:
        return [mine]
    states = [None] * world_size
    dist.all_gather_object(states, mine)
    return states
