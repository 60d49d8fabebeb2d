"""Shared test set-up: run from the repository root's modules, on the CPU."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))  # the command-line programs, imported by their tests
import runtime  # noqa: E402,F401  (before paddle, as the entry points do)


def pytest_configure(config):
    """Register the `slow` mark (whole training runs killed and resumed); `-m "not slow"` leaves them out."""
    config.addinivalue_line('markers', 'slow: whole runs killed and resumed (tests/test_faults_slow.py)')
