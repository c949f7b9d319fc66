"""data/fineweb_edu/prepare.py from the command line, offline, on small parquet files in FineWeb-Edu's layout."""
import os
import signal

import numpy as np
import pytest

import corpus
from helpers import assert_one_line_error, files_under, gpt2_encoding, read_bins, run

SCRIPT = 'data/fineweb_edu/prepare.py'
OUTPUTS = ['meta.pkl', 'train.bin', 'val.bin']


def write_fineweb(folder, n_files=3, docs_per_file=30):
    """Parquet files named and laid out as sample/10BT's (text and the metadata columns); returns the
    documents in corpus order, each different from the others."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(folder, exist_ok=True)
    documents = []
    for f in range(n_files):
        texts = [f'Lesson {f}-{d}: ' + 'how plants turn light into sugar. ' * (d % 6)
                 + ('\n\nCafé, naïve — 光合作用.' if d % 4 == 1 else '') for d in range(docs_per_file)]
        pq.write_table(pa.table({
            'text': texts,
            'id': [f'<urn:uuid:{f}-{d}>' for d in range(docs_per_file)],
            'dump': ['CC-MAIN-2024-10'] * docs_per_file,
            'url': [f'https://example.org/{f}/{d}' for d in range(docs_per_file)],
            'token_count': [len(t) // 4 for t in texts],
            'score': [2.5 + d / 100 for d in range(docs_per_file)],
            'int_score': [3] * docs_per_file,
        }), os.path.join(folder, f'{f:03d}_00000.parquet'))
        documents += texts
    return documents


def prepare(*args, **options):
    return run(SCRIPT, *args, **options)


def prepare_part_per_file(*args, kill_at_file=0):
    """The script with each parquet file a resumable part of its own, as each 2 GB file of the real sample is;
    with kill_at_file=N, killed by SIGKILL as it starts reading the N-th file."""
    code = f'''
import os, runpy, signal, sys
import corpus
corpus.PART_BYTES = 1
read_documents, started = corpus.read_documents, []
def read_or_die(path, text_field):
    started.append(path)
    if len(started) == {kill_at_file}:
        os.kill(os.getpid(), signal.SIGKILL)
    return read_documents(path, text_field)
corpus.read_documents = read_or_die
runpy.run_path({SCRIPT!r}, run_name='__main__')
'''
    return run('-c', code, *args)


def stream(enc, documents):
    """The documents' tokens, each followed by <|endoftext|>."""
    return np.array([t for d in documents for t in enc.encode_ordinary(d) + [enc.eot_token]], np.int64)


def test_bins_are_the_documents_each_ended_by_endoftext_split_by_document(tmp_path):
    enc = gpt2_encoding()
    documents = write_fineweb(tmp_path / 'sample')
    result = prepare(f'--input={tmp_path / "sample"}', f'--out_dir={tmp_path / "out"}', '--val_fraction=0.2',
                     '--num_proc=2')
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / 'out') == OUTPUTS  # the resumable pieces are gone
    meta, train, val = read_bins(tmp_path / 'out')
    assert meta == {'vocab_size': 50257, 'dtype': 'uint16', 'tokenizer': 'gpt2', 'train_tokens': len(train),
                    'val_tokens': len(val)}
    train_docs, val_docs = (enc.decode(ids.tolist()).split('<|endoftext|>') for ids in (train, val))
    assert train_docs.pop() == '' and val_docs.pop() == ''  # each split ends with a whole document
    # every document whole in exactly one split, in corpus order within each, its tokens those of tiktoken
    assert sorted(train_docs + val_docs) == sorted(documents)
    assert train_docs == [d for d in documents if d in train_docs]
    assert val_docs == [d for d in documents if d in val_docs]
    assert np.array_equal(train, stream(enc, train_docs)) and np.array_equal(val, stream(enc, val_docs))
    assert 0.1 < len(val_docs) / len(documents) < 0.3


def test_shards_take_the_first_files(tmp_path):
    enc = gpt2_encoding()
    documents = write_fineweb(tmp_path / 'sample', n_files=3, docs_per_file=20)
    result = prepare(f'--input={tmp_path / "sample"}', f'--out_dir={tmp_path / "out"}', '--val_fraction=0.2',
                     '--shards=2')
    assert result.returncode == 0, result.stderr
    _, train, val = read_bins(tmp_path / 'out')
    prepared = enc.decode(np.concatenate([train, val]).tolist()).split('<|endoftext|>')[:-1]
    assert sorted(prepared) == sorted(documents[:40])  # the first two files' documents


