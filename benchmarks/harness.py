"""What every benchmark script sets up before it imports anything else: the offline Hugging Face hub, no tokenizer
threads, and the repository on ``sys.path`` (so that ``python benchmarks/x.py`` runs the working tree's package).

``python benchmarks/x.py`` puts ``benchmarks/`` on ``sys.path``, so the scripts start with ``import harness``
(or ``from harness import REPO``) before torch, transformers or the package.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

#: the repository root
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
