"""Atomic writes (`with atomic_path(path) as tmp: torch.save(obj, tmp)`: the file exists whole or not at all),
inside() for the names read from files, and run_lock(): one training run per folder."""

import contextlib
import fcntl
import glob
import os
import socket
import sys
import tempfile

from configurator import one_line


@contextlib.contextmanager
def atomic_path(path):
    """Yield a hidden temporary path beside `path`: renamed over it, flushed to disk, if the block raises nothing."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    prefix = f".{os.path.basename(path)}.{socket.gethostname().replace('.', '_')}-"
    for stale in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + '*.tmp')):
        # .ckpt.pt.HOST-PID.XXXX.tmp left by a process of this machine killed with `kill -9`? (train.bin's: 17 GB)
        pid = os.path.basename(stale)[len(prefix):].split('.')[0]
        try:
            os.kill(int(pid), 0)  # signal 0: only whether the process runs
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        except (ValueError, PermissionError):  # not a pid; a process of another user
            pass
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'{prefix}{os.getpid()}.', suffix='.tmp')
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # not mkstemp's 0600 (which safetensors recreates it with)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        os.fsync(dir_fd)  # the rename itself survives a crash
        os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)  # still there after an error or an interrupt


def save_failed(path, e):
    """The one-line error of a failed checkpoint save: e is an OSError, or torch's RuntimeError for a full disk."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else f'is the disk full? {one_line(e, 120)}'
    return OSError(f'could not save {path} ({reason}): the previous checkpoint, if any, is unchanged; free '
                   'some disk space (or choose another --out_dir) and resume with --init_from=resume')


def inside(folder, name, root=None):
    """folder/name, or a ValueError where a name read from a file ('../x', '/etc/passwd', a link) leads out of root."""
    root = root or folder
    path = os.path.join(folder, name)
    real_root = os.path.realpath(root)
    if os.path.isabs(name) or os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise ValueError(f'{folder} names {name!r}, which is outside {root}: the folder was damaged or planted; '
                         'restore it from a copy you trust')
    return path


@contextlib.contextmanager
def run_lock(out_dir, hold=True):
    """Hold out_dir for one run: an flock on out_dir/.run.lock, which the kernel drops when the process dies. A second
    run gets a ValueError naming the first (its pid and command, in the file). hold=False: torchrun's other ranks."""
    if not hold:
        yield
        return
    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, '.run.lock')
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(fd) as f:
                holder = f.read().strip() or 'its pid is not written yet'
            raise ValueError(f'{out_dir} is in use by another training run (pid {holder}): wait for it to end or '
                             'stop it, or choose another --out_dir') from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break  # the file at the path is locked, not one that the holder before us removed meanwhile
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}: {' '.join([os.path.basename(sys.executable), *sys.argv])}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(fd)  # after the removal: no other run can lock the file we remove
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)  # only if empty: a run refused before writing anything leaves no folder
