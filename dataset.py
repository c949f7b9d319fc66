"""
A prepared dataset: data/<name>/train.bin and val.bin, one long stream of token ids each, and meta.pkl,
which says how to read them; the batches a training run draws from them (text <-> ids: tokenizer.py).

meta.pkl is a dict of plain values: vocab_size, dtype ('uint16' | 'uint32'), tokenizer ('char', a tiktoken encoding
such as 'gpt2', or 'tokenizer.json': a Hugging Face tokenizer copied beside the bins, with its fingerprint), for
'char' the stoi / itos tables, and the bins' token counts (train_tokens, val_tokens), checked on reading so that the
files of two preparations are never read together. nanoGPT's meta.pkl (char, no dtype, tokenizer or counts) and its
meta-less GPT-2 bins read as uint16 / gpt2. Reading a meta.pkl runs no code.
"""

import functools
import hashlib
import io
import json
import os
import pickle

import numpy as np
import torch


class PlainUnpickler(pickle.Unpickler):
    """Plain values only: every class lookup, which is how a pickle runs code, is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f'it asks for {module}.{name}, and only plain values are allowed')


def load_meta(data_dir):
    """The dataset's meta.pkl with defaults filled in, or None when it has none (nanoGPT's GPT-2 bins)."""
    path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(path):
        return None
    try:
        with open(path, 'rb') as f:
            meta = PlainUnpickler(io.BytesIO(f.read())).load()
    except Exception as e:
        raise ValueError(f'{path} is unreadable ({type(e).__name__}: {e}): it is damaged or not a dataset\'s '
                         'meta.pkl; prepare the dataset again (data/<name>/prepare.py or prepare.py)') from None
    problems = meta_problems(meta)
    if problems:
        raise ValueError(f"{path} is incomplete or wrong ({'; '.join(problems)}): prepare the dataset again")
    meta.setdefault('dtype', 'uint16')
    meta.setdefault('tokenizer', 'char')
    return meta


def meta_problems(meta):
    if not isinstance(meta, dict):
        return [f'it holds a {type(meta).__name__}, not a dict']
    out = []
    tokenizer = meta.get('tokenizer', 'char')  # no key: nanoGPT's, which writes a meta.pkl for char data only
    if not isinstance(meta.get('vocab_size'), int) or meta['vocab_size'] < 1:
        out.append(f"vocab_size={meta.get('vocab_size')!r} is not a positive integer")
    if not isinstance(tokenizer, str) or os.path.basename(tokenizer) != tokenizer:  # a name, never a path
        out.append(f"tokenizer={tokenizer!r} is not 'char', 'tokenizer.json' or the name of a tiktoken encoding")
    if tokenizer == 'tokenizer.json' and not isinstance(meta.get('fingerprint'), str):
        out.append('a tokenizer.json dataset needs the fingerprint of its tokenizer (prepare.py records it)')
    if meta.get('dtype', 'uint16') not in ('uint16', 'uint32'):
        out.append(f"dtype={meta['dtype']!r} is not 'uint16' or 'uint32'")
    if tokenizer == 'char':
        stoi, itos = meta.get('stoi'), meta.get('itos')
        if not isinstance(stoi, dict) or not isinstance(itos, dict) or len(stoi) != len(itos):
            out.append('a char tokenizer needs stoi and itos tables of the same size')
        elif sorted(itos) != list(range(len(itos))) or any(stoi.get(c) != i for i, c in itos.items()):
            out.append('stoi and itos are not inverse tables of the ids 0..n-1')
    return out


def folder(dataset, data_dir=''):
    return data_dir or os.path.join('data', dataset)


def padded_vocab(n, multiple=64):
    """n rounded up to a multiple of 64: GPT-2's 50257 becomes 50304, whose matmuls are faster."""
    return -(-n // multiple) * multiple


def token_dtype(meta):
    return np.dtype(meta['dtype'] if meta else 'uint16')


def check_bins(data_dir, meta, block_size):
    """A ValueError unless both bins exist, belong to this meta.pkl and hold more than one block."""
    for split in ('train', 'val'):
        path = os.path.join(data_dir, f'{split}.bin')
        if not os.path.exists(path):
            raise FileNotFoundError(f'{path} is missing: prepare the dataset again (data/<name>/prepare.py)')
        n = os.path.getsize(path) // token_dtype(meta).itemsize
        expected = (meta or {}).get(f'{split}_tokens')
        if expected is not None and n != expected:
            raise ValueError(f'{path} holds {n:,} tokens but meta.pkl says {expected:,}: the folder mixes two '
                             'preparations (one was interrupted, or files were copied in); prepare the dataset again')
        if n <= block_size:
            fix = f'use a smaller --block_size (at most {n - 1}) or more data' if n > 1 else 'prepare it again'
            raise ValueError(f'{split}.bin in {data_dir} has {n} tokens, too few for block_size={block_size}: {fix}')


def batches(data_dir, meta, *args):
    """The Batches of data_dir (the other arguments: Batches'); chat data's (chat_data.py) know its loss mask."""
    if (meta or {}).get('format') == 'chat':  # prepare.py --format=chat
        import chat_data
        return chat_data.ChatBatches(data_dir, meta, *args)
    return Batches(data_dir, meta, *args)


class Batches:
    """Random windows of block_size + 1 tokens, each batch a pure function of its key (seed, iteration, micro-step
    over all processes; for evals seed, split, k): a resumed run sees an uninterrupted one's, on any world size."""

    def __init__(self, data_dir, meta, block_size, batch_size, device, seed, vocab_size):
        check_bins(data_dir, meta, block_size)
        self.data_dir, self.block_size, self.batch_size = data_dir, block_size, batch_size
        self.device, self.seed, self.dtype, self.vocab_size = device, seed, token_dtype(meta), vocab_size

    def train_batch(self, iter_num, micro_step):
        return self.get('train', [1, iter_num, micro_step])

    def eval_batch(self, split, k):
        return self.get(split, [2, k])

    def get(self, split, key):
        # a fresh memmap each time: numpy keeps pages of a long-lived one in memory (a leak on big corpora)
        data = np.memmap(os.path.join(self.data_dir, f'{split}.bin'), dtype=self.dtype, mode='r')
        rng = np.random.default_rng([self.seed, *key])
        starts = rng.integers(0, len(data) - self.block_size, size=self.batch_size)
        xy = np.stack([data[s:s + self.block_size + 1] for s in starts])
        return self.to_device(split, np.stack([xy[:, :-1], xy[:, 1:]]).astype(np.int64))

    def to_device(self, split, xy):  # xy: x and y, a (2, B, T) int64 array
        if xy.max() >= self.vocab_size:  # checked here, where it is cheap: on a GPU it would be a device assert
            raise ValueError(f'{split}.bin in {self.data_dir} holds token id {xy.max()}, but the model has only '
                             f'{self.vocab_size} (ids 0..{self.vocab_size - 1}): the bins were made with another '
                             'tokenizer than meta.pkl says; prepare the dataset again')
        xy = torch.from_numpy(xy)  # one contiguous block: one copy, and non_blocking needs contiguous pinned memory
        if self.device.startswith('cuda'):
            xy = xy.pin_memory().to(self.device, non_blocking=True)
        else:
            xy = xy.to(self.device)
        return xy[0], xy[1]  # each a contiguous (B, T)

    def answer_tokens(self, iter_num, micro_steps):  # chat data counts the targets of its answers; here all count
        return None

    @functools.cached_property
    def token_bytes(self):  # bits per byte's denominator: the UTF-8 bytes of each id (all 0: unknown)
        import tokenizer
        return tokenizer.byte_table(self.data_dir, self.vocab_size, self.device)


def fingerprint(meta):
    """A short sha256 of meta's vocabulary (None: GPT-2's BPE). A checkpoint records its data's, so that ids
    remapped by a new preparation (another character set of the same size) are caught by every reader."""
    meta = meta or {'tokenizer': 'gpt2'}
    if meta.get('tokenizer') == 'tokenizer.json':  # its tokens by id, hashed by tokenizer.HFTokenizer
        return meta['fingerprint']
    char = meta.get('tokenizer', 'char') == 'char'
    vocabulary = [meta['itos'][i] for i in range(len(meta['itos']))] if char else meta['tokenizer']  # tiktoken's name
    return hashlib.sha256(json.dumps(vocabulary).encode()).hexdigest()[:16]


def check_fingerprint(recorded, meta, data_dir, source, fix):
    """A ValueError when checkpoint `source` recorded another vocabulary (older ones and nanoGPT's record none)."""
    if recorded is not None and recorded != fingerprint(meta):
        where = os.path.join(data_dir, 'meta.pkl') if meta else f'{data_dir} (no meta.pkl: GPT-2 BPE)'
        raise ValueError(f'{where} describes another vocabulary than {source} was trained on (tokenizer '
                         f'fingerprint {fingerprint(meta)}, the checkpoint has {recorded}): the data was prepared '
                         f'again or is another dataset, and its ids mean other tokens; {fix}')
