"""
HellaSwag (https://arxiv.org/abs/1905.07830), scored as llm.c and build-nanogpt score it, so that the numbers
compare with theirs and with GPT-2's: for each example, the context's tokens followed by those of " " + ending
for each of its 4 endings; the model's cross-entropy on the ending tokens only; acc picks the ending with the
lowest summed loss, acc_norm the one with the lowest mean loss per token.

    examples = hellaswag.load_examples()                     # the 10,042 validation examples, downloaded once
    hellaswag.evaluate(model, tokenizer, examples, machine)  # {'acc': ..., 'acc_norm': ..., 'n': 10042}

The data is hellaswag_val.jsonl from the authors' repository, cached in $HELLASWAG_CACHE (default
~/.cache/nanogpt/hellaswag). Under torchrun each process scores every world_size-th example and the counts
are summed.
"""

import json
import os
import sys

import requests
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from atomic import atomic_path
from checkpoint import master_first
from training import my_share

DATA_URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'


# ----------------------------------------------------------------------------------------------
# the data


def cache_dir():
    return os.environ.get('HELLASWAG_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'nanogpt', 'hellaswag')


def download(path):
    """Fetch the validation set into path, whole or not at all."""
    print(f'downloading {DATA_URL} to {path}', file=sys.stderr)  # stdout may be a JSON result
    try:
        with requests.get(DATA_URL, stream=True, timeout=60) as response:
            response.raise_for_status()
            with atomic_path(path) as tmp, open(tmp, 'wb') as f:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
    except requests.RequestException as e:
        status = getattr(e.response, 'status_code', None)
        reason = f'HTTP {status}' if status else f'{type(e).__name__}: no network?'
        raise OSError(f'could not download HellaSwag ({reason}): fetch {DATA_URL} on a machine with internet '
                      f'and pass its path with --data=PATH (or put it at {path})') from None


def load_examples(path=None, max_examples=None):
    """The examples of a HellaSwag jsonl file (dicts with ctx, endings and label, as the authors wrote them), the
    first max_examples of them if given. No path: the validation set in the cache, downloaded when missing."""
    if path is None:
        path = os.path.join(cache_dir(), 'hellaswag_val.jsonl')
        if not os.path.isfile(path):
            download(path)
    elif not os.path.isfile(path):
        raise FileNotFoundError(f'no HellaSwag file at {path}: give the path of hellaswag_val.jsonl '
                                f'(from {DATA_URL}), or leave --data out to download it')
    examples = []
    with open(path, encoding='utf-8') as f:
        for line_number, line in enumerate(f, 1):
            if max_examples is not None and len(examples) == max_examples:
                break
            if line.strip():
                examples.append(parse(line, f'{path} line {line_number}'))
    if not examples:
        raise ValueError(f'{path} holds no examples: it should be hellaswag_val.jsonl, one JSON object a line')
    return examples


def parse(line, where):
    """One example, checked: a file that is not HellaSwag's fails here, with its line, not deep in the scoring."""
    try:
        example = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f'{where} is not JSON ({e}): the file is damaged or not HellaSwag\'s jsonl') from None
    ok = (isinstance(example, dict) and isinstance(example.get('ctx'), str) and example['ctx']
          and isinstance(example.get('endings'), list) and len(example['endings']) == 4
          and all(isinstance(e, str) for e in example['endings'])
          and example.get('label') in (0, 1, 2, 3) and not isinstance(example['label'], bool))
    if not ok:
        raise ValueError(f'{where} is not a HellaSwag example: it needs ctx (a non-empty string), endings '
                         '(4 strings) and label (0..3); the test set has no labels, use hellaswag_val.jsonl')
    return example


# ----------------------------------------------------------------------------------------------
# the scoring


def check_tokenizer(tokenizer):
    """HellaSwag is scored in a model's own subword tokens, GPT-2's BPE or a Hugging Face model's tokenizer.json
    (whose figures compare with that family's); characters or another tiktoken encoding compare with nothing."""
    if tokenizer.name not in ('gpt2', 'tokenizer.json'):
        raise ValueError(f"HellaSwag needs a model with GPT-2's BPE tokenizer or a Hugging Face model's, and this "
                         f'one\'s is {tokenizer.name!r}: evaluate a model trained on GPT-2 tokens (openwebtext, '
                         'fineweb_edu, gpt2*) or a Hugging Face model (or one finetuned from it)')


