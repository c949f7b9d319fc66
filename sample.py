"""
Sample from a trained model, or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=3
    python sample.py --out_dir=out --start=FILE:prompt.txt --temperature=0 --out_file=samples.txt

All samples are generated together as one batch, with a key/value cache; the first sample of
the batch is printed as it is generated, the others when the batch is done.
"""

import contextlib
import os
import sys
import time

import torch

import checkpoint
import machine as machines
import tokenizer as tokenizers
from atomic import atomic_path
from configurator import cli, configure

DEFAULTS = dict(
    init_from='resume',  # 'resume' (from out_dir/ckpt.pt), 'gpt2*', or a folder holding a Hugging Face GPT-2
    out_dir='out',
    data_dir='',  # where the tokenizer (meta.pkl) lives; '' means the checkpoint's data (GPT-2 BPE for gpt2*)
    start='\n',  # the prompt, or FILE:path to read it from a file
    num_samples=10,
    max_new_tokens=500,
    temperature=0.8,  # 1.0 samples the model's own distribution, lower is more conservative, 0 is greedy
    top_k=200,  # sample only among the top_k most likely tokens; None for all
    top_p=1.0,  # nucleus sampling: only among the most likely tokens that hold top_p of the probability
    seed=1337,
    device='auto',
    dtype='auto',
    compile=False,  # torch.compile the model; pays off only for long generations on a GPU
    out_file='',  # also write the samples to this file
)
TYPES_OF_NONE = {'top_k': int}
SEPARATOR = '---------------'


def check_options(cfg):
    if cfg['temperature'] < 0:
        raise ValueError(f"temperature={cfg['temperature']} must be >= 0 (0 is greedy, 1.0 the model's distribution)")
    if cfg['top_k'] is not None and cfg['top_k'] < 1:
        raise ValueError(f"top_k={cfg['top_k']} must be at least 1 (or None to keep every token)")
    if not 0 < cfg['top_p'] <= 1:
        raise ValueError(f"top_p={cfg['top_p']} must be in (0, 1] (1.0 keeps every token)")
    if cfg['max_new_tokens'] < 0:
        raise ValueError(f"max_new_tokens={cfg['max_new_tokens']} must be >= 0")
    if cfg['num_samples'] < 1:
        raise ValueError(f"num_samples={cfg['num_samples']} must be at least 1")
    if cfg['out_file']:
        check_out_file(cfg['out_file'])


def check_out_file(path):
    """Fail now, not after generating, when the samples could not be written to path. atomic_path creates the
    missing folders and writes beside path, so the nearest existing folder above it must be writable."""
    if os.path.isdir(path):
        raise ValueError(f'out_file={path} is a folder: give the path of a file, e.g. '
                         f'--out_file={os.path.join(path, "samples.txt")}')
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f'out_file={path} cannot be written: {folder} is a file, not a folder; choose another path')
    if not os.access(folder, os.W_OK):
        raise ValueError(f'out_file={path} cannot be written: no permission to write in {folder}; choose another path')


def read_prompt(start):
    if start.startswith('FILE:'):
        with open(start[5:], encoding='utf-8') as f:
            return f.read()
    return start


class Streamer:
    """Prints the first row's new tokens as they come. Decodes the whole row each time and holds back a
    trailing partial character: one BPE token can be half of a multi-byte UTF-8 character."""

    def __init__(self, tokenizer, prompt_ids, write):
        self.tokenizer, self.ids, self.write = tokenizer, list(prompt_ids), write
        self.printed = len(tokenizer.decode(self.ids))

    def __call__(self, tokens):
        self.ids.append(tokens[0, 0].item())
        text = self.tokenizer.decode(self.ids).rstrip('\ufffd')
        self.write(text[self.printed:])
        self.printed = max(self.printed, len(text))


def print_now(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def generate_samples(model, tokenizer, machine, cfg, write=print_now):
    """Generate cfg['num_samples'] continuations of the prompt as one batch on the machine and write them as
    they come; returns the list of sample texts (prompt included). Only ids the tokenizer decodes are sampled."""
    prompt_ids = tokenizer.encode(read_prompt(cfg['start']))
    if not prompt_ids:
        raise ValueError('the prompt is empty: give one with --start=TEXT or --start=FILE:path')
    if len(prompt_ids) > model.config.block_size:
        raise ValueError(f'the prompt is {len(prompt_ids)} tokens long, more than the model\'s context of '
                         f'{model.config.block_size}: shorten it')
    idx = torch.tensor(prompt_ids, dtype=torch.long, device=machine.device)[None].repeat(cfg['num_samples'], 1)
    streamer = Streamer(tokenizer, prompt_ids, write)
    write(tokenizer.decode(prompt_ids))
    with machine.autocast():
        out = model.generate(idx, cfg['max_new_tokens'], temperature=cfg['temperature'], top_k=cfg['top_k'],
                             top_p=cfg['top_p'], on_token=streamer, vocab_size=tokenizer.vocab_size)
    samples = [tokenizer.decode(row.tolist()) for row in out]
    write(samples[0][streamer.printed:] + '\n' + SEPARATOR + '\n')
    for text in samples[1:]:
        write(text + '\n' + SEPARATOR + '\n')
    return samples


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    check_options(cfg)
    machine = machines.setup(cfg['device'], cfg['dtype'], cfg['compile'])
    model, source = checkpoint.load_model(cfg['init_from'], cfg['out_dir'])
    tokenizer = tokenizers.for_model(model, source, cfg['data_dir'])
    model.eval().to(machine.device)
    if machine.compile:
        model.compile()  # in place, so that generate's calls to the model run compiled
    torch.manual_seed(cfg['seed'])
    # the output file is opened before generating, so that a path that cannot be written fails at once
    with atomic_path(cfg['out_file']) if cfg['out_file'] else contextlib.nullcontext() as out_tmp:
        t0 = time.time()
        samples = generate_samples(model, tokenizer, machine, cfg)
        dt = time.time() - t0
        print(f"({cfg['num_samples']} x {cfg['max_new_tokens']} tokens in {dt:.1f}s, "
              f"{cfg['num_samples'] * cfg['max_new_tokens'] / max(dt, 1e-9):.0f} tokens/s)", file=sys.stderr)
        if out_tmp:
            with open(out_tmp, 'w', encoding='utf-8') as f:
                f.write(''.join(text + '\n' + SEPARATOR + '\n' for text in samples))
    return samples


if __name__ == '__main__':
    cli(main)
