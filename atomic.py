"""
Atomic writes: a file either exists whole or not at all, and a write killed half-way leaves nothing behind.

    with atomic_path('out/ckpt.pt') as tmp:
        torch.save(checkpoint, tmp)

The data is written to a hidden temporary file beside the target, named after the target, this machine
and this process (.ckpt.pt.HOST-PID.XXXX.tmp), then flushed to disk and renamed over the target. A
process killed with `kill -9` cannot remove its temporary file (a checkpoint's size, or 17 GB for
OpenWebText's train.bin), so every write first removes the ones left by dead processes of this machine.
"""

import contextlib
import glob
import os
import socket
import tempfile


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
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the final file gets the usual permissions
    try:
        yield tmp
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
    """The one-line error of a checkpoint save that failed (a full disk, no permission): nothing was replaced."""
    return OSError(f'could not save {path} ({e.strerror or e}): the previous checkpoint, if any, is unchanged; free '
                   'some disk space (or choose another --out_dir) and resume with --init_from=resume')
