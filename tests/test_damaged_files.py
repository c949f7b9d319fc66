"""
Damaged or foreign files are one line, never a traceback (issue 20): a checkpoint stripped of its optimizer state
(finetuned from with a fresh optimizer), with config=None, RNG states of another size or iter_num='10'; a
metrics.jsonl with a note added by hand, a string iter or the NaN an older version wrote (skipped with a count,
resume goes on); a Hugging Face config.json holding a list, an index without weight_map, a Llama folder; and
loss.png is not redrawn empty when metrics.jsonl is moved away during a run.
"""

import json
import os

import pytest
import torch

from helpers import (RUN, TINY, assert_one_line_error, copy_checkpoint, copy_folder, read_metrics, readers_of_hf, run,
                     run_all)


@pytest.fixture(scope='module')
def trained(char_data, tmp_path_factory):
    """A finished TINY run of char_data (read only: a test copies it to change it)."""
    out = tmp_path_factory.mktemp('trained')
    result = run('train.py', f'--data_dir={char_data}', f'--out_dir={out}', *TINY)
    assert result.returncode == 0, result.stderr
    return out


def test_damaged_checkpoints(char_data, trained, tmp_path):
    shared = copy_checkpoint(trained, tmp_path / 'shared', lambda c: c.pop('optimizer'))
    no_config = copy_checkpoint(trained, tmp_path / 'no_config', lambda c: c.update(config=None))
    rng = copy_checkpoint(trained, tmp_path / 'rng',
                          lambda c: c['rng'][0].update(torch=torch.zeros(7, dtype=torch.uint8)))
    iter_str = copy_checkpoint(trained, tmp_path / 'iter_str', lambda c: c.update(iter_num='10'))
    resume = ['train.py', '--init_from=resume', f'--data_dir={char_data}', *RUN, '--max_iters=8']
    results = run_all(*[(*resume, f'--out_dir={d}') for d in (shared, no_config, rng, iter_str)],
                      ('sample.py', f'--out_dir={no_config}', f'--data_dir={char_data}', '--device=cpu',
                       '--max_new_tokens=4'))
    for result in results[:3] + results[4:]:
        assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
    assert "checkpoint has no optimizer state (a shared copy?): the optimizer starts fresh" in results[0].stdout
    assert 'dropout draws new random numbers' in results[2].stdout
    assert_one_line_error(results[3], f'{iter_str}/ckpt.pt is damaged or foreign', "iter_num='10'")


def test_foreign_metrics_lines_are_skipped(char_data, trained, tmp_path):
    """A note, a string iter and NaN (written by an older version) in metrics.jsonl: resume and plot.py go on,
    skipping the foreign lines with a count; the NaN reads as null and is written back as strict JSON."""
    out = tmp_path / 'out'
    copy_folder(trained, out)
    with open(out / 'metrics.jsonl', 'a') as f:
        f.write('my note: lr looked too high\n{"iter": "2", "loss": 1.0}\n{"iter": 3, "loss": NaN}\n')
    plotted = copy_folder(out, tmp_path / 'plotted')  # resume rewrites metrics.jsonl: plot.py reads its own copy
    plot, resume = run_all(('plot.py', str(plotted), f'--out={tmp_path}/runs.png'),
                           ('train.py', f'--data_dir={char_data}', f'--out_dir={out}', '--init_from=resume', *RUN,
                            '--max_iters=8'))
    for result, folder in ((plot, plotted), (resume, out)):
        assert result.returncode == 0, result.stderr
        assert f'note: {folder}/metrics.jsonl: skipped 2 lines that are not records of train.py' in result.stderr
    read_metrics(out)  # strict JSON: no NaN left
    assert 'my note' not in (out / 'metrics.jsonl').read_text()


def test_damaged_hf_folders(model_files, char_data, tmp_path):
    hf = model_files['hf']
    as_list = copy_folder(hf, tmp_path / 'as_list')
    (tmp_path / 'as_list' / 'config.json').write_text('[1, 2]')
    no_map = copy_folder(hf, tmp_path / 'no_map')
    (tmp_path / 'no_map' / 'model.safetensors.index.json').write_text('{"metadata": {}}')
    mistral = copy_folder(hf, tmp_path / 'mistral')
    (tmp_path / 'mistral' / 'config.json').write_text(json.dumps({'model_type': 'mistral', 'hidden_size': 16}))
    cases = [
        (as_list, ['config.json holds a list', 'save the folder again'], (0, 2)),
        (no_map, ['model.safetensors.index.json has no weight_map', 'save the folder again'], (0,)),
        (mistral, ["describes a 'mistral' model", 'it reads GPT2LMHeadModel, LlamaForCausalLM'], (0, 4)),
    ]
    commands = [(readers_of_hf(d, char_data, tmp_path)[i], words) for d, words, which in cases
                for i in which]
    for (_, words), result in zip(commands, run_all(*[c for c, _ in commands])):
        assert_one_line_error(result, *words)


def test_loss_png_survives_moving_metrics(tmp_path):
    """metrics.jsonl moved away during a run: loss.png keeps the last picture, with a warning, not an empty one."""
    from runlog import Log
    import machine
    out = tmp_path / 'out'
    m = machine.setup('cpu', 'float32', False)
    cfg = dict(out_dir=str(out), init_from='scratch', eval_only=False, wandb_log=False, peak_flops=1.0,
               gradient_accumulation_steps=1, batch_size=1, block_size=8)
    log = Log(cfg, m, 0)
    for i in range(1, 4):
        log.step(i, 2.0 / i, 1e-3, 0.01, None, 0)
    log.eval(3, {'train': 1.0, 'val': 1.1})
    log.draw()
    before = (out / 'loss.png').read_bytes()
    os.rename(out / 'metrics.jsonl', tmp_path / 'moved.jsonl')
    log.step(4, 0.5, 1e-3, 0.01, None, 0)
    log.close()
    assert (out / 'loss.png').read_bytes() == before
