"""
Token bins from text, the machinery behind prepare.py and data/*/prepare.py: read a corpus (.txt, .jsonl,
.parquet), tokenize it on all cores with bounded memory, and write the dataset's train.bin, val.bin and
meta.pkl (see dataset.py for the format).

Large corpora: documents are streamed in batches of about a megabyte through a pool of num_proc
processes; the tokens of each part of the corpus (about 64 MB of input) are kept in <out_dir>/.prepare/
until the end, so running the same preparation again after an interruption resumes where it stopped.
The new set replaces an old one so that the folder is never readable in a mixed state: the old train.bin
is removed first, then meta.pkl and val.bin are renamed into place, and train.bin last.
"""

import codecs
import collections
import contextlib
import errno
import functools
import json
import os
import pickle
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

import tokenizer as tokenizers
from atomic import atomic_path

SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
BUILTIN_TOKENIZERS = {'shakespeare_char': 'char', 'shakespeare': 'gpt2'}
EXTENSIONS = ('.txt', '.jsonl', '.parquet')
BATCH_CHARS = 1 << 20  # text sent to a worker at a time; long documents are cut into pieces of at most this
PART_BYTES = 64 << 20  # input per resumable part of the corpus (one .prepare/ piece file)
SHARD_TOKENS = 1 << 24  # tokens copied at a time into the final bins
MIN_SPLIT_TOKENS = 2  # one input token and its target
VAL_SEED = 2357  # nanoGPT's seed for its OpenWebText val split


# ----------------------------------------------------------------------------------------------
# reading the corpus: files -> documents -> pieces -> batches


class Piece(NamedTuple):
    text: str
    ends_document: bool  # the last piece of its document: the end-of-text token follows it
    val: bool  # the document goes to val.bin (val_by_document only)
    starts_document: bool = True  # the first piece of its document: a BOS precedes it (Llama's tokenizers)


class Batch(NamedTuple):
    pieces: list
    nbytes: float  # how much of the input files it accounts for, for the progress bar


