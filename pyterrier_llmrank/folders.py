"""Artifacts built once into a cache folder: converted models, extracted encoders, PISA and dense indexes.

Every artifact of the toolkit is built the same way, by :func:`build_folder`: in a temporary folder beside its
target, which is renamed into place only when the build is complete. So

* an interrupted build never leaves a folder that looks finished (a later call builds it again);
* two processes that build the same artifact at once both finish; the first rename wins, the other build is
  discarded;
* temporary folders left behind by processes that no longer run are removed, and a target folder without its
  marker file (left by an older, non-atomic writer or by hand) is rebuilt instead of failing forever;
* the folder is readable by other users (``mkdtemp`` creates it private; it is opened to the umask before the
  rename), so a shared cache works.

The cache root is :func:`cache_dir` (``$PYTERRIER_LLMRANK_CACHE``, else ``~/.cache/pyterrier_llmrank``).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Union

__all__ = ['cache_dir', 'build_folder', 'is_built']

PathLike = Union[str, os.PathLike]


def cache_dir() -> Path:
    """The toolkit's cache folder: ``$PYTERRIER_LLMRANK_CACHE`` or ``$XDG_CACHE_HOME/pyterrier_llmrank``
    (``~/.cache/pyterrier_llmrank``)."""
    path = os.environ.get('PYTERRIER_LLMRANK_CACHE')
    if path:
        return Path(path).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'pyterrier_llmrank'


def is_built(target: PathLike, marker: str) -> bool:
    """Whether ``target`` holds a finished build (its ``marker`` file exists)."""
    return (Path(target) / marker).exists()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


_TMP = re.compile(r'^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-z_]+$')


def _remove_stale(target: Path) -> None:
    """Remove the temporary folders of ``target`` whose builder process no longer runs."""
    for tmp in target.parent.glob(f'.{target.name}.tmp-*'):
        m = _TMP.match(tmp.name)
        if m and m.group('name') == target.name and not _alive(int(m.group('pid'))):
            shutil.rmtree(tmp, ignore_errors=True)


def _open_to_umask(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def build_folder(target: PathLike, write: Callable[[Path], None], marker: str, *, create: bool = True) -> Path:
    """Build the folder ``target`` with ``write`` unless it is already built; returns ``target``.

    Args:
        target: the folder to build.
        write: fills the temporary folder it is given (a sibling of ``target``); it must write ``marker``.
        marker: a file that exists only in a finished build (``config.json``, ``pt_meta.json``, ...).
        create: ``True`` gives ``write`` an existing, empty folder; ``False`` a path that does not exist yet, for
            writers that create their folder themselves (PISA, FlexIndex).

    Raises:
        RuntimeError: when ``write`` returned without writing ``marker``.
    """
    target = Path(target)
    if is_built(target, marker):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    holder = Path(tempfile.mkdtemp(prefix=f'.{target.name}.tmp-{os.getpid()}-', dir=target.parent))
    tmp = holder
    try:
        if not create:
            holder.rmdir()
        write(tmp)
        if not is_built(tmp, marker):
            raise RuntimeError(f'building {target} did not complete: {marker} was not written in {tmp}')
        _open_to_umask(tmp)
        if target.exists() and not is_built(target, marker):
            # an unfinished folder left in place by an older writer or by hand: it can never be used
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_built(target, marker):  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