def test_max_tokens_is_the_first_n_tokens_of_the_stream_cut_exactly(tmp_path):
    enc = gpt2_encoding()
    documents = write_fineweb(tmp_path / 'sample')
    whole = prepare(f'--input={tmp_path / "sample"}', f'--out_dir={tmp_path / "whole"}', '--val_fraction=0.2')
    assert whole.returncode == 0, whole.stderr
    _, _, val = read_bins(tmp_path / 'whole')
    in_val = set(enc.decode(val.tolist()).split('<|endoftext|>'))

    # a cut inside a document of the third file: the slice is the first max_tokens tokens of the corpus's
    # stream, each document in the split it has in the whole preparation, the last one without its end
    max_tokens = len(stream(enc, documents[:70])) + 3
    expected = ([], [])  # train, val
    for document in documents:
        tokens = list(stream(enc, [document]))[:max_tokens - sum(map(len, expected))]
        expected[document in in_val].extend(tokens)
    for num_proc in (2, 1):  # the same slice from any number of processes
        out_dir = tmp_path / f'slice{num_proc}'
        result = prepare(f'--input={tmp_path / "sample"}', f'--out_dir={out_dir}', '--val_fraction=0.2',
                         f'--max_tokens={max_tokens}', f'--num_proc={num_proc}')
        assert result.returncode == 0, result.stderr
        meta, train, val = read_bins(out_dir)
        assert (meta['train_tokens'], meta['val_tokens']) == (len(train), len(val))
        assert len(train) + len(val) == max_tokens
        assert train.tolist() == expected[0] and val.tolist() == expected[1]
        assert train[-1] != enc.eot_token or val[-1] != enc.eot_token  # the cut document lost its end


def test_a_killed_preparation_resumes_where_it_stopped(tmp_path):
    enc = gpt2_encoding()
    documents = write_fineweb(tmp_path / 'sample')
    max_tokens = len(stream(enc, documents[:70])) + 3  # the cut is in the third file, after the kill
    args = (f'--input={tmp_path / "sample"}', '--val_fraction=0.2', f'--max_tokens={max_tokens}', '--num_proc=1')
    whole = prepare(*args, f'--out_dir={tmp_path / "whole"}')
    assert whole.returncode == 0, whole.stderr

    out_dir = tmp_path / 'resumed'
    killed = prepare_part_per_file(*args, f'--out_dir={out_dir}', kill_at_file=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # the two finished parts are kept, and no final file exists
    assert [f for f in files_under(out_dir) if not f.endswith('.tmp')] == [
        '.prepare/00000.train.bin', '.prepare/00000.val.bin', '.prepare/00001.train.bin', '.prepare/00001.val.bin',
        '.prepare/plan.json']
    resumed = prepare_part_per_file(*args, f'--out_dir={out_dir}')
    assert resumed.returncode == 0, resumed.stderr
    assert 'resuming: 2 of 3 parts are already tokenized' in resumed.stdout
    assert files_under(out_dir) == OUTPUTS
    for name in OUTPUTS:
        assert (out_dir / name).read_bytes() == (tmp_path / 'whole' / name).read_bytes()


@pytest.mark.parametrize('case', ['missing folder', 'empty folder', 'no documents', 'negative shards'])
def test_bad_input_is_one_line_and_exit_1(tmp_path, case):
    folder = tmp_path / 'sample'
    if case != 'missing folder':
        folder.mkdir()
    if case == 'no documents':
        gpt2_encoding()  # or skip: the tokenizer is loaded before the documents are read
        write_fineweb(folder, n_files=1, docs_per_file=0)
    if case == 'negative shards':
        write_fineweb(folder, n_files=1)
    shards = ['--shards=-1'] if case == 'negative shards' else []
    result = prepare(f'--input={folder}', f'--out_dir={tmp_path / "out"}', *shards)
    assert_one_line_error(result, '--shards=-1' if case == 'negative shards' else str(folder))
    assert files_under(tmp_path / 'out') == []


def test_download_takes_the_first_files_of_the_sample_in_order(monkeypatch):
    import huggingface_hub
    listed = ['README.md', 'sample/10BT/001_00000.parquet', 'sample/100BT/000_00000.parquet',
              'sample/10BT/000_00000.parquet', 'data/CC-MAIN-2024-10/000_00000.parquet',
              'sample/10BT/002_00000.parquet']
    downloaded = []
    monkeypatch.setattr(huggingface_hub.HfApi, 'list_repo_files', lambda self, repo, repo_type: listed)
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download',
                        lambda repo, name, repo_type: downloaded.append(name) or f'/cache/{name}')
    assert corpus.download_parquet('HuggingFaceFW/fineweb-edu', 'sample/10BT', 2) == [
        '/cache/sample/10BT/000_00000.parquet', '/cache/sample/10BT/001_00000.parquet']
    assert downloaded == ['sample/10BT/000_00000.parquet', 'sample/10BT/001_00000.parquet']  # and nothing else
    assert len(corpus.download_parquet('HuggingFaceFW/fineweb-edu', 'sample/10BT')) == 3


def test_without_network_it_says_how_to_get_the_files(tmp_path):
    result = prepare(f'--out_dir={tmp_path / "out"}', env={'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(tmp_path / 'hf')})
    assert_one_line_error(result, 'download its sample/10BT/*.parquet files into a folder', '--input=FOLDER')
    assert result.stderr.startswith('error: could not download HuggingFaceFW/fineweb-edu')
    assert not os.path.exists(tmp_path / 'out')