def corpus_files(inputs):
    """The files a list of input paths stands for: a file itself, or a folder's .txt, .jsonl and
    .parquet files, recursively, in sorted order, hidden ones left out."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = []
            for folder, subfolders, names in os.walk(path):
                subfolders[:] = [s for s in subfolders if not s.startswith('.')]
                found += [os.path.join(folder, n) for n in names if n.endswith(EXTENSIONS) and not n.startswith('.')]
            if not found:
                raise ValueError(f'no {", ".join(EXTENSIONS)} files in {path}: put your text there, '
                                 f'or name a file instead')
            files += sorted(found)
        elif os.path.lexists(path):
            files.append(path)
        else:
            raise FileNotFoundError(f'input {path} does not exist: check the path')
    return files


def open_input(path):
    try:
        return open(path, 'rb')
    except OSError as e:
        raise OSError(f'cannot read {path} ({e.strerror or e}): fix it or leave it out of the input') from None


def not_utf8(path, position, byte):
    return ValueError(f'{path} is not UTF-8 text (byte 0x{byte:02x} at offset {position:,}): convert it '
                      f'(e.g. iconv -f latin1 -t utf-8) or leave it out of the input')


def read_documents(path, text_field):
    """(text, ends_document, nbytes) tuples: a .jsonl or .parquet file holds one document per record,
    any other file is one document, read in blocks."""
    if path.endswith('.jsonl'):
        return read_jsonl(path, text_field)
    if path.endswith('.parquet'):
        return read_parquet(path, text_field)
    return read_text(path)


def read_text(path):
    decoder = codecs.getincrementaldecoder('utf-8')()
    position = 0  # bytes of the file read so far
    with open_input(path) as f:
        while True:
            block = f.read(BATCH_CHARS)
            undecoded = len(decoder.getstate()[0])  # the start of a character cut by the last block
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                start = position - undecoded + e.start
                raise not_utf8(path, start, e.object[e.start]) from None
            position += len(block)
            yield text, not block, len(block)
            if not block:
                return


def read_jsonl(path, text_field):
    with open_input(path) as f:
        position = 0
        for number, line in enumerate(f, 1):
            try:
                line_text = line.decode('utf-8')
            except UnicodeDecodeError as e:
                raise not_utf8(path, position + e.start, line[e.start]) from None
            position += len(line)
            if not line_text.strip():
                continue
            try:
                record = json.loads(line_text)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path} line {number} is not JSON ({e.msg}): each line of a .jsonl file '
                                 f'must be one object such as {{"{text_field}": "..."}}') from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ', '.join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f'{path} line {number} has no {text_field!r} field (it has {keys}): '
                                 f'name the field that holds the text with --text_field=NAME')
            text = record[text_field]
            if not isinstance(text, str):
                raise ValueError(f'{path} line {number}: {text_field!r} is a {type(text).__name__}, not text: '
                                 f'name the field that holds the text with --text_field=NAME')
            yield text, True, len(line)


def read_parquet(path, text_field):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise OSError(f'reading {path} needs pyarrow: pip install pyarrow') from None
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f'{path} is not a readable parquet file ({str(e).splitlines()[0]}): '
                         f'replace it or leave it out of the input') from None
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise ValueError(f'{path} has no {text_field!r} column (it has {", ".join(schema.names)}): '
                         f'name the column that holds the text with --text_field=NAME')
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise ValueError(f'{path}: column {text_field!r} holds {column_type}, not text: '
                         f'name the column that holds the text with --text_field=NAME')
    nbytes_per_row = os.path.getsize(path) / max(parquet.metadata.num_rows, 1)
    for record_batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
        for text in record_batch.column(0).to_pylist():
            yield text or '', True, nbytes_per_row


def cut_point(text, limit):
    """Where to cut text (an index in 1..limit) so that BPE gives the same tokens on the two parts
    as on the whole: after a newline between two non-space characters, where GPT-2's pretokenizer
    always splits. Failing that (a very long line, Windows newlines) after the last newline or
    before the last space, else at limit: a token may then differ at the cut, which is harmless."""
    i = limit
    while (i := text.rfind('\n', 1, i)) > 0:
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
    newline, space = text.rfind('\n', 0, limit), text.rfind(' ', 1, limit)
    if newline >= 0:
        return newline + 1
    return space if space > 0 else limit


def batches(files, text_field, val_fraction=0.0, val_by_document=False):
    """The text of files (pairs (index in the corpus, path)) as Batches of about BATCH_CHARS
    characters. With val_by_document each document goes to val with probability val_fraction,
    drawn from a generator seeded by the file's index, so a resumed run draws the same."""
    pieces, size, nbytes = [], 0, 0.0
    for index, path in files:
        draws = np.random.default_rng([VAL_SEED, index])
        val = val_by_document and draws.random() < val_fraction
        document = ''  # the part of the current document not yet in a piece
        first = True  # no piece of the current document yet
        for text, ends_document, read in read_documents(path, text_field):
            document += text
            nbytes += read
            while len(document) > BATCH_CHARS or (ends_document and document):
                cut = cut_point(document, BATCH_CHARS) if len(document) > BATCH_CHARS else len(document)
                last = cut == len(document) and ends_document
                pieces.append(Piece(document[:cut], last, val, first))
                first = False
                size += cut
                document = document[cut:]
                if size >= BATCH_CHARS:
                    yield Batch(pieces, nbytes)
                    pieces, size, nbytes = [], 0, 0.0
            if ends_document:
                val = val_by_document and draws.random() < val_fraction
                first = True
    if pieces or nbytes:
        yield Batch(pieces, nbytes)


# ----------------------------------------------------------------------------------------------
# tokenizing: batches -> token ids, on a pool of worker processes


def get_encoding(name):
    import tiktoken
    if name not in tiktoken.list_encoding_names():
        raise ValueError(f'unknown tokenizer {name!r}: use char or a tiktoken encoding '
                         f'({", ".join(tiktoken.list_encoding_names())})')
    try:
        return tiktoken.get_encoding(name)
    except OSError as e:
        raise OSError(f'could not load the tiktoken encoding {name!r} ({type(e).__name__}): tiktoken downloads '
                      f'it on first use, so connect once, or point TIKTOKEN_CACHE_DIR at a folder that has it') from None


