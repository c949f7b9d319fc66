"""
FineWeb-Edu's 10B-token sample (sample/10BT of HuggingFaceFW/fineweb-edu on the Hugging Face hub:
educational web pages in 14 parquet files of 2.15 GB) with the GPT-2 BPE, every document ended by
<|endoftext|>, and a random 0.5% of the documents held out as val.bin: about 10B train tokens
(train.bin, 20 GB) and 50M val tokens, what llm.c and build-nanogpt train GPT-2 124M on
(config/train_gpt2_fineweb.py).

    python data/fineweb_edu/prepare.py                          # download, then tokenize on all cores
    python data/fineweb_edu/prepare.py --shards=1 --max_tokens=100_000_000   # a quick 100M-token slice
    python data/fineweb_edu/prepare.py --input=path/to/folder   # parquet files downloaded by hand

--shards=N takes only the first N parquet files (in sorted order, downloaded or in --input), each
about 0.7B tokens. --max_tokens=N keeps the first N tokens of the token stream (the documents in file
order, each followed by <|endoftext|>), cut exactly: train.bin and val.bin hold N tokens together, and
the document at the cut loses its end. The same files and N always give the same slice.

Estimates (the full download never ran where this was written): about 70 GB of free disk at the peak
(30 GB of parquet in the Hugging Face cache, 20 GB of tokenized pieces in data/fineweb_edu/.prepare/,
20 GB of train.bin) and about 75 core-minutes of tokenizing, plus the download; little RAM, as
documents are streamed in batches. Interrupted? Run the same command again: the download and the
tokenization resume where they stopped (a part, one parquet file, at a time).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root

from configurator import cli, configure
from corpus import corpus_files, download_parquet, prepare_corpus

REPO, FOLDER = 'HuggingFaceFW/fineweb-edu', 'sample/10BT'
DEFAULTS = {
    'input': '',  # a folder of the sample's parquet files; empty: download them
    'out_dir': os.path.dirname(os.path.abspath(__file__)),
    'shards': 0,  # only the first N parquet files; 0: all 14
    'max_tokens': 0,  # only the first N tokens, cut exactly; 0: all
    'num_proc': os.cpu_count() or 1,
    'val_fraction': 0.005,  # of the documents: about 50M val tokens, and still ~500k in a 100M-token slice
}


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    if config['shards'] < 0:
        raise ValueError(f'--shards={config["shards"]} must be a number of parquet files, or 0 for all of them')
    n_files = config['shards'] or None
    files = corpus_files([config['input']])[:n_files] if config['input'] else download_parquet(REPO, FOLDER, n_files)
    stats = prepare_corpus(files, config['out_dir'], 'gpt2', config['val_fraction'], config['num_proc'],
                           val_by_document=True, max_tokens=config['max_tokens'] or None)
    print(f'wrote {config["out_dir"]}: {stats["train_tokens"]:,} train and {stats["val_tokens"]:,} val tokens '
          f'from {len(files)} files')


if __name__ == '__main__':
    cli(main)
