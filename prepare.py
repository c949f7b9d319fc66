"""
Token bins from text: the machinery behind data/*/prepare.py, and the script for your own corpus.

    python prepare.py path/to/folder --name=mydata                          # GPT-2 BPE, all cores
    python prepare.py notes.txt more_notes.txt --name=notes --tokenizer=char --val_fraction=0.05
    python prepare.py corpus.jsonl --name=web --text_field=content --num_proc=8
    python prepare.py input.txt --name=smol --tokenizer=path/to/SmolLM2-135M     # a Hugging Face tokenizer.json
    python prepare.py input.txt --name=qwen --tokenizer=Qwen/Qwen2.5-0.5B         # a hub id: its tokenizer files
    python prepare.py data/shakespeare_char/input.txt --name=shakespeare_bpe --tokenizer=bpe --vocab_size=4096
    python prepare.py chats.jsonl --name=chat --format=chat --block_size=1024       # conversations, for finetuning

writes data/<name>/train.bin, val.bin and meta.pkl (--out_dir=DIR writes there instead). An input
is a file, or a folder searched recursively for .txt files (each one document), .jsonl files (one
JSON object per line; the document is its --text_field) and .parquet files (the --text_field
column), taken in sorted path order. With gpt2 (or any tiktoken encoding, e.g. cl100k_base) every
document ends with <|endoftext|>; with char the documents are concatenated as they are; with a Hugging
Face tokenizer (a folder holding its tokenizer.json, or a hub id) each document is its BOS if the
family adds one (Llama's), the text, and its EOS, the ids are uint32 when the vocabulary passes 65,536
(Qwen's 151,665), and the tokenizer's files are copied beside the bins, which a finetune of that
model reads. val.bin is the last --val_fraction of the token stream, as in nanoGPT's shakespeare_char.

--tokenizer=bpe trains your own byte-level BPE of --vocab_size tokens on the corpus first (bpe.py; on at most
--tokenizer_sample_bytes of its train part, on all cores) and then reads it as a Hugging Face tokenizer: its
tokenizer.json is written beside the bins, <|endoftext|> ends each document, and --special_tokens=A,B adds tokens
of your own. At the end a compression report compares the dataset's tokenizer with GPT-2's and with characters
on val.bin, in bytes per token, and says how much of a model (--report_model's config file) its embedding is.

Large corpora: documents are streamed in batches of about a megabyte through a pool of --num_proc
processes, so memory stays bounded; the tokens of each part of the corpus (about 64 MB of input)
are kept in data/<name>/.prepare/ until the end, so running the same command again after an
interruption resumes where it stopped (a trained BPE is kept there too: it is trained once). The bins are written whole under a temporary name and
renamed at the end: an interrupted run never leaves a half-written train.bin.

--format=chat reads conversations, one JSON object a line ({"messages": [{"role": ..., "content": ...}, ...]} or
{"prompt": ..., "completion": ...}), renders each with the tokenizer's chat template (tokenizer.DEFAULT_CHAT_TEMPLATE
where it has none) and writes one example per row of --block_size + 1 tokens with train.mask.bin and val.mask.bin,
which mark the answers' tokens: the only ones training counts (chat_data.py; train with the same --block_size). An
example longer than the row is truncated and counted, or with --truncate=False refused.
"""

import os
import sys

import bpe
from configurator import cli, configure, one_line
from corpus import prepare_corpus

ROOT = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = {
    'name': '',  # writes data/<name>/
    'out_dir': '',  # or writes here
    'tokenizer': 'gpt2',  # char, gpt2, another tiktoken encoding (cl100k_base), a folder with a tokenizer.json, a hub id
    'val_fraction': 0.1,
    'num_proc': os.cpu_count() or 1,
    'text_field': 'text',  # the .jsonl field / .parquet column that holds the text
    'vocab_size': 4096,  # --tokenizer=bpe: tokens in all (the 256 bytes and the special tokens included)
    'special_tokens': '',  # --tokenizer=bpe: tokens of your own after <|endoftext|>, comma-separated
    'tokenizer_sample_bytes': 100_000_000,  # --tokenizer=bpe: train it on at most this much text
    'report_model': os.path.join(ROOT, 'config', 'train_shakespeare_char_cpu.py'),  # the report's model size
    'format': 'text',  # or 'chat': conversations in JSONL, trained on their answers only (chat_data.py)
    'block_size': 1024,  # --format=chat: the block_size you will train with (each example is a row of it)
    'truncate': True,  # --format=chat: cut an example longer than block_size + 1 tokens; False: refuse it
}


def main():
    if '-h' in sys.argv or '--help' in sys.argv:
        print(__doc__)
        return
    inputs = [arg for arg in sys.argv[1:] if not arg.startswith('-')]  # files and folders
    config = configure(DEFAULTS, [arg for arg in sys.argv[1:] if arg.startswith('-')])
    if not inputs:
        raise ValueError('no input: write python prepare.py FILE_OR_FOLDER... --name=NAME (see --help)')
    if config['out_dir']:
        out_dir = config['out_dir']
    elif config['name'] and os.path.basename(config['name']) == config['name'] and not config['name'].startswith('.'):
        out_dir = os.path.join(ROOT, 'data', config['name'])
    else:
        raise ValueError(f'--name={config["name"]!r} must be a plain folder name for data/<name>/ (or pass --out_dir=DIR)')
    if not os.path.isfile(config['report_model']):
        raise ValueError(f"--report_model={config['report_model']} is not a file: give a train config file, e.g. "
                         'config/train_shakespeare_char_cpu.py')
    if config['format'] == 'chat':
        import chat_data
        stats = chat_data.prepare_chat(inputs, out_dir, config['tokenizer'], config['val_fraction'],
                                       config['block_size'], config['truncate'])
        print(f'wrote {out_dir}: {stats["train"]:,} train and {stats["val"]:,} val examples in rows of '
              f'{config["block_size"] + 1:,} tokens, {stats["answer_tokens"]:,} of them answer tokens that count '
              f'({stats["tokenizer"]}, vocab {stats["vocab_size"]:,}); {stats["truncated"]:,} truncated to the row, '
              f'{stats["left_out"]:,} left out (no answer token within block_size)')
        return
    if config['format'] != 'text':
        raise ValueError(f"--format={config['format']!r} is not text or chat")
    bpe_settings = None
    if config['tokenizer'] == 'bpe':
        bpe_settings = {'vocab_size': config['vocab_size'], 'sample_bytes': config['tokenizer_sample_bytes'],
                        'special_tokens': bpe.check_settings(config['vocab_size'], config['special_tokens'],
                                                             config['tokenizer_sample_bytes'])}
    stats = prepare_corpus(inputs, out_dir, config['tokenizer'], config['val_fraction'],
                           config['num_proc'], config['text_field'], bpe_settings=bpe_settings)
    print(f'wrote {out_dir}: {stats["train_tokens"]:,} train and {stats["val_tokens"]:,} val tokens '
          f'({stats["tokenizer"]}, vocab {stats["vocab_size"]:,}, {stats["dtype"]})')
    try:
        print('\n'.join(bpe.report(out_dir, config['report_model'])))
    except Exception as e:  # the bins are written: a report that cannot be made is no failure
        print(f'note: no compression report ({one_line(e)})')


if __name__ == '__main__':
    cli(main)
