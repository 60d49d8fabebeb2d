"""Puts the repository root on sys.path, so that the programs in tools/ import its library modules (config,
repmlp, inference, ...) whatever the current directory: `python tools/X.py` puts only tools/ itself there.

Every program in tools/ imports this first (`import repo_path`); it is not a program.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
