"""Optical character recognition of page images with Tesseract: :class:`OCR`, an image column to a text column.

Choose :class:`OCR` to put any text reranker of the toolkit onto page images: ``pages >> OCR() >> UPR(...)``
reads the ``image`` column of a result frame (a path or a PIL image), writes the recognised text into ``text``,
and the text reranker that follows sees an ordinary result frame. It is also how the interleaved-document encoder
of :mod:`pyterrier_llmrank.interleaved` reads the image and table sections of a document with a text encoder.

The engine is the ``tesseract`` command-line program (Tesseract 5, Apache-2.0; Smith, "An Overview of the
Tesseract OCR Engine", ICDAR 2007; reference code tesseract-ocr/tesseract), called as a subprocess: an image goes
in on standard input as PNG, the text comes back on standard output. It is a system package, not a Python one:

* Debian/Ubuntu (as root, as ``make install`` does): ``apt-get update && apt-get install -y tesseract-ocr
  tesseract-ocr-eng``;
* without root or apt: ``conda install -c conda-forge tesseract``, or ``brew install tesseract``; then put the
  binary on ``PATH`` or set ``$TESSERACT_CMD`` (or the ``command`` argument) to its path.

Tesseract runs with one thread (``OMP_THREAD_LIMIT=1``): its OpenMP threads do not speed up single pages and
would make timings depend on the load of the machine.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_llmrank.base import EfficiencyStats, missing_rows

__all__ = ['OCR', 'TESSERACT_ENV', 'TESSERACT_INSTALL', 'tesseract_command', 'ocr_image']

#: Environment variable naming the tesseract binary (else ``tesseract`` on ``PATH``).
TESSERACT_ENV = 'TESSERACT_CMD'

#: What to do when the binary is missing (quoted in the error).
TESSERACT_INSTALL = ('install Tesseract: as root on Debian/Ubuntu `apt-get update && apt-get install -y '
                     'tesseract-ocr tesseract-ocr-eng` (make install does this); without root or apt `conda install -c '
                     f'conda-forge tesseract` or `brew install tesseract`, then put it on PATH or set ${TESSERACT_ENV} '
                     'to the binary')


def tesseract_command(command: Optional[str] = None) -> str:
    """The path of the tesseract binary: ``command``, else ``$TESSERACT_CMD``, else ``tesseract`` on ``PATH``.

    Raises:
        FileNotFoundError: when no such binary exists, saying how to install it.
    """
    name = command or os.environ.get(TESSERACT_ENV) or 'tesseract'
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f'the OCR engine {name!r} was not found; {TESSERACT_INSTALL}')
    return found


def _png_bytes(image: Any) -> bytes:
    """The PNG bytes of a PIL image, or the bytes of an image file (any format Tesseract reads)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f'image file {str(path)!r} not found')
        return path.read_bytes()
    if hasattr(image, 'save'):
        buf = io.BytesIO()
        image.save(buf, format='PNG')
        return buf.getvalue()
    raise TypeError(f'an image must be a file path or a PIL image, not {type(image).__name__}')


def ocr_image(image: Any, *, lang: str = 'eng', psm: int = 3, command: Optional[str] = None,
              timeout: float = 120.0) -> str:
    """The text Tesseract reads on one image (a path or a PIL image), whitespace collapsed to single spaces.

    Args:
        image: an image file path or a PIL image.
        lang: Tesseract language(s), e.g. ``'eng'`` or ``'eng+deu'`` (their traineddata must be installed).
        psm: Tesseract page segmentation mode (3: automatic, 6: a single uniform block of text).
        command: the tesseract binary (see :func:`tesseract_command`).
        timeout: seconds before one page is abandoned with an error.

    Raises:
        FileNotFoundError: the binary or the image file is missing.
        RuntimeError: tesseract failed; the message holds its error output.
    """
    binary = tesseract_command(command)
    data = _png_bytes(image)
    env = dict(os.environ, OMP_THREAD_LIMIT='1')
    proc = subprocess.run([binary, 'stdin', 'stdout', '-l', lang, '--psm', str(int(psm))], input=data,
                          capture_output=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        err = proc.stderr.decode('utf-8', 'replace').strip()
        raise RuntimeError(f'tesseract failed on {image if isinstance(image, (str, os.PathLike)) else "an image"} '
                           f'(exit {proc.returncode}): {err[-500:]}')
    return ' '.join(proc.stdout.decode('utf-8', 'replace').split())


class OCR(pt.Transformer):
    """Reads the page image of each row with Tesseract and writes the text: image column -> text column.

    Choose it to re-rank page images (:func:`pyterrier_llmrank.datasets.page_images`) with any text reranker,
    ``pages >> OCR() >> UPR(...)``, or to give a text encoder the image sections of interleaved documents. A
    vision-language reranker reads the images themselves instead.

    The frame may be a result frame or a document frame: every column is kept, ``text_field`` is written (an
    existing one is replaced), rows keep their order. An image shared by several rows (the same page retrieved for
    several queries) is read once per call. An empty frame gives an empty frame with ``text_field``.

    Args:
        image_field: the column of the images: file paths or PIL images.
        text_field: the column written.
        lang, psm, command: see :func:`ocr_image`.
        verbose: a progress bar over the pages read (``pt.tqdm``).

    ``stats`` (:class:`~pyterrier_llmrank.base.EfficiencyStats`) counts per query ``pages`` read and ``seconds``
    (rows without a ``qid`` column are counted under the qid ``None``). Engine: see :mod:`pyterrier_llmrank.ocr`.

    Raises (in ``transform``):
        KeyError: the image column is missing (pyterrier-alpha's validation names it).
        ValueError: an image is missing (NaN/None), naming the column and rows.
        FileNotFoundError: the tesseract binary or an image file is missing.
    """

    schematic = {'label': 'OCR'}

    def __init__(self, image_field: str = 'image', text_field: str = 'text', *, lang: str = 'eng', psm: int = 3,
                 command: Optional[str] = None, verbose: bool = False) -> None:
        self.image_field = image_field
        self.text_field = text_field
        self.lang = lang
        self.psm = psm
        self.command = command
        self.verbose = verbose
        self.stats = EfficiencyStats()

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:  # noqa: D102
        pta.validate.columns(inp, includes=[self.image_field])
        out = inp.copy()
        if len(inp) == 0:
            out[self.text_field] = pd.Series(dtype=object)
            return out
        rows = missing_rows(inp, self.image_field)
        if rows:
            raise ValueError(f'OCR: column {self.image_field!r} is missing (NaN/None) in {len(rows)} row(s) '
                             f'(positions {rows[:10]}{" ..." if len(rows) > 10 else ""}); every row needs an image')
        tesseract_command(self.command)   # fail before any work when the binary is missing
        images = inp[self.image_field].tolist()
        qids = inp['qid'].tolist() if 'qid' in inp.columns else [None] * len(inp)
        read: Dict[Any, str] = {}
        texts = []
        for image, qid in pt.tqdm(list(zip(images, qids)), desc='OCR', unit='page', disable=not self.verbose):
            key = os.fspath(image) if isinstance(image, (str, os.PathLike)) else id(image)
            if key not in read:
                start = time.perf_counter()
                read[key] = ocr_image(image, lang=self.lang, psm=self.psm, command=self.command)
                self.stats.add(qid, pages=1, seconds=time.perf_counter() - start)
            texts.append(read[key])
        out[self.text_field] = pd.Series(texts, index=out.index, dtype=object)
        return out

    def __repr__(self) -> str:
        return f'OCR({self.image_field!r}, {self.text_field!r}, lang={self.lang!r}, psm={self.psm})'
