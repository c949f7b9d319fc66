"""Tests run offline on CPU: the shared offline assets (../shared) stand in for downloads when they exist;
a test that needs one that is missing (a user's machine has no ../shared) is skipped with the reason."""
import os
import pickle
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
sys.path.insert(0, ROOT)

if os.path.isdir(os.path.join(SHARED, 'tiktoken_cache')):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'offline')

SHAKESPEARE = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')
WORDS = ('the king my lord shall speak of love and death to her thy heart is not what thou art gone sweet night '
         'come good sir I will be true, yet here we stand! O fair day; what say you? no more.').split()


def shakespeare():
    """Tiny Shakespeare's path, or a skip: it comes from ../shared (these machines cannot download it)."""
    if not os.path.isfile(SHAKESPEARE):
        pytest.skip(f'needs Tiny Shakespeare at {SHAKESPEARE} (the offline copy in ../shared)')
    return SHAKESPEARE


def gpt2_encoding():
    """tiktoken's GPT-2 encoding, or a skip when it can be neither loaded from a cache nor downloaded."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        pytest.skip(f"needs tiktoken's gpt2 encoding (no cache and no network: {type(e).__name__})")


def make_text(n_chars, seed=0):
    """Text of about n_chars characters in lines of words, the same for a seed: a stand-in corpus."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_chars:
        line = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize()
        lines.append(line)
        size += len(line) + 1
    return '\n'.join(lines)[:n_chars]


def write_char_dataset(path, n_chars=20_000, val_chars=2_000):
    """A small character-level dataset of make_text as corpus.py writes it (meta.pkl with its token counts)."""
    import numpy as np
    text = make_text(n_chars)
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    os.makedirs(path, exist_ok=True)
    ids[:-val_chars].tofile(os.path.join(path, 'train.bin'))
    ids[-val_chars:].tofile(os.path.join(path, 'val.bin'))
    meta = {'vocab_size': len(chars), 'dtype': 'uint16', 'tokenizer': 'char', 'train_tokens': n_chars - val_chars,
            'val_tokens': val_chars, 'stoi': {c: i for i, c in enumerate(chars)}, 'itos': dict(enumerate(chars))}
    with open(os.path.join(path, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    return str(path)
