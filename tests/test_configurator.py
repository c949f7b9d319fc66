import pytest

from configurator import ConfigError, configure

DEFAULTS = dict(batch_size=12, learning_rate=6e-4, compile=True, device='cuda', init_from='scratch', d_ff=None, n_layer=12)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_files_then_overrides_in_order(tmp_path):
    a = write(tmp_path, 'a.py', 'batch_size = 32\nn_layer = 6\n')
    b = write(tmp_path, 'b.py', 'batch_size = 64\n')
    cfg = configure(DEFAULTS, [a, b, '--n_layer=4'])
    assert cfg['batch_size'] == 64 and cfg['n_layer'] == 4
    cfg = configure(DEFAULTS, ['--n_layer=4', a])
    assert cfg['n_layer'] == 6  # later wins
    assert DEFAULTS['batch_size'] == 12  # defaults untouched


def test_values_are_python_literals_or_strings():
    cfg = configure(DEFAULTS, ['--compile=False', '--learning_rate=3e-4', '--device=cpu', "--init_from='gpt2'"])
    assert cfg['compile'] is False and cfg['learning_rate'] == 3e-4
    assert cfg['device'] == 'cpu' and cfg['init_from'] == 'gpt2'


def test_numbers_convert_where_harmless():
    cfg = configure(DEFAULTS, ['--learning_rate=1', '--batch_size=1e2'])
    assert cfg['learning_rate'] == 1.0 and isinstance(cfg['learning_rate'], float)
    assert cfg['batch_size'] == 100 and isinstance(cfg['batch_size'], int)


@pytest.mark.parametrize('arg, words', [
    ('--batch_size=abc', ['batch_size expects int', "'abc'"]),
    ('--batch_size=1.5', ['batch_size expects int', '1.5']),
    ('--compile=1', ['compile expects bool']),
    ('--learning_rate=True', ['learning_rate expects float']),
    ('--d_ff=wide', ['d_ff expects int']),
])
def test_wrong_types_are_errors(arg, words):
    with pytest.raises(ConfigError) as e:
        configure(DEFAULTS, [arg], {'d_ff': int})
    for word in words:
        assert word in str(e.value)


def test_none_defaults_take_their_type_or_none():
    assert configure(DEFAULTS, ['--d_ff=256'], {'d_ff': int})['d_ff'] == 256
    assert configure(DEFAULTS, ['--d_ff=None'], {'d_ff': int})['d_ff'] is None


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'.*did you mean batch_size"):
        configure(DEFAULTS, ['--batchsize=3'])
    path = write(tmp_path, 'c.py', 'learning_rat = 1e-3\n')
    with pytest.raises(ConfigError, match=r"'learning_rat' in .*c\.py.*learning_rate"):
        configure(DEFAULTS, [path])


def test_missing_file_and_missing_value(tmp_path):
    write(tmp_path, 'train_char.py', '')
    with pytest.raises(ConfigError, match=r'not found \(did you mean .*train_char\.py'):
        configure(DEFAULTS, [str(tmp_path / 'train_chr.py')])
    with pytest.raises(ConfigError, match='--compile has no value'):
        configure(DEFAULTS, ['--compile'])


def test_config_file_sees_earlier_values_and_may_import(tmp_path):
    path = write(tmp_path, 'd.py', 'import math\nbatch_size = batch_size * 2\n_helper = 3\nn_layer = _helper + 1\n')
    cfg = configure(DEFAULTS, ['--batch_size=5', path])
    assert cfg['batch_size'] == 10 and cfg['n_layer'] == 4 and 'math' not in cfg and '_helper' not in cfg


def test_broken_config_file_is_one_clear_error(tmp_path):
    path = write(tmp_path, 'e.py', 'batch_size = = 3\n')
    with pytest.raises(ConfigError, match=r'e\.py line 1 failed: SyntaxError'):
        configure(DEFAULTS, [path])


def test_help_lists_keys(capsys):
    with pytest.raises(SystemExit) as e:
        configure(DEFAULTS, ['--help'])
    assert e.value.code == 0 and '--batch_size=12' in capsys.readouterr().out


def test_string_keys_keep_number_like_values():
    """A string key given digits is a string, not an error: a prompt, a folder named for a year."""
    config = configure({'start': '\n', 'out_dir': 'out', 'seed': 1}, ['--start=1984', '--out_dir=2024', '--seed=7'])
    assert config == {'start': '1984', 'out_dir': '2024', 'seed': 7}
