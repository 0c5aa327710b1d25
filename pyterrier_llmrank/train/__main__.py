"""Command line: ``python -m pyterrier_llmrank.train RECIPE --config FILE [key=value ...]``.

Overrides ``key=value`` (``a.b=value`` for nested keys; values parsed as YAML) replace entries of the file,
e.g. ``python -m pyterrier_llmrank.train sft --config examples/train/sft.yaml steps=10 output_dir=/tmp/sft``.
Restarting an interrupted command resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from pyterrier_llmrank.train import RECIPES, run_recipe
from pyterrier_llmrank.train.common import apply_overrides, load_config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m pyterrier_llmrank.train',
                                     description='Train a reranker of pyterrier_llmrank.')
    parser.add_argument('recipe', choices=list(RECIPES), help='the training recipe')
    parser.add_argument('--config', required=True, help='recipe configuration file (YAML or JSON)')
    parser.add_argument('overrides', nargs='*', help='key=value entries replacing those of the file')
    args = parser.parse_intermixed_args(argv)
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    cfg = apply_overrides(load_config(args.config), args.overrides)
    out = run_recipe(args.recipe, cfg)
    print(out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