def checked_examples(tokenizer, path, machine, max_examples=None):
    """The examples, once the tokenizer is known to fit (before any download); rank 0 fetches them first."""
    check_tokenizer(tokenizer)
    with master_first(machine):
        return load_examples(path or None, max_examples)


def scorer(data_dir, path, machine):
    """HellaSwag's score of a model trained on data_dir, as a function, for train.py's evaluations during training."""
    from tokenizer import for_data
    tokenizer = for_data(data_dir)
    examples = checked_examples(tokenizer, path, machine)
    return lambda model: evaluate(model, tokenizer, examples, machine)


def render(example, tokenizer, block_size):
    """(tokens, mask), both (4, T) with T <= block_size + 1: each row the context followed by one ending, padded
    with 0s on the right; the mask is 1 on the ending's tokens. The last token of a row is never the model's
    input, so a row may hold block_size + 1 tokens. A longer context keeps its end, cropped the same for the four
    rows so that the endings are compared after the same context."""
    context = tokenizer.encode(example['ctx'])
    # an ending longer than the window (never with GPT-2's 1024) is scored on its first block_size tokens
    endings = [tokenizer.encode(' ' + ending, bos=False)[:block_size] for ending in example['endings']]
    context = context[-(block_size + 1 - max(map(len, endings))):]
    rows = [context + ending for ending in endings]
    tokens = torch.zeros((4, max(map(len, rows))), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, len(context):len(row)] = 1
    return tokens, mask


def ending_losses(model, tokens, mask):
    """The model's summed and mean cross-entropy over each row's masked (ending) tokens, two tensors of (4,)."""
    targets = tokens[:, 1:].masked_fill(mask[:, 1:] == 0, -1)  # -1: not scored
    logits, _ = model(tokens[:, :-1], targets=targets)  # with targets, the logits of every position come back
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction='none')
    summed = losses.view(targets.shape).sum(dim=1)  # (4,)
    return summed, summed / mask[:, 1:].sum(dim=1)


@torch.no_grad()
def score(model, tokenizer, examples, machine, rank=0, world_size=1, progress=False):
    """(n, n_correct, n_correct_norm) over this process's share of the examples, those k with
    k % world_size == rank, each one forward pass of a batch of its 4 endings on the machine's device and autocast.
    `model` is the plain GPT (not a DDP wrapper); its train/eval mode is restored afterwards."""
    check_tokenizer(tokenizer)
    was_training = model.training
    model.eval()
    n = n_correct = n_correct_norm = 0
    share = my_share(len(examples), rank, world_size, model)
    for k in tqdm(share, desc='hellaswag', disable=not progress, unit='example'):
        example = examples[min(k, len(examples) - 1)]
        tokens, mask = render(example, tokenizer, model.config.block_size)
        with machine.autocast():
            summed, mean = ending_losses(model, tokens.to(machine.device), mask.to(machine.device))
        if k >= len(examples):
            continue
        n += 1
        n_correct += int(summed.argmin().item() == example['label'])
        n_correct_norm += int(mean.argmin().item() == example['label'])
    model.train(was_training)
    return n, n_correct, n_correct_norm


def evaluate(model, tokenizer, examples, machine, progress=False):
    """{'acc', 'acc_norm', 'n'} over all the examples, shared between torchrun's processes (every process must
    call it: the counts are summed across them); a progress bar on the master process if progress."""
    counts = score(model, tokenizer, examples, machine, machine.rank, machine.world_size,
                   progress=progress and machine.master)
    if machine.world_size > 1:
        counts = torch.tensor(counts, dtype=torch.long, device=machine.device)
        dist.all_reduce(counts)
        counts = counts.tolist()
    n, n_correct, n_correct_norm = counts
    return {'acc': n_correct / n, 'acc_norm': n_correct_norm / n, 'n': n}
