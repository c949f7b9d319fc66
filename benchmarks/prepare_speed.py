"""
Tokens/s of GPT-2 BPE data preparation (corpus.prepare_corpus, which prepare.py runs: read, tokenize,
write the bins) against tiktoken's own encode_ordinary_batch on the same documents already in memory,
on one core and on all cores. The corpus is Tiny Shakespeare repeated to --megabytes and cut into documents
of about --doc_chars characters, as a .jsonl file (one web-page-sized document per line). --hf=True adds
the same preparation through a Hugging Face tokenizer.json (prepare.py --tokenizer=FOLDER): GPT-2's BPE,
written from tiktoken's own files (gpt2_tokenizer_folder), whose bins must equal tiktoken's.

    flock /tmp/cpu.lock python benchmarks/prepare_speed.py [--megabytes=50] [--repeats=5] [--hf=True] 2>/dev/null

Each repeat times tiktoken then the pipeline(s), on 1 process then on all, so that the machine's
drift hits all alike; medians and (min-max) over the repeats are printed.
"""

import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from configurator import cli, configure
from corpus import get_encoding, prepare_corpus

SHAKESPEARE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           'shared', 'data', 'tinyshakespeare', 'input.txt')
DEFAULTS = {
    'input': SHAKESPEARE,  # the text to repeat
    'megabytes': 50,
    'doc_chars': 4000,  # about the size of an OpenWebText document
    'repeats': 5,
    'num_proc': os.cpu_count() or 1,  # "all cores"
    'hf': False,  # also through GPT-2's tokenizer.json and the tokenizers library
}
GPT2_FILES = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'  # tiktoken's source of gpt2


def gpt2_tokenizer_folder(folder):
    """folder with GPT-2's BPE as a Hugging Face tokenizer.json (byte-level BPE, <|endoftext|> its EOS, no BOS
    added, as openai-community/gpt2's), built from the encoder.json and vocab.bpe tiktoken reads (its cache)."""
    from tiktoken.load import read_file_cached
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    os.makedirs(folder, exist_ok=True)
    for name in ('encoder.json', 'vocab.bpe'):
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(read_file_cached(GPT2_FILES + name))
    tok = Tokenizer(models.BPE.from_file(os.path.join(folder, 'encoder.json'), os.path.join(folder, 'vocab.bpe')))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(['<|endoftext|>'])
    tok.save(os.path.join(folder, 'tokenizer.json'))
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
        json.dump({'bos_token': '<|endoftext|>', 'eos_token': '<|endoftext|>'}, f)
    return folder


def make_documents(text, megabytes, doc_chars):
    """text repeated to megabytes of UTF-8 and cut into documents at line ends near doc_chars."""
    documents, size = [], 0
    while size < megabytes * 1e6:
        start = 0
        while start < len(text):
            end = text.find('\n', start + doc_chars) + 1 or len(text)
            documents.append(text[start:end])
            size += len(documents[-1].encode('utf-8'))
            start = end
    return documents


def main():
    config = configure(DEFAULTS, sys.argv[1:])
    with open(config['input'], encoding='utf-8') as f:
        text = f.read()
    documents = make_documents(text, config['megabytes'], config['doc_chars'])
    enc = get_encoding('gpt2')
    n_tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(documents))  # without the end-of-text tokens
    megabytes = sum(len(d.encode('utf-8')) for d in documents) / 1e6
    print(f'corpus: {megabytes:.1f} MB, {len(documents):,} documents, {n_tokens:,} tokens; '
          f'{os.cpu_count()} CPUs, all cores = num_proc {config["num_proc"]}')

    seconds = {}  # (what, processes) -> [seconds per repeat]
    rows = [('tiktoken', 'tiktoken encode_ordinary_batch'), ('prepare', 'prepare.py (read, tokenize, write)')]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, 'corpus.jsonl')
        with open(corpus, 'w', encoding='utf-8') as f:
            f.writelines(json.dumps({'text': d}) + '\n' for d in documents)
        tokenizers = {'prepare': 'gpt2'}
        if config['hf']:
            tokenizers['prepare_hf'] = gpt2_tokenizer_folder(os.path.join(tmp, 'gpt2_hf'))
            rows.append(('prepare_hf', 'prepare.py, GPT-2\'s tokenizer.json'))
        for repeat in range(config['repeats']):
            for procs in sorted({1, config['num_proc']}):
                start = time.perf_counter()
                enc.encode_ordinary_batch(documents, num_threads=procs)
                seconds.setdefault(('tiktoken', procs), []).append(time.perf_counter() - start)
                for what, tokenizer in tokenizers.items():
                    start = time.perf_counter()
                    stats = prepare_corpus(corpus, os.path.join(tmp, what), tokenizer, num_proc=procs)
                    seconds.setdefault((what, procs), []).append(time.perf_counter() - start)
                    assert stats['train_tokens'] + stats['val_tokens'] == n_tokens + len(documents), stats
                if config['hf']:  # the same ids, whichever library encoded them
                    for split in ('train.bin', 'val.bin'):
                        with open(os.path.join(tmp, 'prepare', split), 'rb') as a, \
                                open(os.path.join(tmp, 'prepare_hf', split), 'rb') as b:
                            assert a.read() == b.read(), split
            print(f'repeat {repeat + 1}/{config["repeats"]} done', file=sys.stderr)

    print(f'{"":40} {"tokens/s, median (min-max)":>27}   time / tiktoken\'s, median (min-max)')
    for procs in sorted({1, config['num_proc']}):
        for what, label in rows:
            rates = [n_tokens / s / 1e6 for s in seconds[(what, procs)]]
            # each repeat's ratio to the tiktoken run just before it, so that drift cancels
            ratios = [a / b for a, b in zip(seconds[(what, procs)], seconds[('tiktoken', procs)])]
            print(f'{label:34} x{procs:<3}  {statistics.median(rates):6.2f}M ({min(rates):.2f}-{max(rates):.2f}M)'
                  f'   {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})')


if __name__ == '__main__':
    cli(main)
