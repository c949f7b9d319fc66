"""
Instruction data: conversations in JSONL -> one example per row of block_size + 1 token ids and a loss mask that
counts only the answers (prepare.py --format=chat); the batches training draws from them (ChatBatches).

    python prepare.py chats.jsonl --format=chat --name=chat --block_size=1024                  # GPT-2's BPE
    python prepare.py chats.jsonl --format=chat --name=smol_chat --tokenizer=path/to/SmolLM2-135M-Instruct
    python train.py --dataset=chat --block_size=1024 ...

Each line is {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]} or {"prompt": "...",
"completion": "..."} (one user turn, one assistant turn). A conversation is rendered with the tokenizer's chat
template, or tokenizer.DEFAULT_CHAT_TEMPLATE where it has none, and tokenized whole; the tokens of each assistant turn
(its content and its end of turn) are found by rendering the conversation up to that turn and up to its end
(docs/data.md). The model has no document mask, so examples are not packed: each row is one example, padded, and its
padding is masked out. Besides train.bin and val.bin the dataset holds train.mask.bin and val.mask.bin, one uint8
per token (1: an answer's token, a target that counts); meta.pkl records format='chat' and the rows' block_size.
"""

import contextlib
import json
import os
import pickle
import shutil

import numpy as np

import dataset
import tokenizer as tokenizers
from atomic import atomic_path

ROLES = ('system', 'user', 'assistant')
PAD_ID = 0  # what fills a row after its example: a valid id in any vocabulary, masked out


# ----------------------------------------------------------------------------------------------
# reading: JSONL lines -> conversations, each bad line a one-line error with its number


def read_conversations(files):
    """(path, line number, messages) for each conversation of the .jsonl files, checked."""
    for path in files:
        try:
            f = open(path, 'rb')
        except OSError as e:
            raise OSError(f'cannot read {path} ({e.strerror or e}): fix it or leave it out of the input') from None
        with f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield path, number, conversation(line, f'{path} line {number}')


def conversation(line, where):
    """The messages of one JSONL line, or a ValueError that names where and what is wrong."""
    try:
        record = json.loads(line.decode('utf-8'))
    except UnicodeDecodeError:
        raise ValueError(f'{where} is not UTF-8 text: convert the file (e.g. iconv -f latin1 -t utf-8)') from None
    except json.JSONDecodeError as e:
        raise ValueError(f'{where} is not JSON ({e.msg}): each line must be one object such as '
                         '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}') from None
    if isinstance(record, dict) and 'messages' in record:
        messages = record['messages']
        if not isinstance(messages, list) or not messages:
            raise ValueError(f'{where}: "messages" is {"empty" if messages == [] else type(messages).__name__}, '
                             'not a list of {"role", "content"} objects: give the conversation\'s turns')
    elif isinstance(record, dict) and 'prompt' in record and 'completion' in record:
        messages = [{'role': 'user', 'content': record['prompt']},
                    {'role': 'assistant', 'content': record['completion']}]
    else:
        keys = ', '.join(map(repr, record)) if isinstance(record, dict) else f'a {type(record).__name__}'
        raise ValueError(f'{where} has neither "messages" nor "prompt" and "completion" (it has {keys or "nothing"}): '
                         'write {"messages": [...]} or {"prompt": "...", "completion": "..."}')
    for i, message in enumerate(messages):
        what = f'{where}: message {i + 1}' if 'messages' in record else f'{where}: the {("prompt", "completion")[i]}'
        if not isinstance(message, dict) or not {'role', 'content'} <= message.keys():
            raise ValueError(f'{what} is not an object with "role" and "content": write {{"role": "user", '
                             '"content": "..."}')
        if message['role'] not in ROLES:
            raise ValueError(f'{what} has the unknown role {message["role"]!r}: use {", ".join(ROLES)}')
        if not isinstance(message['content'], str) or not message['content'].strip():
            content = 'empty' if isinstance(message['content'], str) else f'a {type(message["content"]).__name__}'
            raise ValueError(f'{what} has {content} content, not text: give it text or leave the line out')
    if not any(m['role'] == 'assistant' for m in messages):
        raise ValueError(f'{where} has no assistant turn: there is nothing to train on; add the answer or leave the '
                         'line out')
    return [{'role': m['role'], 'content': m['content']} for m in messages]


# ----------------------------------------------------------------------------------------------
# a conversation -> token ids and its loss mask


