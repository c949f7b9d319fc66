"""
OpenWebText (Skylion007/openwebtext on the Hugging Face hub: 8,013,769 web pages, as parquet
files) with the GPT-2 BPE, every document ended by <|endoftext|>, and a random 0.05% of the
documents held out as val.bin, as nanoGPT does for reproducing GPT-2: about 9B train tokens
(train.bin, 17 GB) and 4-5M val tokens.

    python data/openwebtext/prepare.py                       # download, then tokenize on all cores
    python data/openwebtext/prepare.py --num_proc=16
    python data/openwebtext/prepare.py --input=path/to/folder  # parquet files downloaded by hand

Needs about 60 GB of free disk at the peak (24 GB of parquet in the Hugging Face cache, 17 GB of
tokenized pieces in data/openwebtext/.prepare/, 17 GB of train.bin), and little RAM: documents
are streamed in batches. Interrupted? Run the same command again: the download and the
tokenization resume where they stopped (a part, one parquet file, at a time).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root

from configurator import cli, configure
from corpus import download_parquet, prepare_corpus

REPO = 'Skylion007/openwebtext'
DEFAULTS = {
    'input': '',  # a folder of the dataset's parquet files; empty: download them
    'num_proc': os.cpu_count() or 1,
    'val_fraction': 0.0005,  # of the documents, as nanoGPT
}


def download_openwebtext():
    """The paths of the dataset's 80 parquet files, downloaded into the Hugging Face cache when they are
    not there yet."""
    return download_parquet(REPO, 'data')


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    files = config['input'] or download_openwebtext()
    stats = prepare_corpus(files, os.path.dirname(os.path.abspath(__file__)), 'gpt2', config['val_fraction'],
                           config['num_proc'], val_by_document=True)
    print(f'train has {stats["train_tokens"]:,} tokens, val has {stats["val_tokens"]:,} tokens')


if __name__ == '__main__':
    cli(main)
