"""
Issue 20's promises about files from elsewhere, proved with planted files through every script that reads them
(fresh processes, as a user runs them): no file runs code (a pickle that would call os.system leaves no marker
file behind, and the file is refused in one line), nothing named inside a folder is read from outside it, a
checkpoint's tokenizer is checked against the data's, and exported weights follow the umask.
"""

import json
import os
import pickle
import shutil

import pytest
import torch

import dataset
import sharded_checkpoint
from helpers import RUN, Exploit, assert_one_line_error, copy_folder, readers_of_hf, readers_of_run, run, run_all
from tokenizer import Tokenizer


def short_string(text):
    return b'\x8c' + bytes([len(text)]) + text.encode()  # SHORT_BINUNICODE


def calling(module, name, arg):
    """Pickle opcodes that call module.name(arg) and drop the result: put before a real pickle, the file still
    loads as that pickle. A dotted name reaches what `module` imports (pickle protocol 4)."""
    return b'\x80\x04' + short_string(module) + short_string(name) + b'\x93' + short_string(arg) + b'\x85R0'


def check_refused(commands, words, marker, may_pass=()):
    """Each command ends in one line naming words (scripts in may_pass, which never open the planted file,
    may succeed instead), and none ran the payload."""
    for command, result in zip(commands, run_all(*commands)):
        if command[0] in may_pass and result.returncode == 0:
            continue
        assert_one_line_error(result, *words)
    assert not os.path.exists(marker), 'the planted payload ran'


# ----------------------------------------------------------------------------------------------
# no file runs code


def test_planted_dcp_index_runs_nothing_in_any_script(model_files, char_data, tmp_path):
    """The hole of issue 20: a .metadata prefixed with a call of os.system through the name 'os.system' of the
    module torch.distributed.checkpoint.metadata (which imports os). Every reader refuses it; none runs it."""
    marker = tmp_path / 'PWNED'
    run_dir = copy_folder(model_files['dcp'], tmp_path / 'run')
    index = os.path.join(run_dir, 'ckpt.dcp', 'iter_0000004', '.metadata')
    with open(index, 'rb') as f:
        real = f.read()
    with open(index, 'wb') as f:
        f.write(calling('torch.distributed.checkpoint.metadata', 'os.system', f'touch {marker}') + real)
    check_refused(readers_of_run(run_dir, char_data, tmp_path),
                  [f'{index} is not the index of a checkpoint', 'os.system is not part of a checkpoint index'],
                  marker)


def test_a_planted_index_of_another_class_runs_nothing(model_files, char_data, tmp_path):
    """ckpt.dcp's index (.metadata) is a pickle, which torch.distributed.checkpoint reads with plain pickle.load:
    one that is wholly a call of another class is refused with a one-line error, and its code never runs."""
    marker = tmp_path / 'PWNED'
    run_dir = copy_folder(model_files['dcp'], tmp_path / 'run')
    with open(os.path.join(run_dir, 'ckpt.dcp', 'iter_0000004', '.metadata'), 'wb') as f:
        pickle.dump(Exploit(os.system, f'touch {marker}'), f)
    check_refused(readers_of_run(run_dir, char_data, tmp_path)[:1], ['not the index of a checkpoint'], marker)


def test_planted_pickles_run_nothing_in_any_script(model_files, char_data, tmp_path):
    """ckpt.pt, a sharded checkpoint's train_state.pt and a Hugging Face pytorch_model.bin, each a pickle that
    would call os.system: refused by torch's weights_only loader, in every script that reads them."""
    marker = tmp_path / 'PWNED'
    payload = Exploit(os.system, f'touch {marker}')
    pt_run = copy_folder(model_files['pt'], tmp_path / 'pt')
    ckpt = torch.load(os.path.join(pt_run, 'ckpt.pt'), weights_only=True)
    torch.save(dict(ckpt, note=payload), os.path.join(pt_run, 'ckpt.pt'))
    dcp_run = copy_folder(model_files['dcp'], tmp_path / 'dcp')
    train_state = os.path.join(dcp_run, 'ckpt.dcp', 'iter_0000004', 'train_state.pt')
    torch.save(dict(torch.load(train_state, weights_only=True), note=payload), train_state)
    hf_dir = copy_folder(model_files['hf'], tmp_path / 'hf')
    from safetensors.torch import load_file
    weights = load_file(os.path.join(hf_dir, 'model.safetensors'))
    os.remove(os.path.join(hf_dir, 'model.safetensors'))
    torch.save(dict(weights, note=payload), os.path.join(hf_dir, 'pytorch_model.bin'))
    # every script reads them through the same two functions (checkpoint.load, hf.gpt2_state_dict), which the planted
    # index test above runs through every script: here each file kind goes through two or three of them
    check_refused(readers_of_run(pt_run, char_data, tmp_path)[::2], [f'{pt_run}/ckpt.pt is unreadable or corrupt'],
                  marker)
    check_refused(readers_of_run(dcp_run, char_data, tmp_path)[::5],
                  [f'{os.path.dirname(train_state)} is unreadable or corrupt'], marker)
    check_refused(readers_of_hf(hf_dir, char_data, tmp_path)[::4], [f'{hf_dir}/pytorch_model.bin is unreadable'],
                  marker)


