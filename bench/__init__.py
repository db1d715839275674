"""Benchmarks of the DPP plugin against baselines measured in the same run (``make bench``).

Machines are shared and noisy, so every figure is printed next to a baseline
taken minutes earlier on the same machine, and the ratios are what count.
Raw numbers go to ``bench/results/*.json``; generated files and prepared
Orthanc data folders are cached under ``bench/results/`` (git-ignored) so that
repeated runs skip the slow preparation.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
#: The Debian root a run is in (``tools/stacks.py bench`` sets ``DPP_STACK``), None on the host.
STACK = os.environ.get("DPP_STACK") or None

# The benchmarks and tests.orthanc_server import the plugin's pure package;
# pytest gets it from pyproject's pythonpath, we add it here so that
# ``python -m bench`` works from the repository root alone.
if str(REPO / "plugin") not in sys.path:
    sys.path.insert(0, str(REPO / "plugin"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
