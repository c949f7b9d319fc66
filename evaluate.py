"""
Evaluate a model on a benchmark: HellaSwag's 10,042 validation examples, scored as llm.c and build-nanogpt
score them (see hellaswag.py), so that the figures compare with GPT-2's published ones; or bits per byte on a
prepared dataset's val.bin (--task=bpb), which compares models whose tokenizers differ.

    python evaluate.py --init_from=gpt2 --task=hellaswag          # GPT-2 124M: acc_norm 0.2955
    python evaluate.py --out_dir=out --max_examples=500           # your run's ckpt.pt, on a slice
    python evaluate.py --init_from=path/to/hf_folder --data=hellaswag_val.jsonl --json=True
    torchrun --standalone --nproc_per_node=8 evaluate.py --init_from=gpt2-xl   # split across GPUs
    python evaluate.py --task=bpb --out_dir=out-shakespeare-bpe-cpu              # the data it was trained on
    python evaluate.py --task=bpb --init_from=gpt2 --data_dir=data/shakespeare   # any data of the model's tokenizer

--task=bpb draws --eval_iters batches of --batch_size windows of the model's block_size (or --block_size) from
val.bin as train.py's evaluation draws them (the same --seed gives the same batches, so the same figures as the
run logged) and reports the mean loss per token and the bits per byte: the nats of every target token over
ln 2 times their UTF-8 bytes (tokenizer.byte_lengths).
"""

import json
import sys
import time

import checkpoint
import dataset
import hellaswag
import machine as machines
import tokenizer as tokenizers
from configurator import cli, configure
from training import DEFAULTS as TRAINING, estimate_loss

DEFAULTS = dict(
    init_from='resume',  # 'resume' (out_dir/ckpt.pt), 'gpt2*', or a Hugging Face folder or hub id (GPT-2, Llama, Qwen)
    out_dir='out',
    data_dir='',  # the tokenizer's dataset (meta.pkl); '' means the checkpoint's data, or a folder's tokenizer.json
    task='hellaswag',  # or bpb
    data='',  # a local hellaswag_val.jsonl; '' downloads it once into $HELLASWAG_CACHE or ~/.cache/nanogpt/hellaswag
    max_examples=None,  # score only the first N examples; None for all
    device='auto',
    dtype='auto',
    json=False,  # print one JSON object on stdout instead of the sentence
    # bpb: the batches of val.bin, as train.py draws its evaluation's
    eval_iters=100,
    batch_size=8,
    block_size=None,  # None: the model's
    seed=TRAINING['seed'],
)
TYPES_OF_NONE = {'max_examples': int, 'block_size': int}
TASKS = ('hellaswag', 'bpb')


def check_options(cfg):
    if cfg['task'] not in TASKS:
        raise ValueError(f"task={cfg['task']!r} is not one of the tasks: {', '.join(TASKS)}")
    if cfg['max_examples'] is not None and cfg['max_examples'] < 1:
        raise ValueError(f"max_examples={cfg['max_examples']} must be at least 1 (or None for every example)")
    for key in ('eval_iters', 'batch_size', 'block_size'):
        if cfg[key] is not None and cfg[key] < 1:
            raise ValueError(f'{key}={cfg[key]} must be at least 1')


def main(argv=None):
    cfg = configure(DEFAULTS, sys.argv[1:] if argv is None else argv, TYPES_OF_NONE)
    check_options(cfg)
    # compile=False: examples of varying lengths would recompile at every one
    machine = machines.setup(cfg['device'], cfg['dtype'], compile=False)
    try:
        result = run(cfg, machine)
    except BaseException:
        machines.teardown(finished=False)
        raise
    machines.teardown()
    return result


def run(cfg, machine):
    with checkpoint.master_first(machine):  # rank 0 downloads pretrained weights, the others read the cache
        model, source = checkpoint.load_model(cfg['init_from'], cfg['out_dir'])
    if cfg['task'] == 'bpb':
        return bits_per_byte(cfg, model, source, machine)
    tokenizer = tokenizers.for_model(model, source, cfg['data_dir'])
    examples = hellaswag.checked_examples(tokenizer, cfg['data'], machine, cfg['max_examples'])
    model.to(machine.device)
    t0 = time.time()
    result = hellaswag.evaluate(model, tokenizer, examples, machine, progress=True)
    if machine.master:
        if cfg['json']:
            print(json.dumps(dict(result, task=cfg['task'], init_from=cfg['init_from'], device=machine.device,
                                  dtype=machine.dtype)))
        else:
            print(f"{cfg['task']}: acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} over {result['n']} "
                  f"examples ({cfg['init_from']}, {machine.device}, {machine.dtype}, {time.time() - t0:.0f}s)")
    return result


def bits_per_byte(cfg, model, source, machine):
    trained = (source.ckpt or {}).get('config') or {}
    data_dir = cfg['data_dir'] or (trained and dataset.folder(trained.get('dataset'), trained.get('data_dir')))
    if not data_dir:
        raise ValueError(f"--task=bpb needs the --data_dir of a prepared dataset for {cfg['init_from']}")
    tokenizer = tokenizers.for_model(model, source, data_dir)  # a checkpoint's recorded tokenizer is checked here
    if source.ckpt is None and tokenizers.of_pretrained(source.path).fingerprint != tokenizer.fingerprint:
        raise ValueError(f"{data_dir} was prepared with another tokenizer ({tokenizer.name}) than "
                         f"{cfg['init_from']}'s: prepare it with the model's (prepare.py --tokenizer=...)")
    block_size = cfg['block_size'] or model.config.block_size
    batches = dataset.batches(data_dir, dataset.load_meta(data_dir), block_size, cfg['batch_size'], machine.device,
                              cfg['seed'], model.config.vocab_size)
    model.to(machine.device)
    losses = estimate_loss(model, batches, machine, cfg['eval_iters'], splits=('val',))
    if 'val_bpb' not in losses:
        raise ValueError(f'the tokenizer of {data_dir} cannot be read, so its tokens have no byte counts')
    result = {'val_loss': losses['val'], 'val_bpb': losses['val_bpb'],
              'tokens': cfg['eval_iters'] * cfg['batch_size'] * block_size}
    if machine.master:
        if cfg['json']:
            print(json.dumps(dict(result, task='bpb', init_from=cfg['init_from'], data_dir=data_dir,
                                  device=machine.device, dtype=machine.dtype)))
        else:
            print(f"bpb: {result['val_bpb']:.4f} bits per byte, loss {result['val_loss']:.4f} per token over "
                  f"{result['tokens']:,} tokens of {data_dir}/val.bin ({cfg['init_from']}, {machine.device}, "
                  f'{machine.dtype})')
    return result


if __name__ == '__main__':
    cli(main)