class Renderer:
    """A tokenizer (characters, tiktoken, a Hugging Face tokenizer.json) with the chat template it renders with: its
    own, else DEFAULT_CHAT_TEMPLATE with its special tokens (an eos_token: DEFAULT_EOS_TOKEN where it names none)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        own = tokenizer.chat_template
        self.template = own or tokenizers.DEFAULT_CHAT_TEMPLATE
        self.special_tokens = {'eos_token': tokenizers.DEFAULT_EOS_TOKEN, **getattr(tokenizer, 'special_tokens', {})}
        self.bos = own is None  # a model's template writes its BOS itself; the default one: as for a document
        self.stop_ids = set(tokenizer.stop_ids)

    def render(self, messages, add_generation_prompt=False):
        return tokenizers.render_template(self.template, messages, add_generation_prompt, self.special_tokens,
                                          'the chat template')

    def encode(self, text):
        return np.array(self.tokenizer.encode(text, bos=self.bos), np.int64)

    def example(self, messages):
        """(ids, mask) of a conversation: mask is 1 on the tokens of each assistant turn, its end of turn included:
        the tokens from where the conversation rendered up to that turn (with the assistant's turn opened) stops to
        where the conversation rendered up to the end of that turn stops, cut after the last stop id (<|im_end|>...)
        in it. A token that holds any of the turn's text counts; one that holds only text after it does not."""
        text = self.render(messages)
        ids = self.encode(text)
        mask = np.zeros(len(ids), np.uint8)
        for i, message in enumerate(messages):
            if message['role'] != 'assistant':
                continue
            before, after = self.render(messages[:i], add_generation_prompt=True), self.render(messages[:i + 1])
            if not (after.startswith(before) and text.startswith(after)):
                raise ValueError('the chat template does not render the conversation turn by turn (the text up to an '
                                 'answer, its turn opened, is not the start of the text with it: the template opens '
                                 'the turn otherwise, or rewrites earlier turns), so its answers cannot be found; '
                                 'give a template that renders each turn after the ones before')
            after_ids = self.encode(after)
            start, end = common_prefix(ids, self.encode(before)), common_prefix(ids, after_ids)
            end = min(len(ids), end + (end < len(after_ids)))  # a last token that holds the turn's end and more
            stops = [j for j in range(start, end) if ids[j] in self.stop_ids]
            mask[start:stops[-1] + 1 if stops else end] = 1
        return ids, mask


def common_prefix(a, b):
    """How many tokens a and b have in common at their start."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


# ----------------------------------------------------------------------------------------------
# the whole preparation: JSONL -> rows -> train.bin, val.bin, their masks and meta.pkl


def prepare_chat(inputs, out_dir, tokenizer='gpt2', val_fraction=0.1, block_size=1024, truncate=True):
    """Write out_dir's chat dataset from the conversations of inputs (.jsonl files or folders of them): the last
    val_fraction of the conversations in val. An example longer than block_size + 1 tokens is cut there (truncate)
    or refused; one with no answer token left is left out. Returns the counts that prepare.py prints:
    train, val, truncated, left_out (examples), answer_tokens, and the tokenizer and vocab_size."""
    import corpus  # the reading of inputs, the tokenizers' meta and files: preparing only, training needs none
    if not 0 < val_fraction < 1:
        raise ValueError(f'val_fraction={val_fraction} must be between 0 and 1, e.g. 0.1')
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f'block_size={block_size!r} must be a whole number of tokens, at least 1: the block_size '
                         'you will train with')
    if tokenizer == 'bpe':
        raise ValueError('--format=chat needs an existing tokenizer: make a BPE with prepare.py --tokenizer=bpe on '
                         'text first, then give its dataset folder as --tokenizer=data/NAME')
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    source = inputs[0] if len(inputs) == 1 else f'{inputs[0]} and {len(inputs) - 1} more'
    files = corpus.corpus_files(inputs)
    for path in files:
        if not path.endswith('.jsonl'):
            raise ValueError(f'{path} is not a .jsonl file: --format=chat reads conversations, one JSON object a line')
    hf_folder = tokenizers.hf_folder(tokenizer)  # a Hugging Face tokenizer's folder, else None; unknown: an error
    n_examples, chars = 0, set()
    for _, _, messages in read_conversations(files):  # every line checked before anything is written
        n_examples += 1
        if tokenizer == 'char':  # the vocabulary: the characters of the rendered conversations
            chars.update(tokenizers.render_template(tokenizers.DEFAULT_CHAT_TEMPLATE, messages, False,
                                                    {'eos_token': tokenizers.DEFAULT_EOS_TOKEN}, 'the chat template'))
    if n_examples < 2:
        raise ValueError(f'{source} holds {n_examples} conversation(s): train and val need at least one each')
    hf_tokenizer = tokenizers.HFTokenizer(hf_folder) if hf_folder else None
    if tokenizer == 'char':
        chars = sorted(chars)
        meta = {'vocab_size': len(chars), 'dtype': corpus.vocab_dtype(len(chars)), 'tokenizer': 'char',
                'stoi': {c: i for i, c in enumerate(chars)}, 'itos': dict(enumerate(chars))}
    else:
        meta = corpus.make_meta(tokenizer, [], None, hf_tokenizer)  # with a tokenizer.json's fingerprint
    renderer = Renderer(hf_tokenizer or tokenizers.Tokenizer(meta))
    first_val = n_examples - max(1, round(n_examples * val_fraction))
    row = block_size + 1
    counts = {'train': 0, 'val': 0, 'truncated': 0, 'left_out': 0, 'answer_tokens': 0}
    paths = {name: os.path.join(out_dir, name) for name in ('train.bin', 'val.bin', 'train.mask.bin', 'val.mask.bin')}
    # the old train.bin goes first, then the tokenizer's files, meta.pkl, the masks, val.bin and train.bin are renamed
    # into place (the contexts close in reverse): a folder with a train.bin has the other files of its set
    with contextlib.ExitStack() as files_written:
        tmp = {name: files_written.enter_context(atomic_path(path)) for name, path in paths.items()}
        meta_tmp = files_written.enter_context(atomic_path(os.path.join(out_dir, 'meta.pkl')))
        for name in corpus.tokenizer_files(hf_folder or ''):
            shutil.copyfile(os.path.join(hf_folder, name),
                            files_written.enter_context(atomic_path(os.path.join(out_dir, name))))
        out = {name: files_written.enter_context(open(path, 'wb')) for name, path in tmp.items()}
        for index, (path, number, messages) in enumerate(read_conversations(files)):
            try:
                ids, mask = renderer.example(messages)
            except ValueError as e:
                raise ValueError(f'{path} line {number}: {e}') from None
            if len(ids) > row:
                if not truncate:
                    raise ValueError(f'{path} line {number} is {len(ids):,} tokens, longer than block_size + 1 = '
                                     f'{row:,}: shorten it, prepare with a larger --block_size, or let prepare.py '
                                     'cut it (--truncate=True)')
                ids, mask = ids[:row], mask[:row]
                counts['truncated'] += 1
            if not mask[1:].any():  # its answer begins after block_size: nothing to learn from
                counts['left_out'] += 1
                continue
            split = 'val' if index >= first_val else 'train'
            out[f'{split}.bin'].write(np.pad(ids, (0, row - len(ids)), constant_values=PAD_ID).astype(meta['dtype']))
            out[f'{split}.mask.bin'].write(np.pad(mask, (0, row - len(mask))).tobytes())
            counts[split] += 1
            counts['answer_tokens'] += int(mask[1:].sum())
        if not counts['train'] or not counts['val']:
            raise ValueError(f'{source} leaves {counts["train"]} train and {counts["val"]} val examples with an answer '
                             f'within block_size={block_size}: add conversations, change --val_fraction or raise '
                             '--block_size')
        meta.update(format='chat', block_size=block_size, train_tokens=counts['train'] * row,
                    val_tokens=counts['val'] * row, chat_template=renderer.template)
        with open(meta_tmp, 'wb') as f:
            pickle.dump(meta, f, protocol=4)
        with contextlib.suppress(FileNotFoundError):
            os.remove(paths['train.bin'])
    return dict(counts, tokenizer=meta['tokenizer'], vocab_size=meta['vocab_size'])


# ----------------------------------------------------------------------------------------------
# training on it


class ChatBatches(dataset.Batches):
    """Batches of whole examples: random rows (a pure function of the key, as for text), the targets outside the
    answers -1, which the loss leaves out; answer_tokens counts a step's answer targets from the masks alone."""

    def __init__(self, data_dir, meta, block_size, *args):
        if block_size != meta.get('block_size'):
            raise ValueError(f"{data_dir} holds chat examples in rows of block_size={meta.get('block_size')}, fixed "
                             f"when it was prepared: run with --block_size={meta.get('block_size')}, or prepare it "
                             f'again with prepare.py --format=chat --block_size={block_size}')
        super().__init__(data_dir, meta, block_size, *args)
        for split in ('train', 'val'):
            n = meta[f'{split}_tokens']
            if n % (block_size + 1) or not os.path.exists(self.mask_path(split)) or \
                    os.path.getsize(self.mask_path(split)) != n:
                raise ValueError(f'{self.mask_path(split)} is missing or does not match {split}.bin: the folder mixes '
                                 'two preparations; prepare the dataset again')
        self.n_rows = {split: meta[f'{split}_tokens'] // (block_size + 1) for split in ('train', 'val')}

    def mask_path(self, split):
        return os.path.join(self.data_dir, f'{split}.mask.bin')

    def rows(self, split, key):
        return np.random.default_rng([self.seed, *key]).integers(0, self.n_rows[split], size=self.batch_size)

    def read(self, split, name, dtype):  # a fresh memmap each time, as Batches.get's, as (rows, block_size + 1)
        return np.memmap(os.path.join(self.data_dir, name), dtype=dtype, mode='r').reshape(-1, self.block_size + 1)

    def get(self, split, key):
        rows = self.rows(split, key)
        ids = self.read(split, f'{split}.bin', self.dtype)[rows].astype(np.int64)
        answer = self.read(split, f'{split}.mask.bin', np.uint8)[rows, 1:]
        return self.to_device(split, np.stack([ids[:, :-1], np.where(answer == 1, ids[:, 1:], -1)]))

    def answer_tokens(self, iter_num, micro_steps):
        """The answer targets of step iter_num's micro-steps on all processes: the same number on each, without
        communicating, as the batches are pure functions of their keys."""
        mask = self.read('train', 'train.mask.bin', np.uint8)
        return sum(int(mask[self.rows('train', [1, iter_num, m]), 1:].sum()) for m in range(micro_steps))
