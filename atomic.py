"""
Atomic writes: a file either exists whole or not at all, and a write killed half-way leaves nothing behind.

    with atomic_path('out/ckpt.pt') as tmp:
        torch.save(checkpoint, tmp)

The data is written to a hidden temporary file beside the target, named after the target, this machine
and this process (.ckpt.pt.HOST-PID.XXXX.tmp), then flushed to disk and renamed over the target. A
process killed with `kill -9` cannot remove its temporary file (a checkpoint's size, or 17 GB for
OpenWebText's train.bin), so every write first removes the ones left by dead processes of this machine.
The final file has the usual permissions (0666 less the umask), whatever mode the writer gave it.

Also the other file-safety rules: inside(folder, name) (a name read from a file never leads out of its
folder) and run_lock(out_dir) (one training run per folder).
"""

import contextlib
import fcntl
import glob
import os
import socket
import sys
import tempfile

from configurator import one_line


def host_prefix(path):
    """The start of the names of this machine's temporary files for `path`; the writing process's id follows."""
    return f".{os.path.basename(path)}.{socket.gethostname().replace('.', '_')}-"


def remove_stale_temps(path):
    """Remove the temporary files of writes to `path` whose process, on this machine, no longer runs."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = host_prefix(path)
    for tmp in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + '*.tmp')):
        pid = os.path.basename(tmp)[len(prefix):].split('.')[0]
        if pid.isdigit() and not process_runs(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def process_runs(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; when the block ends without error, the temporary file
    is flushed to disk and renamed over `path`. On error or interrupt it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'{host_prefix(path)}{os.getpid()}.', suffix='.tmp')
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp makes it private, and some writers (safetensors) recreate it 0600: the usual permissions
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_failed(path, e):
    """The one-line error of a checkpoint save that failed (a full disk, no permission): nothing was replaced.
    e is an OSError, or the RuntimeError torch's writer reports a full disk with."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else f'is the disk full? {one_line(e, 120)}'
    return OSError(f'could not save {path} ({reason}): the previous checkpoint, if any, is unchanged; free '
                   'some disk space (or choose another --out_dir) and resume with --init_from=resume')


def inside(folder, name, root=None):
    """folder/name, where `name` was read from a file (an index, a pointer): a ValueError unless it stays inside
    `root` (default: folder), symbolic links resolved, so that a planted '../../other/run', '/etc/passwd' or
    link to them is never read."""
    root = root or folder
    path = os.path.join(folder, name)
    real_root = os.path.realpath(root)
    if os.path.isabs(name) or os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise ValueError(f'{folder} names {name!r}, which is outside {root}: the folder was damaged or planted; '
                         'restore it from a copy you trust')
    return path


LOCK = '.run.lock'


@contextlib.contextmanager
def run_lock(out_dir, hold=True):
    """Hold out_dir for one run: an exclusive flock on out_dir/.run.lock while the block runs, released on any
    exit, `kill -9` included (the kernel drops the locks of a dead process). A second run into out_dir gets a
    ValueError naming the running process (its pid and command, written into the lock file). hold=False (the
    other processes of a torchrun job, whose rank 0 holds the lock) does nothing. A folder the lock created is
    removed again if the run left it empty."""
    if not hold:
        yield
        return
    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(fd, closefd=True) as f:
                holder = f.read().strip() or 'its pid is not written yet'
            raise ValueError(f'{out_dir} is in use by another training run (pid {holder}): wait for it to end or '
                             'stop it, or choose another --out_dir') from None
        # the holder before us may have removed the file after we opened it: lock the file at the path, not a ghost
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
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
