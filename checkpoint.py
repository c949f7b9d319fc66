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
import random
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist

from atomic import atomic_path
from model import GPT, GPTConfig

MODEL_KEYS = [f.name for f in fields(GPTConfig)]
# fields a checkpoint or pretrained model fixes; dropout may change, block_size may only shrink
LOCKED_KEYS = [k for k in MODEL_KEYS if k not in ('dropout', 'block_size')]
NANOGPT_KEYS = ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias')
PRETRAINED = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')


# ----------------------------------------------------------------------------------------------
# the model a run starts from


def init_model(cfg, given, meta):
    """(model, checkpoint or None) for cfg['init_from']: 'scratch', 'resume' (out_dir/ckpt.pt), 'gpt2*' or a
    Hugging Face GPT-2 folder. `given` is the set of keys the user set (configurator.configure)."""
    init_from = cfg['init_from']
    if init_from == 'scratch':
        return GPT(model_config(cfg, given, meta)), None
    if init_from == 'resume':
        path = os.path.join(cfg['out_dir'], 'ckpt.pt')
        ckpt = load(path)
        config = model_config(cfg, given, meta, ckpt['model_args'], 'the checkpoint')
        model = model_from(ckpt, dropout=cfg['dropout'], source=path)
    elif init_from in PRETRAINED or os.path.isdir(init_from):
        import hf
        ckpt = None
        model = hf.load_gpt2(init_from, dropout=cfg['dropout'])
        config = model_config(cfg, given, meta, model_args(model.config), init_from)
    else:
        raise ValueError(f"init_from={init_from!r} is not 'scratch', 'resume', one of {', '.join(PRETRAINED)}, "
                         'or a folder holding a Hugging Face GPT-2 checkpoint')
    if config.block_size < model.config.block_size:
        model.crop_block_size(config.block_size)
    return model, ckpt


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


def save(checkpoint, path):
    """Write the checkpoint whole or not at all: a full disk or a kill leaves the previous one in place."""
    try:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
    except OSError as e:
        raise OSError(f'could not save {path} ({e.strerror or e}): the previous checkpoint, if any, is unchanged; '
                      'free some disk space (or choose another --out_dir) and resume with --init_from=resume') from None


def load(path, map_location='cpu'):
    """A checkpoint of this project or of nanoGPT, loaded safely (weights_only: it cannot run code) and checked:
    a ValueError says what is wrong with a file that is damaged or was not written by train.py."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no checkpoint at {path}: train one with `python train.py ...` '
                                f'(it writes out_dir/ckpt.pt), or check --out_dir')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:200]
        raise ValueError(f'checkpoint {path} is unreadable or corrupt ({reason}); it may be from an interrupted '
                         'copy: restore it, or start again with --init_from=scratch') from None
    if not isinstance(ckpt, dict) or not all(isinstance(ckpt.get(k), dict) for k in ('model', 'model_args')):
        raise ValueError(f'checkpoint {path} has no model and model_args: it was not written by train.py (or nanoGPT)')
    unknown = sorted(set(ckpt['model_args']) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"checkpoint {path} has model_args this GPT does not know ({', '.join(map(repr, unknown))}): "
                         'it was written by another program or a newer version')
    try:
        GPTConfig(**ckpt['model_args'])
    except (TypeError, ValueError) as e:
        raise ValueError(f'checkpoint {path} has invalid model_args: {e}') from None
    ckpt['model'] = clean_state_dict(ckpt['model'])
    return ckpt


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
    """(model, tokenizer) for init_from: 'resume' (out_dir/ckpt.pt; the tokenizer of data_dir, else of the data
    it was trained on), 'gpt2*' or a Hugging Face GPT-2 folder (GPT-2's BPE, unless data_dir says otherwise)."""
    import dataset
    if init_from == 'resume':
        path = os.path.join(out_dir, 'ckpt.pt')
        ckpt = load(path)
        model = model_from(ckpt, source=path)
        train_cfg = ckpt.get('config') or {}
        data_dir = data_dir or train_cfg.get('data_dir') or (
            os.path.join('data', train_cfg['dataset']) if train_cfg.get('dataset') else '')
    elif init_from in PRETRAINED or os.path.isdir(init_from):
        import hf
        model = hf.load_gpt2(init_from)
    else:
        raise ValueError(f"init_from={init_from!r} is not 'resume', one of {', '.join(PRETRAINED)}, "
                         'or a folder holding a Hugging Face GPT-2 checkpoint')
    tokenizer = dataset.Tokenizer(dataset.load_meta(data_dir) if data_dir else None)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f'the tokenizer ({tokenizer.name}, {tokenizer.vocab_size} tokens) does not fit the model '
                         f'(vocab_size={model.config.vocab_size}): pass the --data_dir of the data it was trained on')
    return model, tokenizer
