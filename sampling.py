"""
The sampling settings that sample.py reads (its keys, their checks, the prompt) and that bench.py and
benchmarks/sample_recompute.py decode with, so that every generation measured is the one sample.py runs; the
Streamer that prints a sample as it comes (sample.py's, chat.py's).
"""

import os
import sys

import torch

DEFAULTS = dict(
    init_from='resume',  # 'resume' (from out_dir/ckpt.pt), 'gpt2*', or a folder holding a Hugging Face GPT-2
    out_dir='out',
    data_dir='',  # the tokenizer's dataset (meta.pkl); '' means the checkpoint's data, or a folder's tokenizer.json
    start='\n',  # the prompt, or FILE:path to read it from a file
    chat=False,  # --start is a user's message, in the model's chat template (a Hugging Face tokenizer's); no --start:
    # an interactive chat in the terminal (chat.py)
    system='',  # with chat: a system message that opens the conversation
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


def prompt_ids(tokenizer, start, chat=False, system=''):
    """The prompt's token ids: --start's text after the BOS the model family adds (Llama's), or with chat, --start as
    a user's message (after the system message, if any) in the tokenizer's chat template, the assistant's turn
    opened (the template writes its BOS)."""
    text = read_prompt(start)
    if chat:
        messages = [{'role': 'system', 'content': system}] * bool(system) + [{'role': 'user', 'content': text}]
        return tokenizer.encode(tokenizer.render_chat(messages), bos=False)
    return tokenizer.encode(text)


def print_now(text):
    sys.stdout.write(text)
    sys.stdout.flush()


class Streamer:
    """Prints the first row's new tokens as they come, until that row gives one of the tokenizer's stop ids;
    returns True, which ends generation, once every row has. Decodes the whole row each time and holds back a
    trailing partial character: one BPE token can be half of a multi-byte UTF-8 character."""

    def __init__(self, tokenizer, prompt, write, rows=1):
        self.tokenizer, self.ids, self.write = tokenizer, list(prompt), write
        self.printed = len(tokenizer.decode(self.ids))
        self.stop_ids = torch.tensor(tokenizer.stop_ids, dtype=torch.long)
        self.stopped = torch.zeros(rows, dtype=torch.bool)

    def __call__(self, tokens):
        if len(self.stop_ids):
            self.stopped |= torch.isin(tokens[:, 0].cpu(), self.stop_ids)
        if not self.stopped[0]:
            self.ids.append(tokens[0, 0].item())
            text = self.tokenizer.decode(self.ids).rstrip('\ufffd')
            self.write(text[self.printed:])
            self.printed = max(self.printed, len(text))
        return bool(self.stopped.all())
