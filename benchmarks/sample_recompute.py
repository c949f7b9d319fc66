"""
sample.py as nanoGPT generates: no key/value cache, the whole (cropped) sequence through the model for
every new token. The baseline of benchmarks/generate_speed.py as a whole process.

    python benchmarks/sample_recompute.py --out_dir=out-shakespeare-char --num_samples=1 --max_new_tokens=500

Same options and defaults as sample.py (sampling.py's, those that apply), the same checkpoint and tokenizer
loading (checkpoint.load_model, tokenizer.for_model), the same sampling; prints the samples when they are done.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import checkpoint
import machine as machines
import sampling
import tokenizer as tokenizers
from configurator import cli, configure
from model import sample_next

DEFAULTS = {k: sampling.DEFAULTS[k] for k in ('out_dir', 'data_dir', 'start', 'num_samples', 'max_new_tokens',
                                             'temperature', 'top_k', 'top_p', 'seed', 'device', 'dtype')}


@torch.no_grad()
def generate_recompute(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, vocab_size=None):
    """nanoGPT's GPT.generate: for each new token, forward the last block_size tokens and sample from the
    last position's logits (the ids below vocab_size only, as sample.py: those the tokenizer decodes)."""
    model.eval()
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
        logits, _ = model(idx_cond)
        idx_next = sample_next(logits[:, -1, :vocab_size], temperature, top_k, top_p)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, sampling.TYPES_OF_NONE)
    machine = machines.setup(cfg['device'], cfg['dtype'], compile=False)
    model, source = checkpoint.load_model('resume', cfg['out_dir'])
    tokenizer = tokenizers.for_model(model, source, cfg['data_dir'])
    model.eval().to(machine.device)
    torch.manual_seed(cfg['seed'])
    prompt_ids = tokenizer.encode(sampling.read_prompt(cfg['start']))
    if not prompt_ids:
        raise ValueError('the prompt is empty: give one with --start=TEXT or --start=FILE:path')
    idx = torch.tensor(prompt_ids, dtype=torch.long, device=machine.device)[None].repeat(cfg['num_samples'], 1)
    t0 = time.time()
    with machine.autocast():
        out = generate_recompute(model, idx, cfg['max_new_tokens'], cfg['temperature'], cfg['top_k'], cfg['top_p'],
                                 tokenizer.vocab_size)
    dt = time.time() - t0
    samples = [tokenizer.decode(row.tolist()) for row in out]
    for text in samples:
        print(text + '\n' + sampling.SEPARATOR)
    print(f"({cfg['num_samples']} x {cfg['max_new_tokens']} tokens in {dt:.1f}s, "
          f"{cfg['num_samples'] * cfg['max_new_tokens'] / max(dt, 1e-9):.0f} tokens/s, recomputed)", file=sys.stderr)
    return samples


if __name__ == '__main__':
    cli(main)