class Encoder:
    """Turns a Batch into token ids of the dataset's dtype: (train ids, val ids). A tokenizer.json dataset's
    tokenizer is read from folder (the preparation's copy of it)."""

    def __init__(self, meta, folder=''):
        self.dtype = np.dtype(meta['dtype'])
        self.start_of_document = self.end_of_document = np.empty(0, self.dtype)
        self.encode_ordinary = None  # text -> ids, no special tokens added; None for char
        if meta['tokenizer'] == 'char':
            # itos is in sorted order, so a character's id is its rank among these code points
            self.code_points = np.array([ord(meta['itos'][i]) for i in range(meta['vocab_size'])], np.uint32)
        elif meta['tokenizer'] == tokenizers.HFTokenizer.name:  # each document is BOS (if the family has one) text EOS
            enc = tokenizers.HFTokenizer(folder)
            self.encode_ordinary = functools.partial(enc.encode, bos=False)
            self.start_of_document = np.array([enc.bos_id] if enc.add_bos else [], self.dtype)
            self.end_of_document = np.array([] if enc.eos_id is None else [enc.eos_id], self.dtype)
        else:
            enc = get_encoding(meta['tokenizer'])
            self.encode_ordinary = enc.encode_ordinary
            self.end_of_document = np.array([enc.eot_token], self.dtype)

    def encode_text(self, text):
        if self.encode_ordinary is not None:
            return np.array(self.encode_ordinary(text), self.dtype)
        code_points = np.frombuffer(text.encode('utf-32-le'), np.uint32)
        ids = np.searchsorted(self.code_points, code_points)
        if not np.array_equal(self.code_points[np.minimum(ids, len(self.code_points) - 1)], code_points):
            raise ValueError('an input file changed while it was being prepared: run again')
        return ids.astype(self.dtype)

    def encode(self, batch, max_tokens=None):
        """(train ids, val ids); with max_tokens, of only the batch's first max_tokens tokens in corpus order."""
        ids = ([], [])  # train, val
        for piece in batch.pieces:
            piece_ids = self.encode_text(piece.text)
            if piece.starts_document:
                piece_ids = np.concatenate([self.start_of_document, piece_ids])
            if piece.ends_document:
                piece_ids = np.concatenate([piece_ids, self.end_of_document])
            if max_tokens is not None:
                piece_ids = piece_ids[:max_tokens]
                max_tokens -= len(piece_ids)
            ids[piece.val].append(piece_ids)
            if max_tokens == 0:
                break
        return tuple(np.concatenate(split) if split else np.empty(0, self.dtype) for split in ids)


worker_encoder = None  # each pool worker's Encoder, built once by start_worker


def start_worker(make_encoder):
    global worker_encoder
    worker_encoder = make_encoder()


def encode_in_worker(batch):
    return worker_encoder.encode(batch)


def encoded(batches, make_encoder, pool, num_proc):
    """(batch, (train ids, val ids)) for each batch, in order: in this process when pool is None,
    else on the pool's num_proc workers with at most two batches each read ahead. (Pool.imap would
    read its whole input ahead as fast as it can, which can mean the whole corpus in RAM; and a
    ProcessPoolExecutor, unlike a multiprocessing.Pool, fails instead of hanging when a worker dies.)"""
    if pool is None:
        encoder = make_encoder()
        for batch in batches:
            yield batch, encoder.encode(batch)
        return
    pending = collections.deque()
    for batch in batches:
        pending.append((batch, pool.submit(encode_in_worker, batch)))
        if len(pending) > 2 * num_proc:
            batch, result = pending.popleft()
            yield batch, result.result()
    while pending:
        batch, result = pending.popleft()
        yield batch, result.result()


def vocab_dtype(vocab_size):
    """The smallest unsigned integer type that holds every token id."""
    return 'uint16' if vocab_size <= 2 ** 16 else 'uint32'


def tokenizer_copy(work_dir):
    """Where a preparation keeps its copy of a Hugging Face tokenizer's files, until they join the bins."""
    return os.path.join(work_dir, 'tokenizer')


def tokenizer_files(folder):
    """The files of a Hugging Face tokenizer that folder holds (none when it is not there)."""
    return [name for name in tokenizers.TOKENIZER_FILES if os.path.isfile(os.path.join(folder, name))]


