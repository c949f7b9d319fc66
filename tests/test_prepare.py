"""Data preparation (prepare.py, data/*/prepare.py): exact bins, round trips, resume, atomicity, bad input."""
import importlib.util
import json
import os

import numpy as np
import pytest
import requests

import corpus as prepare
from helpers import (ROOT, assert_one_line_error, files_under, gpt2_encoding, make_text, read_bins, run, shakespeare,
                     write_char_dataset)
from tokenizer import Tokenizer

OUTPUTS = ('train.bin', 'val.bin', 'meta.pkl')


def read_outputs(out_dir):
    outputs = {}
    for name in OUTPUTS:
        with open(os.path.join(out_dir, name), 'rb') as f:
            outputs[name] = f.read()
    return outputs


def decode(meta, *ids):
    return Tokenizer(meta).decode(np.concatenate(ids).tolist())


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(content if isinstance(content, bytes) else content.encode('utf-8'))
    return str(path)


def write_parquet(path, texts):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'id': list(range(len(texts))), 'text': texts}), path)
    return str(path)


# ----------------------------------------------------------------------------------------------
# the built-in datasets


def test_shakespeare_char_has_nanogpts_exact_counts(tmp_path):
    stats = prepare.prepare_builtin('shakespeare_char', str(tmp_path), input=shakespeare())
    meta, train, val = read_bins(tmp_path)
    assert (len(train), len(val), meta['vocab_size']) == (1_003_854, 111_540, 65)
    assert stats == {'train_tokens': 1_003_854, 'val_tokens': 111_540, 'vocab_size': 65, 'dtype': 'uint16',
                     'tokenizer': 'char'}
    with open(shakespeare(), encoding='utf-8') as f:
        text = f.read()
    assert len(text) == 1_115_394
    assert meta['itos'] == dict(enumerate(sorted(set(text)))) and meta['stoi'] == {c: i for i, c in meta['itos'].items()}
    assert (meta['dtype'], meta['tokenizer'], train.dtype) == ('uint16', 'char', np.uint16)
    assert decode(meta, train) == text[:1_003_854] and decode(meta, val) == text[1_003_854:]


def test_gpt2_prepare_equals_encoding_the_whole_text(tmp_path, monkeypatch):
    # small batches and two processes: the text is cut into ~70 pieces, at points where BPE gives
    # the same tokens as on the whole text, and the workers' results come back in order
    monkeypatch.setattr(prepare, 'BATCH_CHARS', 16_000)
    monkeypatch.setattr(prepare, 'SHARD_TOKENS', 10_007)  # shards that straddle the train/val split
    stats = prepare.prepare_corpus(shakespeare(), str(tmp_path), 'gpt2', val_fraction=0.1, num_proc=2)
    meta, train, val = read_bins(tmp_path)
    with open(shakespeare(), encoding='utf-8') as f:
        text = f.read()
    enc = gpt2_encoding()
    expected = enc.encode_ordinary(text) + [enc.eot_token]
    assert np.concatenate([train, val]).tolist() == expected
    assert len(train) == int(len(expected) * 0.9) == stats['train_tokens']
    assert meta == {'vocab_size': 50257, 'dtype': 'uint16', 'tokenizer': 'gpt2',
                    'train_tokens': len(train), 'val_tokens': len(val)}
    assert decode(meta, train, val) == text + '<|endoftext|>'
    assert files_under(tmp_path) == sorted(OUTPUTS)  # the .prepare/ pieces are gone


def test_missing_input_is_downloaded_else_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise requests.ConnectionError('no network')
    monkeypatch.setattr(requests, 'get', offline)
    with pytest.raises(OSError) as e:
        prepare.prepare_builtin('shakespeare', str(tmp_path / 'shakespeare'))
    assert os.path.join(str(tmp_path), 'shakespeare', 'input.txt') in str(e.value) and '--input' in str(e.value)
    assert files_under(tmp_path) == []

    class Response:
        content = b'First Citizen:\nBefore we proceed any further, hear me speak.\n' * 20

        def raise_for_status(self):
            pass
    monkeypatch.setattr(requests, 'get', lambda url, timeout: Response())
    prepare.prepare_builtin('shakespeare_char', str(tmp_path / 'shakespeare_char'))
    meta, train, val = read_bins(tmp_path / 'shakespeare_char')
    assert decode(meta, train, val) == Response.content.decode()
    assert files_under(tmp_path / 'shakespeare_char') == sorted(OUTPUTS + ('input.txt',))


# ----------------------------------------------------------------------------------------------
# your own corpus


