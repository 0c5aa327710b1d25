"""Finding collections: :func:`load` and the shared offline data folders searched for bare names."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

from pyterrier_llmrank.datasets.core import Collection
from pyterrier_llmrank.datasets.errors import DatasetFormatError
from pyterrier_llmrank.datasets.folder import FORMAT_HELP, FolderCollection
from pyterrier_llmrank.datasets.irds import IRDSCollection

__all__ = ['load', 'find_shared', 'shared_data_dirs', 'is_bare_name', 'SHARED_DATA', 'DATA_ENV', 'IRDS_PREFIX']

DATA_ENV = 'PYTERRIER_LLMRANK_DATA'
"""Environment variable naming a folder of offline collections (overrides ``../shared/data``)."""

IRDS_PREFIX = 'irds:'
"""The prefix of a name that :func:`load` reads through ``ir_datasets``."""

REPO = Path(__file__).resolve().parents[2]
"""The repository (or site-packages folder) holding the ``pyterrier_llmrank`` package."""


def shared_data_dirs() -> List[Path]:
    """The folders searched for offline collections by bare name, in order.

    These are ``$PYTERRIER_LLMRANK_DATA`` (if set), ``<d>/../shared/data`` for the current working
    directory and each of its parents ``<d>``, and ``../shared/data`` next to this repository.

    Returns:
        The candidate folders (existing or not), without duplicates.
    """
    candidates: List[Path] = []
    env = os.environ.get(DATA_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if d.parent == d:  # the root's ../shared/data is itself
            break
        candidates.append(d.parent / 'shared' / 'data')
    candidates.append(REPO.parent / 'shared' / 'data')
    seen, result = set(), []
    for c in candidates:
        key = str(c.resolve()) if c.exists() else str(c)
        if key not in seen:
            seen.add(key)
            result.append(c)
    return result


def first_shared_dir() -> Optional[Path]:
    """The first existing folder of :func:`shared_data_dirs`, or ``None``."""
    for d in shared_data_dirs():
        if d.is_dir():
            return d
    return None


SHARED_DATA: Optional[Path] = first_shared_dir()
"""The offline collections folder found at import time (``None`` if none was found).

:func:`find_shared` searches again at each call, so it honours later changes of
``$PYTERRIER_LLMRANK_DATA`` or of the working directory.
"""


def find_shared(name: str) -> Path:
    """Locates an offline collection folder by name, e.g. ``'vaswani'`` or ``'beir-scifact/train'``.

    Args:
        name: The folder name relative to the shared data folder.

    Returns:
        The path of the collection folder.

    Raises:
        DatasetFormatError: If no searched folder holds ``name``; the message lists where it looked.
    """
    looked = []
    for base in shared_data_dirs():
        candidate = base / name
        if candidate.is_dir():
            return candidate
        looked.append(str(candidate))
    raise DatasetFormatError(
        f'collection {name!r} not found: it is not an existing folder and none of these exist: '
        f'{", ".join(looked)} (set ${DATA_ENV} to the folder of the offline collections, '
        f'or use an "{IRDS_PREFIX}<id>" name for ir_datasets)')


def is_bare_name(name: str) -> bool:
    """Whether ``name`` is looked up by :func:`find_shared`: not empty, not absolute, not starting ``.`` or ``~``."""
    return bool(name) and not os.path.isabs(name) and not name.startswith(('.', '~'))


def load(path_or_name: Union[str, os.PathLike, Collection]) -> Collection:
    """Loads a test collection.

    Args:
        path_or_name: One of

            * a folder in the offline format (``str`` or :class:`~pathlib.Path`);
            * ``'irds:<id>'``, an ``ir_datasets`` id such as ``'irds:vaswani'``;
            * a bare name such as ``'msmarco-passage-trec-dl-2019'`` or ``'beir-scifact/train'``
              that is not an existing path, looked up with :func:`find_shared`;
            * an already loaded :class:`~pyterrier_llmrank.datasets.core.Collection` (returned as is).

    Returns:
        The collection. Files are read lazily, when first needed.

    Raises:
        DatasetFormatError: If the folder is missing or lacks required files.
        KeyError: If an ``irds:`` id is unknown to ``ir_datasets``.
    """
    if isinstance(path_or_name, Collection):
        return path_or_name
    if isinstance(path_or_name, str) and path_or_name.startswith(IRDS_PREFIX):
        return IRDSCollection(path_or_name[len(IRDS_PREFIX):])
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f'expected a path, a collection name or "{IRDS_PREFIX}<id>", '
                        f'got {type(path_or_name).__name__}')
    path = Path(path_or_name).expanduser()
    if path.exists():
        return FolderCollection(path)
    if isinstance(path_or_name, str) and is_bare_name(path_or_name):
        return FolderCollection(find_shared(path_or_name))
    raise DatasetFormatError(f'collection folder not found: {path} ({FORMAT_HELP})')
