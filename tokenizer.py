"""
Text <-> token ids: the tokenizer of a prepared dataset (its meta.pkl: characters or a tiktoken encoding; no
meta.pkl means GPT-2's BPE), and the one a model was trained with.

    tokenizer = tokenizers.for_model(model, source)       # sample.py, evaluate.py (import tokenizer as tokenizers)
    ids = tokenizer.encode('Hello')
    text = tokenizer.decode(ids)
"""

import dataset


class Tokenizer:
    """encode(str) -> list[int] and decode(list[int]) -> str for a dataset's meta (None means GPT-2 BPE).
    vocab_size is the number of ids it can decode: a model's vocabulary may be larger (GPT-2's padded 50304)."""

    def __init__(self, meta=None):
        self.fingerprint = dataset.fingerprint(meta)
        meta = meta or {'tokenizer': 'gpt2'}
        self.name = meta['tokenizer']
        if self.name == 'char':
            self.stoi, self.itos = meta['stoi'], meta['itos']
            self.vocab_size = len(self.stoi)
        else:
            import tiktoken
            try:
                self.enc = tiktoken.get_encoding(self.name)
            except ValueError:
                raise ValueError(f'unknown tokenizer {self.name!r} in meta.pkl: it is not a tiktoken encoding') from None
            self.vocab_size = self.enc.n_vocab

    def encode(self, text):
        if self.name == 'char':
            unknown = sorted(set(c for c in text if c not in self.stoi))
            if unknown:
                raise ValueError(f'the text has characters missing from the vocabulary: {"".join(unknown)!r} '
                                 f'({len(unknown)} of them); the model knows only {"".join(sorted(self.stoi))!r}')
            return [self.stoi[c] for c in text]
        return self.enc.encode(text, allowed_special={'<|endoftext|>'})

    def decode(self, ids):
        if self.name == 'char':
            return ''.join(self.itos[i] for i in ids)
        return self.enc.decode(ids)


def for_model(model, source, data_dir=''):
    """The tokenizer of data_dir, else of the data the source (checkpoint.load_model's) was trained on, else
    GPT-2's BPE; checked against the fingerprint the checkpoint recorded and the model's vocab_size."""
    trained = (source.ckpt or {}).get('config') or {}
    if not data_dir and (trained.get('data_dir') or trained.get('dataset')):
        data_dir = dataset.folder(trained.get('dataset'), trained.get('data_dir'))
    meta = dataset.load_meta(data_dir) if data_dir else None
    dataset.check_fingerprint(trained.get('tokenizer'), meta, data_dir, source.path,
                              'pass the --data_dir of the data it was trained on')
    tokenizer = Tokenizer(meta)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f'the tokenizer ({tokenizer.name}, {tokenizer.vocab_size} tokens) does not fit the model '
                         f'(vocab_size={model.config.vocab_size}): pass the --data_dir of the data it was trained on')
    return tokenizer
