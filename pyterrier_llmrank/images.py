"""Result frames that carry images: the image column convention, its validation and image loading.

A frame of page images (or any image documents) has, besides ``qid, query, docno``, an image column (default
:data:`IMAGE_FIELD`, ``'image'``) whose values are either a path to an image file (``str`` or ``os.PathLike``) or a
``PIL.Image.Image``. The multimodal rerankers (:class:`~pyterrier_llmrank.mmr5.MMR5`,
:class:`~pyterrier_llmrank.mmyesno.VLYesNo`) validate the column before any model runs
(:func:`check_images`): a missing column is named by ``pyterrier_alpha``'s validation, a missing value
(``None``/NaN) raises naming the column and rows, and a path that does not exist or cannot be read as an image
raises naming the row and the path. Images are opened when a batch needs them (:func:`load_image`), in RGB, so a
frame of paths costs no memory up front.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, List, Tuple

import pandas as pd

__all__ = ['IMAGE_FIELD', 'load_image', 'image_size', 'check_images', 'is_image']

#: The default name of the image column of a result frame.
IMAGE_FIELD = 'image'


def is_image(value: Any) -> bool:
    """Whether ``value`` is a ``PIL.Image.Image``."""
    from PIL import Image
    return isinstance(value, Image.Image)


def _describe(row: Any, column: str) -> str:
    return f'row {row} of column {column!r}' if row is not None else f'column {column!r}'


def _read(value: Any, read: Callable[[Any], Any], row: Any, column: str) -> Any:
    """``read(image)`` of a PIL image or of the image file at a path, with errors that name the row and the path."""
    from PIL import Image, UnidentifiedImageError
    if isinstance(value, Image.Image):
        return read(value)
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{_describe(row, column)}: image file {path!r} does not exist')
        try:
            with Image.open(path) as img:
                return read(img)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f'{_describe(row, column)}: {path!r} is not a readable image ({e})') from e
    raise ValueError(f'{_describe(row, column)}: expected an image path or a PIL image, got {type(value).__name__}')


def load_image(value: Any, *, row: Any = None, column: str = IMAGE_FIELD) -> Any:
    """The image ``value`` (a path or a PIL image) as an RGB ``PIL.Image.Image``.

    Raises:
        FileNotFoundError: the path does not exist (the message names the row and the path).
        ValueError: the file is not a readable image, or the value is neither a path nor an image.
    """
    from PIL import Image
    if isinstance(value, Image.Image) and value.mode == 'RGB':
        return value
    return _read(value, lambda img: img.convert('RGB'), row, column)  # a loaded copy: the file is closed after


def image_size(value: Any, *, row: Any = None, column: str = IMAGE_FIELD) -> Tuple[int, int]:
    """``(width, height)`` of the image ``value``, reading only the header of a file (errors as :func:`load_image`)."""
    return _read(value, lambda img: img.size, row, column)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value)) if not is_image(value) and not isinstance(value, (str, os.PathLike)) else False
    except (TypeError, ValueError):
        return False


def check_images(inp: pd.DataFrame, columns: Iterable[str], who: str) -> None:
    """Check the image ``columns`` of ``inp`` (present columns only; absent ones are left to frame validation).

    Every value must be a PIL image or the path of a readable image file.

    Raises:
        ValueError: naming the column and the rows whose value is missing (``None``/NaN), or a row whose value is
            not an image.
        FileNotFoundError: naming the row and the path of an image file that does not exist.
    """
    for column in columns:
        if column is None or column not in inp.columns:
            continue
        values = inp[column].tolist()
        missing: List[int] = [i for i, v in enumerate(values) if _missing(v)]
        if missing:
            raise ValueError(f'{who}: column {column!r} is missing (None/NaN) in {len(missing)} row(s) (positions '
                             f'{missing[:10]}{" ..." if len(missing) > 10 else ""}); every row needs an image')
        for i, v in enumerate(values):
            image_size(v, row=i, column=column)