def make_corpus(folder):
    """A folder of .txt (nested too) and .jsonl files, and files that are not part of the corpus."""
    write(folder / 'b.txt', 'Second file, ünïcödé: 日本語.\n')
    write(folder / 'a' / 'one.txt', 'First file\r\nwith Windows newlines\r\n')
    write(folder / 'c.jsonl', json.dumps({'body': 'doc one', 'id': 1}) + '\n\n' + json.dumps({'body': 'doc two\n'}) + '\n')
    write(folder / 'notes.md', 'not text of the corpus')
    write(folder / '.hidden.txt', 'not either')
    return ['First file\r\nwith Windows newlines\r\n', 'Second file, ünïcödé: 日本語.\n', 'doc one', 'doc two\n']


@pytest.mark.parametrize('tokenizer', ['gpt2', 'char'])
def test_custom_corpus_folder(tmp_path, monkeypatch, tokenizer):
    if tokenizer == 'gpt2':
        gpt2_encoding()  # or skip
    monkeypatch.setattr(prepare, 'PART_BYTES', 1)  # a piece per file: the val split cuts across pieces
    monkeypatch.setattr(prepare, 'SHARD_TOKENS', 3)
    documents = make_corpus(tmp_path / 'corpus')
    out_dir = str(tmp_path / 'mydata')
    prepare.prepare_corpus(str(tmp_path / 'corpus'), out_dir, tokenizer, val_fraction=0.2, text_field='body')
    meta, train, val = read_bins(out_dir)
    if tokenizer == 'gpt2':  # each document (a .txt file or a .jsonl record) ends with <|endoftext|>
        enc = gpt2_encoding()
        expected = [i for d in documents for i in enc.encode_ordinary(d) + [enc.eot_token]]
        assert np.concatenate([train, val]).tolist() == expected
    else:  # the documents are concatenated as they are; the vocabulary is the corpus's characters
        assert decode(meta, train, val) == ''.join(documents)
        assert list(meta['stoi']) == sorted(set(''.join(documents)))
    assert len(val) == len(train) + len(val) - int((len(train) + len(val)) * 0.8)


def test_cli_prepares_a_folder_on_two_processes(tmp_path):
    documents = make_corpus(tmp_path / 'corpus')
    out_dir = tmp_path / 'out'
    result = run('prepare.py', tmp_path / 'corpus', f'--out_dir={out_dir}', '--tokenizer=char', '--text_field=body',
                 '--num_proc=2')
    assert result.returncode == 0, result.stderr
    meta, train, val = read_bins(out_dir)
    assert decode(meta, train, val) == ''.join(documents)
    assert f'{len(train):,} train and {len(val):,} val tokens' in result.stdout


def test_long_documents_are_cut_without_losing_or_changing_text(tmp_path, monkeypatch):
    gpt2_encoding()  # or skip
    # a 7-character batch size forces cuts inside lines, at spaces, inside words and between
    # the bytes of multi-byte characters as the file is read
    monkeypatch.setattr(prepare, 'BATCH_CHARS', 7)
    text = 'éé Ünïcödé ' * 5 + 'averyveryverylongwordwithoutspaces\r\n\r\nline\nnext line  \n\nend'
    for tokenizer in ('char', 'gpt2'):
        out_dir = str(tmp_path / tokenizer)
        prepare.prepare_corpus(write(tmp_path / 'long.txt', text), out_dir, tokenizer, num_proc=1)
        meta, train, val = read_bins(out_dir)
        assert decode(meta, train, val) == text + ('<|endoftext|>' if tokenizer == 'gpt2' else '')


@pytest.mark.parametrize('n_chars, dtype', [(65_536, 'uint16'), (65_537, 'uint32')])
def test_dtype_is_uint32_only_when_the_vocabulary_needs_it(tmp_path, n_chars, dtype):
    text = ''.join(chr(0x10000 + i) for i in range(n_chars)) * 2  # characters beyond the BMP
    prepare.prepare_corpus(write(tmp_path / 'wide.txt', text), str(tmp_path / 'out'), 'char', val_fraction=0.5)
    meta, train, val = read_bins(tmp_path / 'out')
    assert (meta['vocab_size'], meta['dtype'], train.dtype) == (n_chars, dtype, np.dtype(dtype))
    assert os.path.getsize(tmp_path / 'out' / 'train.bin') == n_chars * np.dtype(dtype).itemsize
    assert int(train.max()) == n_chars - 1  # the top id is written without overflow
    assert decode(meta, train, val) == text


def test_nanogpt_bins_without_dtype_key_still_read(tmp_path):
    text = make_text(1_000)
    meta, train, val = read_bins(write_char_dataset(tmp_path, text, nanogpt=True))
    assert (meta['dtype'], meta['tokenizer']) == ('uint16', 'char')
    assert decode(meta, train, val) == text


# ----------------------------------------------------------------------------------------------
# OpenWebText: parquet, val by document, resume