def make_meta(tokenizer, files, text_field, hf_tokenizer=None):
    """meta.pkl's contents; for char this reads the corpus once for its set of characters."""
    if hf_tokenizer is not None:
        return {'vocab_size': hf_tokenizer.vocab_size, 'dtype': vocab_dtype(hf_tokenizer.vocab_size),
                'tokenizer': hf_tokenizer.name, 'fingerprint': hf_tokenizer.fingerprint}
    if tokenizer != 'char':
        enc = get_encoding(tokenizer)
        return {'vocab_size': enc.n_vocab, 'dtype': vocab_dtype(enc.n_vocab), 'tokenizer': tokenizer}
    chars = set()
    total = sum(os.path.getsize(path) for path in files)
    with tqdm(total=total, unit='B', unit_scale=True, desc='vocabulary', delay=1) as bar:
        for path in files:
            for text, _, nbytes in read_documents(path, text_field):
                chars.update(text)
                bar.update(nbytes)
    chars = sorted(chars)
    return {'vocab_size': len(chars), 'dtype': vocab_dtype(len(chars)), 'tokenizer': 'char',
            'stoi': {ch: i for i, ch in enumerate(chars)}, 'itos': dict(enumerate(chars))}


# ----------------------------------------------------------------------------------------------
# the whole preparation: corpus -> .prepare/ pieces (resumable) -> train.bin, val.bin, meta.pkl


def prepare_corpus(inputs, out_dir, tokenizer='gpt2', val_fraction=0.1, num_proc=1, text_field='text',
                   val_by_document=False, max_tokens=None):
    """Tokenize the corpus at inputs (a path or list of paths, see corpus_files) into out_dir's
    train.bin, val.bin and meta.pkl. val.bin is the last val_fraction of the token stream, or with
    val_by_document a random val_fraction of the documents (nanoGPT's OpenWebText split). With
    max_tokens, only the first max_tokens tokens of the corpus's stream (documents in order, each with
    its end-of-text token) are kept, cut exactly: the two bins hold that many tokens together.
    Returns {'train_tokens', 'val_tokens', 'vocab_size', 'dtype', 'tokenizer'}."""
    if not 0 < val_fraction < 1:
        raise ValueError(f'val_fraction={val_fraction} must be between 0 and 1, e.g. 0.1')
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f'num_proc={num_proc!r} must be a whole number of processes, at least 1')
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f'max_tokens={max_tokens!r} must be a whole number of tokens, at least 1')
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    files = corpus_files(inputs)
    try:
        file_stats = [os.stat(path) for path in files]
    except OSError as e:
        raise OSError(f'cannot read {e.filename} ({e.strerror}): fix it or leave it out of the input') from None
    total = sum(st.st_size for st in file_stats)
    source = inputs[0] if len(inputs) == 1 else f'{inputs[0]} and {len(inputs) - 1} more'
    if total == 0:
        raise ValueError(f'{source} is empty: there is no text to prepare')
    if max_tokens is not None:
        source = f'the first {max_tokens:,} tokens of {source}'
    hf_folder = tokenizers.hf_folder(tokenizer)  # a Hugging Face tokenizer's, else None: char or tiktoken
    hf_tokenizer = tokenizers.HFTokenizer(hf_folder) if hf_folder else None
    if tokenizer != 'char' and hf_tokenizer is None:
        get_encoding(tokenizer)  # fail now on an unknown or unloadable one, not in every worker

    work_dir = os.path.join(out_dir, '.prepare')
    plan = {'files': [(os.path.abspath(p), st.st_size, st.st_mtime_ns) for p, st in zip(files, file_stats)],
            'tokenizer': tokenizer, 'text_field': text_field, 'val_fraction': val_fraction,
            'val_by_document': val_by_document, 'max_tokens': max_tokens,
            'fingerprint': hf_tokenizer and hf_tokenizer.fingerprint}
    with disk_errors(out_dir, work_dir):
        meta = resume(work_dir, plan)
        if meta is None:
            shutil.rmtree(work_dir, ignore_errors=True)  # another corpus's or settings' pieces
            meta = make_meta(tokenizer, files, text_field, hf_tokenizer)
            if hf_tokenizer:  # the files themselves, read from here on: a later change to the folder is not mixed in
                os.makedirs(tokenizer_copy(work_dir))
                for name in tokenizer_files(hf_folder):
                    shutil.copyfile(os.path.join(hf_folder, name), os.path.join(tokenizer_copy(work_dir), name))
            with atomic_path(os.path.join(work_dir, 'plan.json')) as tmp, open(tmp, 'w') as f:
                json.dump({'plan': plan, 'meta': meta}, f)
        parts = split_into_parts(list(enumerate(files)), [st.st_size for st in file_stats])
        read = functools.partial(batches, text_field=text_field, val_fraction=val_fraction,
                                 val_by_document=val_by_document)
        try:
            tokenize_parts(parts, read, meta, num_proc, work_dir, max_tokens)
        except ValueError:  # the input must be fixed, which starts over anyway; an interrupt keeps the pieces
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        except BrokenProcessPool:
            raise OSError('a worker process died (killed for lack of memory?): run the same command again to resume, '
                          'with fewer processes (--num_proc) if it happens again') from None

        n_train, n_val = write_dataset(out_dir, work_dir, len(parts), meta, val_fraction, val_by_document, source)
        shutil.rmtree(work_dir)
        return {'train_tokens': n_train, 'val_tokens': n_val, 'vocab_size': meta['vocab_size'],
                'dtype': meta['dtype'], 'tokenizer': meta['tokenizer']}


