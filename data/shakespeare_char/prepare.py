"""
Tiny Shakespeare, one token per character (nanoGPT's shakespeare_char): 65 characters,
1,003,854 train and 111,540 val tokens.

    python data/shakespeare_char/prepare.py                       # downloads input.txt when absent
    python data/shakespeare_char/prepare.py --input=path/to/input.txt
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root

from configurator import cli, configure
from corpus import prepare_builtin
from dataset import load_meta

DATA_DIR = os.path.dirname(os.path.abspath(__file__))


def main():
    config = configure({'input': ''}, sys.argv[1:])
    stats = prepare_builtin('shakespeare_char', DATA_DIR, input=config['input'] or None)
    print(f'length of dataset in characters: {stats["train_tokens"] + stats["val_tokens"]:,}')
    print(f'all the unique characters: {"".join(load_meta(DATA_DIR)["stoi"])!r}')
    print(f'vocab size: {stats["vocab_size"]:,}')
    print(f'train has {stats["train_tokens"]:,} tokens')
    print(f'val has {stats["val_tokens"]:,} tokens')


if __name__ == '__main__':
    cli(main)
