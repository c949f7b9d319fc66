"""
Sample from a trained model, or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=3
    python sample.py --out_dir=out --start=FILE:prompt.txt --temperature=0 --out_file=samples.txt

All samples are generated together as one batch, with a key/value cache; the first sample of
the batch is printed as it is generated, the others when the batch is done.
"""

import os
import sys
import time

import torch

import common
from configurator import configure
from model import GPT

DEFAULTS = dict(
    init_from='resume',  # 'resume' (from out_dir/ckpt.pt), 'gpt2*', or a folder holding a Hugging Face GPT-2
    out_dir='out',
    data_dir='',  # where the tokenizer (meta.pkl) lives; '' means data/<the checkpoint's dataset>
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


def load_model_and_tokenizer(cfg):
    """The model to sample and the tokenizer of the data it was trained on."""
    init_from = cfg['init_from']
    if init_from == 'resume':
        checkpoint = common.load_checkpoint(os.path.join(cfg['out_dir'], 'ckpt.pt'))
        model = common.model_from_checkpoint(checkpoint)
        train_cfg = checkpoint.get('config', {})
        data_dir = cfg['data_dir'] or train_cfg.get('data_dir') or (
            os.path.join('data', train_cfg['dataset']) if 'dataset' in train_cfg else '')
        tokenizer = common.Tokenizer(common.load_meta(data_dir) if data_dir else None)
    else:
        model = GPT.from_pretrained(init_from)
        tokenizer = common.Tokenizer(None)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f'the tokenizer ({tokenizer.name}, {tokenizer.vocab_size} tokens) does not fit the model '
                         f'(vocab_size={model.config.vocab_size}): pass the --data_dir of the data it was trained on')
    return model, tokenizer


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


def generate_samples(model, tokenizer, cfg, write=print_now):
    """Generate cfg['num_samples'] continuations of the prompt as one batch and write them as they come;
    returns the list of sample texts (prompt included)."""
    prompt_ids = tokenizer.encode(read_prompt(cfg['start']))
    if not prompt_ids:
        raise ValueError('the prompt is empty: give one with --start=TEXT or --start=FILE:path')
    if len(prompt_ids) > model.config.block_size:
        raise ValueError(f'the prompt is {len(prompt_ids)} tokens long, more than the model\'s context of '
                         f'{model.config.block_size}: shorten it')
    device = cfg['device']
    idx = torch.tensor(prompt_ids, dtype=torch.long, device=device)[None].repeat(cfg['num_samples'], 1)
    streamer = Streamer(tokenizer, prompt_ids, write)
    write(tokenizer.decode(prompt_ids))
    with common.autocast(device, cfg['dtype']):
        out = model.generate(idx, cfg['max_new_tokens'], temperature=cfg['temperature'], top_k=cfg['top_k'],
                             top_p=cfg['top_p'], on_token=streamer)
    samples = [tokenizer.decode(row.tolist()) for row in out]
    write(samples[0][streamer.printed:] + '\n' + SEPARATOR + '\n')
    for text in samples[1:]:
        write(text + '\n' + SEPARATOR + '\n')
    return samples


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    check_options(cfg)
    cfg['device'] = common.resolve_device(cfg['device'])
    cfg['dtype'] = common.resolve_dtype(cfg['dtype'], cfg['device'])
    torch.manual_seed(cfg['seed'])
    model, tokenizer = load_model_and_tokenizer(cfg)
    model.eval().to(cfg['device'])
    if cfg['compile']:
        model.compile()  # in place, so that generate's calls to the model run compiled
    t0 = time.time()
    samples = generate_samples(model, tokenizer, cfg)
    dt = time.time() - t0
    print(f"({cfg['num_samples']} x {cfg['max_new_tokens']} tokens in {dt:.1f}s, "
          f"{cfg['num_samples'] * cfg['max_new_tokens'] / max(dt, 1e-9):.0f} tokens/s)", file=sys.stderr)
    if cfg['out_file']:
        with common.atomic_path(cfg['out_file']) as tmp, open(tmp, 'w', encoding='utf-8') as f:
            f.write(''.join(text + '\n' + SEPARATOR + '\n' for text in samples))
    return samples


if __name__ == '__main__':
    common.cli(main)