def load_openwebtext_script():
    spec = importlib.util.spec_from_file_location('openwebtext_prepare', os.path.join(ROOT, 'data', 'openwebtext', 'prepare.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openwebtext_without_network_says_how_to_get_the_files(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)  # never a 24 GB download
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path))
    with pytest.raises(OSError, match=r'by hand and pass --input=FOLDER'):
        load_openwebtext_script().download_openwebtext()


def make_web_corpus(folder, n_files=3, docs_per_file=40):
    """Parquet files like OpenWebText's: a text column of documents, and another column."""
    os.makedirs(folder, exist_ok=True)
    documents = [[f'Page {f}-{d}: ' + 'some words of a web page. ' * (d % 7) + ('\n' if d % 3 else '')
                  for d in range(docs_per_file)] for f in range(n_files)]
    files = [write_parquet(os.path.join(folder, f'train-{f:05d}.parquet'), docs) for f, docs in enumerate(documents)]
    return files, [d for docs in documents for d in docs]


def split_documents(ids, enc):
    return enc.decode(ids.tolist()).split('<|endoftext|>')[:-1]


def test_parquet_corpus_with_val_by_document(tmp_path):
    gpt2_encoding()  # or skip
    files, documents = make_web_corpus(tmp_path / 'owt')
    prepare.prepare_corpus(files, str(tmp_path / 'out'), 'gpt2', val_fraction=0.25, val_by_document=True)
    meta, train, val = read_bins(tmp_path / 'out')
    enc = gpt2_encoding()
    train_docs, val_docs = split_documents(np.asarray(train), enc), split_documents(np.asarray(val), enc)
    # every document, whole, in exactly one of the splits, in corpus order within each
    assert sorted(train_docs + val_docs) == sorted(documents)
    assert train_docs == [d for d in documents if d in set(train_docs)]
    assert 0.1 < len(val_docs) / len(documents) < 0.4


def test_interrupted_preparation_resumes_where_it_stopped(tmp_path, monkeypatch):
    gpt2_encoding()  # or skip
    monkeypatch.setattr(prepare, 'PART_BYTES', 1)  # each parquet file is a part of its own
    files, _ = make_web_corpus(tmp_path / 'owt')
    prepare.prepare_corpus(files, str(tmp_path / 'whole'), 'gpt2', val_fraction=0.25, val_by_document=True)

    real_read_documents, read = prepare.read_documents, []

    def interrupted_at_third_file(path, text_field):
        read.append(path)
        if len(read) == 3:
            raise KeyboardInterrupt
        return real_read_documents(path, text_field)
    monkeypatch.setattr(prepare, 'read_documents', interrupted_at_third_file)
    out_dir = str(tmp_path / 'resumed')
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_corpus(files, out_dir, 'gpt2', val_fraction=0.25, val_by_document=True)
    # the two finished parts are kept, the unfinished one is not, and no final file exists
    assert files_under(out_dir) == ['.prepare/00000.train.bin', '.prepare/00000.val.bin', '.prepare/00001.train.bin',
                                  '.prepare/00001.val.bin', '.prepare/plan.json']
    read.clear()
    monkeypatch.setattr(prepare, 'read_documents', lambda path, field: read.append(path) or real_read_documents(path, field))
    prepare.prepare_corpus(files, out_dir, 'gpt2', val_fraction=0.25, val_by_document=True)
    assert read == files[2:]  # only the third file was tokenized again
    assert read_outputs(out_dir) == read_outputs(tmp_path / 'whole')
    assert files_under(out_dir) == sorted(OUTPUTS)

    # a changed input file is not resumed from stale pieces: its tokens are redone
    monkeypatch.setattr(prepare, 'read_documents', interrupted_at_third_file)
    read.clear()
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_corpus(files, out_dir, 'gpt2', val_fraction=0.25, val_by_document=True)
    write_parquet(files[0], ['changed'] * 40)
    monkeypatch.setattr(prepare, 'read_documents', real_read_documents)
    prepare.prepare_corpus(files, out_dir, 'gpt2', val_fraction=0.25, val_by_document=True)
    meta, train, val = read_bins(out_dir)
    assert decode(meta, train, val).count('changed<|endoftext|>') == 40


