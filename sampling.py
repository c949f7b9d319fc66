"""
The sampling settings that sample.py reads (its keys, their checks, the prompt) and that bench.py and
benchmarks/sample_recompute.py decode with, so that every generation measured is the one sample.py runs.
"""

import os

DEFAULTS = dict(
    init_from='resume',  # 'resume' (from out_dir/ckpt.pt), 'gpt2*', or a folder holding a Hugging Face GPT-2
    out_dir='out',
    data_dir='',  # the tokenizer's dataset (meta.pkl); '' means the checkpoint's data, or a folder's tokenizer.json
    start='\n',  # the prompt, or FILE:path to read it from a file
    chat=False,  # --start is a user's message, in the model's chat template (a Hugging Face tokenizer's)
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


def prompt_ids(tokenizer, start, chat=False):
    """The prompt's token ids: --start's text after the BOS the model family adds (Llama's), or with chat, --start as
    a user's message in the tokenizer's chat template, the assistant's turn opened (the template writes its BOS)."""
    text = read_prompt(start)
    if chat:
        return tokenizer.encode(tokenizer.render_chat([{'role': 'user', 'content': text}]), bos=False)
    return tokenizer.encode(text)
