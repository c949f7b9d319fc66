"""
Tiny Shakespeare with the GPT-2 BPE (tiktoken gpt2), 90/10 split: 304,223 train and 33,803 val
tokens (the text ends with <|endoftext|>), for finetuning GPT-2 as in nanoGPT.

    python data/shakespeare/prepare.py                            # downloads input.txt when absent
    python data/shakespeare/prepare.py --input=path/to/input.txt
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root

from configurator import cli, configure
from corpus import prepare_builtin


def main():
    config = configure({'input': ''}, sys.argv[1:])
    prepare_builtin('shakespeare', os.path.dirname(os.path.abspath(__file__)), input=config['input'] or None)


if __name__ == '__main__':
    cli(main)
