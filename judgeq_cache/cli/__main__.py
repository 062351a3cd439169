"""``python -m judgeq_cache.cli ...``: the ``judgeq`` command."""

import sys

from . import main

sys.exit(main())