@contextlib.contextmanager
def disk_errors(out_dir, work_dir):
    """A full disk while preparing out_dir as one line: what is unchanged and how to go on."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise OSError(f'could not write {e.filename or out_dir} ({e.strerror}): the dataset already in {out_dir}, if '
                      'any, is unchanged; free some disk space and run the same command again (it resumes from '
                      f'{work_dir})') from None


def write_dataset(out_dir, work_dir, n_parts, meta, val_fraction, val_by_document, source):
    """train.bin, val.bin and meta.pkl from the tokenized pieces; returns the two token counts."""
    train_pieces = [piece_path(work_dir, i, 'train') for i in range(n_parts)]
    val_pieces = [piece_path(work_dir, i, 'val') for i in range(n_parts)]
    n_tokens = sum(os.path.getsize(p) for p in train_pieces) // np.dtype(meta['dtype']).itemsize
    if val_by_document:
        n_val = sum(os.path.getsize(p) for p in val_pieces) // np.dtype(meta['dtype']).itemsize
        n_train = n_tokens
        train_range, val_range = (train_pieces, 0, n_train), (val_pieces, 0, n_val)
    else:
        n_train = int(n_tokens * (1 - val_fraction))
        n_val = n_tokens - n_train
        train_range, val_range = (train_pieces, 0, n_train), (train_pieces, n_train, n_tokens)
    if min(n_train, n_val) < MIN_SPLIT_TOKENS:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise ValueError(f'{source} is too small to split: {n_train + n_val:,} tokens give {n_train:,} train and '
                         f'{n_val:,} val tokens with val_fraction={val_fraction} (each needs at least '
                         f'{MIN_SPLIT_TOKENS}): add text or change --val_fraction')

    # the old train.bin goes first; then a Hugging Face tokenizer's files, meta.pkl, val.bin and train.bin are renamed
    # into place in that order (the contexts close in reverse): a folder with a train.bin always has the other files
    # of its set
    meta = dict(meta, train_tokens=n_train, val_tokens=n_val)
    with atomic_path(os.path.join(out_dir, 'train.bin')) as train_tmp, \
            atomic_path(os.path.join(out_dir, 'val.bin')) as val_tmp, \
            atomic_path(os.path.join(out_dir, 'meta.pkl')) as meta_tmp, \
            contextlib.ExitStack() as tokenizer_tmps:
        for name in tokenizer_files(tokenizer_copy(work_dir)):
            tmp = tokenizer_tmps.enter_context(atomic_path(os.path.join(out_dir, name)))
            shutil.copyfile(os.path.join(tokenizer_copy(work_dir), name), tmp)
        write_bin(*train_range, train_tmp, meta['dtype'], 'train.bin')
        write_bin(*val_range, val_tmp, meta['dtype'], 'val.bin')
        with open(meta_tmp, 'wb') as f:
            pickle.dump(meta, f, protocol=4)  # plain values only: nanoGPT's sample.py reads it too
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, 'train.bin'))
    return n_train, n_val


def resume(work_dir, plan):
    """The meta of an interrupted preparation of the same plan (same files, unchanged, same
    settings), or None when there is none to resume."""
    try:
        with open(os.path.join(work_dir, 'plan.json')) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get('plan') != json.loads(json.dumps(plan)):
        return None
    meta = saved['meta']
    if 'itos' in meta:  # JSON keys are strings
        meta['itos'] = {int(i): c for i, c in meta['itos'].items()}
    return meta


def split_into_parts(files, sizes):
    """Group consecutive files into parts of at least PART_BYTES (a bigger file is a part of its
    own): the unit of work that a resumed preparation skips. Returns [(files, sizes)]."""
    parts, part, part_sizes = [], [], []
    for file, size in zip(files, sizes):
        part.append(file)
        part_sizes.append(size)
        if sum(part_sizes) >= PART_BYTES:
            parts.append((part, part_sizes))
            part, part_sizes = [], []
    if part:
        parts.append((part, part_sizes))
    return parts


def piece_path(work_dir, part, split):
    return os.path.join(work_dir, f'{part:05d}.{split}.bin')


def tokenize_parts(parts, read, meta, num_proc, work_dir, max_tokens=None):
    """Tokenize each part not done yet into its two pieces in work_dir (train and val ids), written
    atomically, the train piece last: its presence marks the part done. With max_tokens the stream
    stops after that many tokens: the batch where it does is encoded again here up to the cut, and
    the parts after it get empty pieces. Parts are done in order, so the tokens of the done ones are
    what a resumed run has already taken."""
    make_encoder = functools.partial(Encoder, meta, tokenizer_copy(work_dir))  # picklable, for the workers
    done = [i for i in range(len(parts)) if os.path.exists(piece_path(work_dir, i, 'train'))]
    if done:
        print(f'resuming: {len(done)} of {len(parts)} parts are already tokenized in {work_dir}')
    itemsize = np.dtype(meta['dtype']).itemsize
    done_tokens = sum(os.path.getsize(piece_path(work_dir, i, split)) for i in done for split in ('train', 'val'))
    done_tokens //= itemsize
    left = None if max_tokens is None else max_tokens - done_tokens  # tokens still to take
    if max_tokens is None:
        progress = tqdm(total=sum(sum(sizes) for _, sizes in parts), initial=sum(sum(parts[i][1]) for i in done),
                        unit='B', unit_scale=True, desc='tokenizing', delay=1)
    else:  # in tokens: how much of the input the cut needs is not known in advance
        progress = tqdm(total=max_tokens, initial=done_tokens, unit='tok', unit_scale=True, desc='tokenizing', delay=1)
    if num_proc > 1:
        workers = ProcessPoolExecutor(num_proc, initializer=start_worker, initargs=(make_encoder,))
    else:
        workers = contextlib.nullcontext()  # None: encode in this process, without forking
    with workers as pool, progress as bar:
        for i, (files, _) in enumerate(parts):
            if i in done:
                continue
            with atomic_path(piece_path(work_dir, i, 'train')) as train_tmp, \
                    atomic_path(piece_path(work_dir, i, 'val')) as val_tmp, \
                    open(train_tmp, 'wb') as train_file, open(val_tmp, 'wb') as val_file:
                if left == 0:
                    continue  # the stream was cut before this part: its pieces stay empty
                for batch, (train_ids, val_ids) in encoded(read(files), make_encoder, pool, num_proc):
                    if left is not None and len(train_ids) + len(val_ids) > left:
                        train_ids, val_ids = make_encoder().encode(batch, left)  # the cut, to the token
                    train_file.write(train_ids.tobytes())
                    val_file.write(val_ids.tobytes())
                    taken = len(train_ids) + len(val_ids)
                    bar.update(batch.nbytes if left is None else taken)
                    if left is not None:
                        left -= taken
                        if left == 0:
                            break


def write_bin(pieces, start, stop, path, dtype, name):
    """Tokens start..stop of the pieces laid end to end, written to path one shard of at most SHARD_TOKENS
    at a time (each piece mapped only while its shard is copied, so that a 17 GB train.bin never shows as
    17 GB of resident memory). Written with write(), not through a memmap of a sparse file: on a full disk
    a write is an OSError (ENOSPC), a store into a mapped page a SIGBUS that kills the process."""
    itemsize = np.dtype(dtype).itemsize
    offset = 0  # where the current piece starts in the stream of all pieces
    with open(path, 'wb') as out:
        for piece in tqdm(pieces, desc=f'writing {name}', unit='piece', delay=1):
            length = os.path.getsize(piece) // itemsize
            for lo in range(max(start, offset), min(stop, offset + length), SHARD_TOKENS):
                hi = min(lo + SHARD_TOKENS, stop, offset + length)
                source = np.memmap(piece, dtype=dtype, mode='r', offset=(lo - offset) * itemsize, shape=(hi - lo,))
                out.write(source.tobytes())
                del source
            offset += length


# ----------------------------------------------------------------------------------------------
# the built-in datasets


def download(url, path):
    """url's content to path (atomically), or an error saying where to put the file by hand."""
    import requests
    print(f'downloading {url} to {path}')
    try:
        response = requests.get(url, timeout=30)
        response.raise_for_status()
    except requests.RequestException as e:
        raise OSError(f'could not download {url} ({type(e).__name__}): download it by hand to {path}, '
                      f'or give the data/*/prepare.py script --input=PATH to a copy') from None
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(response.content)


