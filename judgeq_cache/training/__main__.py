"""``python -m judgeq_cache.training ...`` (what ``accelerate launch`` / ``torchrun`` run)."""

from .cli import main

raise SystemExit(main())
