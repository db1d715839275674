"""``python -m dpp_tools``: see :mod:`dpp_tools.cli`."""

import sys

from dpp_tools.cli import main

sys.exit(main())
