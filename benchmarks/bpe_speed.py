"""
Your own BPE's speed (bpe.py, prepare.py --tokenizer=bpe): the time to train it on Tiny Shakespeare and on about
--megabytes of text, and its encoding throughput against tiktoken's GPT-2 on the same documents, all on all cores:
the tokenizers library's encode_batch (its Rust thread pool), and the same BPE in tiktoken (bpe.tiktoken_encoding,
what prepare.py encodes with) and GPT-2's, each with encode_ordinary_batch on --threads threads.

    flock /tmp/timing.lock python benchmarks/bpe_speed.py [--megabytes=100] [--vocab_size=4096] [--repeats=3]

The large text is Tiny Shakespeare repeated with variations (each copy's lines shuffled, one word in five of them
reversed, so that the copies hold new words too): a stand-in with the statistics of one author, not of the web.
Encoding alternates the two tokenizers (A B A B) over --repeats; medians and (min-max) are printed.
"""

import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import bpe
import tokenizer as tokenizers
from configurator import cli, configure

SHAKESPEARE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           'shared', 'data', 'tinyshakespeare', 'input.txt')
DEFAULTS = {
    'input': SHAKESPEARE,
    'megabytes': 100,  # the large text
    'vocab_size': 4096,
    'encode_megabytes': 20,  # of the large text, encoded by both tokenizers
    'doc_chars': 4000,  # documents of about this size, for the encoders' batches
    'repeats': 3,
    'threads': os.cpu_count() or 1,
}


def varied_copies(text, megabytes, seed=0):
    """text repeated to about megabytes, each copy's lines shuffled and a fifth of its words reversed."""
    rng, lines, out, size = random.Random(seed), text.split('\n'), [], 0
    while size < megabytes * 1e6:
        copy = lines[:]
        rng.shuffle(copy)
        copy = [' '.join(w[::-1] if rng.random() < 0.2 else w for w in line.split(' ')) for line in copy]
        out.append('\n'.join(copy))
        size += len(out[-1]) + 1
    return '\n'.join(out)


def documents(text, doc_chars):
    """text cut at line ends into pieces of about doc_chars characters."""
    out, start = [], 0
    while start < len(text):
        end = text.find('\n', start + doc_chars)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def train_seconds(text, vocab_size, folder):
    t0 = time.perf_counter()
    bpe.train(documents(text, 1 << 20), folder, vocab_size, [bpe.END_OF_TEXT], progress=False)
    return time.perf_counter() - t0


def main():
    cfg = configure(DEFAULTS, sys.argv[1:])
    import tiktoken
    with open(cfg['input'], encoding='utf-8') as f:
        shakespeare = f.read()
    large = varied_copies(shakespeare, cfg['megabytes'])
    print(f"cpu: {os.cpu_count()} cores; train: Tiny Shakespeare ({len(shakespeare.encode()) / 1e6:.1f} MB) and "
          f"{len(large.encode()) / 1e6:.0f} MB of varied copies, vocab_size={cfg['vocab_size']}")
    with tempfile.TemporaryDirectory() as tmp:
        small_s = train_seconds(shakespeare, cfg['vocab_size'], os.path.join(tmp, 'small'))
        large_s = train_seconds(large, cfg['vocab_size'], os.path.join(tmp, 'large'))
        print(f'training: Tiny Shakespeare {small_s:.1f} s, {cfg["megabytes"]} MB {large_s:.1f} s')
        ours = tokenizers.HFTokenizer(os.path.join(tmp, 'large'))
    ours_tiktoken = bpe.tiktoken_encoding(ours)
    gpt2 = tiktoken.get_encoding('gpt2')
    docs = documents(large[:int(cfg['encode_megabytes'] * 1e6)], cfg['doc_chars'])
    nbytes = sum(len(d.encode()) for d in docs)
    encoders = {  # name: docs -> lists of ids
        'bpe, tokenizers': lambda: [e.ids for e in ours.backend.encode_batch(docs, add_special_tokens=False)],
        'bpe, tiktoken': lambda: ours_tiktoken.encode_ordinary_batch(docs, num_threads=cfg['threads']),
        'gpt2, tiktoken': lambda: gpt2.encode_ordinary_batch(docs, num_threads=cfg['threads'])}
    times, tokens = {name: [] for name in encoders}, {}
    for _ in range(cfg['repeats']):
        for name, encode in encoders.items():
            t0 = time.perf_counter()
            tokens[name] = sum(map(len, encode()))
            times[name].append(time.perf_counter() - t0)
    for name, n in tokens.items():
        mb_s = [nbytes / 1e6 / t for t in times[name]]
        print(f'encoding {name}: {statistics.median(mb_s):.1f} MB/s ({min(mb_s):.1f}-{max(mb_s):.1f}), '
              f'{n / statistics.median(times[name]) / 1e6:.2f}M tokens/s, {nbytes / n:.2f} bytes per token')
    gpt2_s = statistics.median(times['gpt2, tiktoken'])
    print(f"throughput in bytes against GPT-2's: bpe in tiktoken {gpt2_s / statistics.median(times['bpe, tiktoken']):.2f},"
          f" bpe in tokenizers {gpt2_s / statistics.median(times['bpe, tokenizers']):.2f}")


if __name__ == '__main__':
    cli(main)