def test_interrupted_write_leaves_the_previous_dataset_whole(tmp_path, monkeypatch):
    out_dir = str(tmp_path / 'out')
    prepare.prepare_corpus(write(tmp_path / 'old.txt', 'the old dataset\n' * 10), out_dir, 'char')
    before = read_outputs(out_dir)
    real_write_bin = prepare.write_bin

    def interrupted_after_both_bins(pieces, start, stop, path, dtype, name):
        real_write_bin(pieces, start, stop, path, dtype, name)
        if name == 'val.bin':
            raise KeyboardInterrupt
    monkeypatch.setattr(prepare, 'write_bin', interrupted_after_both_bins)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_corpus(write(tmp_path / 'new.txt', 'a new dataset, different\n' * 10), out_dir, 'char')
    assert read_outputs(out_dir) == before  # neither the new train.bin nor any mix of old and new
    assert not [f for f in files_under(out_dir) if f.endswith('.tmp')]

    with pytest.raises(KeyboardInterrupt):  # and on a first preparation, no final file at all
        prepare.prepare_corpus(str(tmp_path / 'new.txt'), str(tmp_path / 'first'), 'char')
    assert [f for f in files_under(tmp_path / 'first') if not f.startswith('.prepare/')] == []


# ----------------------------------------------------------------------------------------------
# bad input: one line saying what is wrong and what to do, nothing written


def folder_with_a_dangling_link(d):
    write(d / 'corpus' / 'a.txt', 'fine')
    os.symlink(d / 'gone.txt', d / 'corpus' / 'b.txt')
    return str(d / 'corpus')


def parquet_without_text_column(d):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'id': [0], 'body': ['a']}), d / 'x.parquet')
    return str(d / 'x.parquet')


BAD_INPUTS = {  # how to make the input, the error, what its message says
    'missing': (lambda d: str(d / 'nowhere.txt'), FileNotFoundError, 'does not exist'),
    'empty file': (lambda d: write(d / 'empty.txt', ''), ValueError, 'is empty'),
    'empty folder': (lambda d: os.makedirs(d / 'corpus') or str(d / 'corpus'), ValueError,
                     r'no \.txt, \.jsonl, \.parquet files'),
    'unreadable': (folder_with_a_dangling_link, OSError, r'cannot read .*b\.txt'),
    'not UTF-8': (lambda d: write(d / 'latin1.txt', 'caf\xe9 au lait'.encode('latin-1')), ValueError,
                  r'latin1\.txt is not UTF-8 text \(byte 0xe9 at offset 3\).*iconv'),
    'not UTF-8 jsonl': (lambda d: write(d / 'x.jsonl', b'{"text": "ok"}\n{"text": "\xff"}\n'), ValueError,
                        r'x\.jsonl is not UTF-8 text \(byte 0xff at offset 25\)'),
    'not JSON': (lambda d: write(d / 'x.jsonl', '{"text": "ok"}\ntext\n'), ValueError, r'line 2 is not JSON'),
    'no text field': (lambda d: write(d / 'x.jsonl', '{"content": "ok"}\n'), ValueError,
                      r"no 'text' field \(it has 'content'\).*--text_field"),
    'no text column': (parquet_without_text_column, ValueError, r"no 'text' column \(it has id, body\)"),
    'too small': (lambda d: write(d / 'tiny.txt', 'hi!'), ValueError, r'too small to split: 3 tokens give 2 train and 1 val'),
}


@pytest.mark.parametrize('tokenizer', ['char', 'gpt2'])
@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, case, tokenizer):
    if tokenizer == 'gpt2':
        gpt2_encoding()  # or skip
    make_input, error, message = BAD_INPUTS[case]
    inputs = make_input(tmp_path)
    with pytest.raises(error, match=message):
        prepare.prepare_corpus(inputs, str(tmp_path / 'out'), tokenizer)
    assert files_under(tmp_path / 'out') == []


@pytest.mark.parametrize('setting, message', [({'val_fraction': 0.0}, 'between 0 and 1'),
                                              ({'tokenizer': 'gpt3'}, "unknown tokenizer 'gpt3'"),
                                              ({'num_proc': 0}, 'at least 1')])
def test_bad_settings(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        prepare.prepare_corpus(shakespeare(), str(tmp_path / 'out'), **{'tokenizer': 'char', **setting})
    assert files_under(tmp_path / 'out') == []


def test_cli_bad_input_is_one_line_on_stderr(tmp_path):
    bad = write(tmp_path / 'latin1.txt', 'caf\xe9'.encode('latin-1'))
    result = run('data/shakespeare_char/prepare.py', f'--input={bad}')
    assert_one_line_error(result)
    assert result.stderr.startswith(f'error: {bad} is not UTF-8')


def die(encoder, batch):
    os._exit(1)  # as when the kernel kills a worker for lack of memory


def test_a_dead_worker_is_an_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare.Encoder, 'encode', die)  # the forked workers inherit it
    with pytest.raises(OSError, match='a worker process died'):
        prepare.prepare_corpus(shakespeare(), str(tmp_path / 'out'), 'gpt2', num_proc=2)
    assert [f for f in files_under(tmp_path / 'out') if not f.startswith('.prepare/')] == []