def download_parquet(repo, folder, n_files=None):
    """The paths of the .parquet files in folder of the Hugging Face dataset repo, in sorted order (the
    first n_files of them, or all), downloaded into the Hugging Face cache unless they are there already
    (huggingface_hub resumes a partial download), with a progress bar each; or an error that says how to
    get them by hand."""
    from huggingface_hub import HfApi, hf_hub_download
    by_hand = (f'download its {folder}/*.parquet files into a folder from https://huggingface.co/datasets/{repo} '
               f'by hand and pass --input=FOLDER')
    try:
        names = sorted(name for name in HfApi().list_repo_files(repo, repo_type='dataset')
                       if name.startswith(f'{folder}/') and name.endswith('.parquet'))
        paths = [hf_hub_download(repo, name, repo_type='dataset') for name in names[:n_files]]
    except Exception as e:  # requests' errors are OSErrors, httpx's (huggingface_hub 1.0 and later) are not
        reason = (str(e).strip().splitlines() or [''])[-1].split('. ')[0]
        raise OSError(f'could not download {repo} from the Hugging Face hub ({type(e).__name__}: {reason}); '
                      f'check the network (and HF_HUB_OFFLINE), or {by_hand}') from None
    if not paths:
        raise OSError(f'{repo} has no {folder}/*.parquet files any more: {by_hand}')
    return paths


