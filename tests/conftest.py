"""Shared test set-up: run from the repository root's modules, on the CPU."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))  # the command-line programs, imported by their tests
import runtime  # noqa: E402,F401  (before paddle, as the entry points do)


def pytest_configure(config):
    """Register the `slow` mark (whole runs: killed, stopped and resumed, over several processes or launch nodes;
    the benchmark's subcommands; B224 at 448; programs started many times); `-m "not slow"` leaves them out."""
    config.addinivalue_line('markers', 'slow: whole runs, benchmarks and large models, left out by -m "not slow"')


def pytest_sessionstart(session):
    """Build (or load) the C++ CPU kernels once before any test: a test's subprocess that found them out of date
    would otherwise spend the build's ~10 s inside a timed window (a kill at a logged step, a training run)."""
    import cpu_ops
    cpu_ops.kernels()