def test_meta_pkl_runs_nothing_in_evaluate(model_files, char_data, tmp_path):
    """meta.pkl's other readers (sample, train, sizing, bench) are in test_user_paths; evaluate.py reads it too."""
    marker = tmp_path / 'PWNED'
    data = copy_folder(char_data, tmp_path / 'data')
    with open(os.path.join(data, 'meta.pkl'), 'wb') as f:
        pickle.dump(Exploit(os.system, f'touch {marker}'), f)
    check_refused([('evaluate.py', f"--out_dir={model_files['pt']}", f'--data_dir={data}', '--device=cpu')],
                  [f'{data}/meta.pkl is unreadable', 'only plain values are allowed'], marker)


def test_index_unpickler_takes_exact_names_only():
    """In-process, each way around the allowed list: a dotted name under an allowed module or class, a name of
    the metadata module that is not one of its classes, a torch attribute that is not a dtype."""
    import io
    for module, name in [('torch.distributed.checkpoint.metadata', 'os.system'),
                         ('torch.distributed.checkpoint.metadata', 'Metadata.__init__.__globals__'),
                         ('torch.distributed.checkpoint.metadata', 'dataclass'),
                         ('torch', 'load'), ('torch', 'float32.__class__'), ('collections', 'OrderedDict.fromkeys')]:
        with pytest.raises(pickle.UnpicklingError, match='is not part of a checkpoint index'):
            sharded_checkpoint.IndexUnpickler(io.BytesIO(calling(module, name, 'x') + pickle.dumps(None))).load()


# ----------------------------------------------------------------------------------------------
# nothing named inside a folder is read from outside it


def test_dcp_shard_paths_stay_inside_the_checkpoint(model_files, char_data, tmp_path):
    """An index whose relative_path leaves the folder ('../..', absolute, or a link out of it), and a `latest`
    that is a link to another run's iteration, are refused by sample.py and train.py before anything is read."""
    outside = copy_folder(model_files['dcp'], tmp_path / 'other')
    cases = []
    for kind in ('dotdot', 'absolute', 'link'):
        run_dir = copy_folder(model_files['dcp'], tmp_path / kind)
        folder = os.path.join(run_dir, 'ckpt.dcp', 'iter_0000004')
        target = os.path.join(outside, 'ckpt.dcp', 'iter_0000004', '__0_0.distcp')
        if kind == 'link':
            os.symlink(target, os.path.join(folder, 'evil.distcp'))
        name = {'dotdot': os.path.relpath(target, folder), 'absolute': target, 'link': 'evil.distcp'}[kind]
        with open(os.path.join(folder, '.metadata'), 'rb') as f:
            metadata = sharded_checkpoint.IndexUnpickler(f).load()
        for key, info in metadata.storage_data.items():
            metadata.storage_data[key] = type(info)(**dict(info.__dict__, relative_path=name))
        with open(os.path.join(folder, '.metadata'), 'wb') as f:
            pickle.dump(metadata, f)
        cases.append((run_dir, name))
    linked = copy_folder(model_files['dcp'], tmp_path / 'linked')
    shutil.rmtree(os.path.join(linked, 'ckpt.dcp', 'iter_0000004'))
    os.symlink(os.path.join(outside, 'ckpt.dcp', 'iter_0000004'), os.path.join(linked, 'ckpt.dcp', 'iter_0000004'))
    cases.append((linked, 'iter_0000004'))
    commands = [readers_of_run(run_dir, char_data, tmp_path)[0] for run_dir, _ in cases]
    commands.append(readers_of_run(cases[0][0], char_data, tmp_path)[5])  # train.py --init_from=resume
    for (run_dir, name), result in zip(cases + cases[:1], run_all(*commands)):
        assert_one_line_error(result, f'names {name!r}, which is outside', 'restore it from a copy you trust')