def prepare_missing(dataset, data_dir, master_process=True):
    """Prepare a built-in dataset whose bins are missing from data_dir (on the master process; the others wait)."""
    import torch.distributed as dist
    if dataset not in BUILTIN_TOKENIZERS:
        raise FileNotFoundError(f'no training data at {data_dir}/train.bin: prepare it first with '
                                f'`python data/{dataset}/prepare.py` (or `python prepare.py YOUR_TEXTS '
                                f'--name={dataset}` for your own corpus)')
    if master_process:
        print(f'{data_dir}/train.bin is missing: preparing {dataset} first')
        prepare_builtin(dataset, data_dir)
    if dist.is_initialized():
        dist.barrier()


def prepare_builtin(name, data_dir, input=None):
    """Prepare data/shakespeare_char or data/shakespeare into data_dir as its script does: Tiny
    Shakespeare (input, else data_dir/input.txt, downloaded when absent), 90/10 split."""
    if name not in BUILTIN_TOKENIZERS:
        raise ValueError(f'no built-in dataset {name!r}: choose one of {", ".join(BUILTIN_TOKENIZERS)}')
    if input is None:
        input = os.path.join(data_dir, 'input.txt')
        if not os.path.exists(input):
            download(SHAKESPEARE_URL, input)
    stats = prepare_corpus(input, data_dir, BUILTIN_TOKENIZERS[name], val_fraction=0.1, num_proc=1)
    print(f'prepared {data_dir}: {stats["train_tokens"]:,} train and {stats["val_tokens"]:,} val tokens '
          f'({stats["tokenizer"]}, vocab {stats["vocab_size"]:,}) from {input}')
    return stats