def test_hf_weight_map_stays_inside_the_folder(model_files, char_data, tmp_path):
    """model.safetensors.index.json naming '../other/model.safetensors', an absolute path, or a link out of the
    folder is refused by every reader of Hugging Face folders; the Hugging Face cache's own links are not."""
    other = copy_folder(model_files['hf'], tmp_path / 'other')
    cases = []
    for kind in ('dotdot', 'absolute', 'link'):
        hf_dir = copy_folder(model_files['hf'], tmp_path / kind)
        os.remove(os.path.join(hf_dir, 'model.safetensors'))
        target = os.path.join(other, 'model.safetensors')
        if kind == 'link':
            os.symlink(target, os.path.join(hf_dir, 'model-00001.safetensors'))
        name = {'dotdot': '../other/model.safetensors', 'absolute': target, 'link': 'model-00001.safetensors'}[kind]
        with open(os.path.join(hf_dir, 'model.safetensors.index.json'), 'w') as f:
            json.dump({'weight_map': {'transformer.wte.weight': name}}, f)
        cases.append((hf_dir, name))
    commands = [readers_of_hf(hf_dir, char_data, tmp_path)[0] for hf_dir, _ in cases]
    commands.append(readers_of_hf(cases[0][0], char_data, tmp_path)[4])  # train.py --init_from=FOLDER
    for (hf_dir, name), result in zip(cases + cases[:1], run_all(*commands)):
        assert_one_line_error(result, f'{hf_dir} names {name!r}, which is outside')
    # a snapshot of the Hugging Face cache: its files are links into the repository's blobs/
    repo = tmp_path / 'hub' / 'models--me--tiny'
    snapshot = repo / 'snapshots' / 'abc123'
    os.makedirs(snapshot)
    os.makedirs(repo / 'blobs')
    for name in ('config.json', 'model.safetensors'):
        shutil.copy(os.path.join(model_files['hf'], name), repo / 'blobs' / name)
        os.symlink(os.path.join('..', '..', 'blobs', name), snapshot / name.replace('model.', 'model-00001.'))
    with open(snapshot / 'model.safetensors.index.json', 'w') as f:
        json.dump({'weight_map': {'transformer.wte.weight': 'model-00001.safetensors'}}, f)
    result = run(*readers_of_hf(snapshot, char_data, tmp_path)[0])
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------
# a checkpoint's ids mean what they meant


def test_reprepared_data_is_refused_by_every_reader(model_files, char_data, tmp_path):
    """The data prepared again from a corpus with one character swapped for another (same vocabulary size):
    sample.py (the checkpoint's data_dir, or --data_dir), evaluate.py and train.py --init_from=resume refuse it in
    one line; a checkpoint without a fingerprint (older, nanoGPT's) still samples."""
    remapped = copy_folder(char_data, tmp_path / 'remapped')
    with open(os.path.join(remapped, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    swapped = {i: ('#' if c == 'y' else c) for i, c in meta['itos'].items()}  # same size, ids now mean other chars
    meta.update(itos=swapped, stoi={c: i for i, c in swapped.items()})
    with open(os.path.join(remapped, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    assert dataset.fingerprint(meta) != dataset.fingerprint(dataset.load_meta(char_data))
    run_dir = copy_folder(model_files['pt'], tmp_path / 'run')
    ckpt = torch.load(os.path.join(run_dir, 'ckpt.pt'), weights_only=True)
    torch.save(dict(ckpt, config=dict(ckpt['config'], data_dir=remapped)), os.path.join(run_dir, 'ckpt.pt'))
    old_run = copy_folder(model_files['pt'], tmp_path / 'old')
    ckpt['config'].pop('tokenizer')
    torch.save(ckpt, os.path.join(old_run, 'ckpt.pt'))
    commands = [
        ('sample.py', f'--out_dir={run_dir}', '--device=cpu', '--max_new_tokens=4'),
        ('sample.py', f"--out_dir={model_files['pt']}", f'--data_dir={remapped}', '--device=cpu'),
        ('evaluate.py', f'--out_dir={run_dir}', '--device=cpu'),
        ('train.py', f'--out_dir={run_dir}', '--init_from=resume', f'--data_dir={remapped}', *RUN, '--max_iters=8'),
        ('sample.py', f'--out_dir={old_run}', f'--data_dir={remapped}', '--device=cpu', '--max_new_tokens=4'),
    ]
    results = run_all(*commands)
    for result in results[:4]:
        assert_one_line_error(result, f'{remapped}/meta.pkl describes another vocabulary than', 'ckpt.pt',
                              'prepared again')
    assert_one_line_error(results[3], '--overwrite=True')
    assert results[4].returncode == 0, results[4].stderr


def test_fingerprint_names_the_vocabulary():
    meta = {'tokenizer': 'char', 'itos': {0: 'a', 1: 'b'}, 'stoi': {'a': 0, 'b': 1}, 'vocab_size': 2}
    assert dataset.fingerprint(meta) == Tokenizer(meta).fingerprint
    assert dataset.fingerprint(meta) != dataset.fingerprint(dict(meta, itos={0: 'b', 1: 'a'}))
    assert dataset.fingerprint(None) == dataset.fingerprint({'tokenizer': 'gpt2'}) != dataset.fingerprint(
        {'tokenizer': 'cl100k_base'})
    assert len(dataset.fingerprint(None)) == 16


# ----------------------------------------------------------------------------------------------
# exported files are readable by others


def test_export_follows_the_umask(model_files, tmp_path):
    """safetensors writes 0600 whatever the umask; under umask 022 both exported files are 0644."""
    out = tmp_path / 'hf'
    result = run('export.py', f"--out_dir={model_files['pt']}", f'--to={out}', preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    for name in ('config.json', 'model.safetensors'):
        assert oct(os.stat(out / name).st_mode & 0o777) == oct(0o644), name
