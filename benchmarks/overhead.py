"""Scoring overhead, decode speed and KV memory of JudgeQCache vs a plain DynamicCache.

Same as ``judgeq bench``: ``python benchmarks/overhead.py --lengths 1024,2048,4096 --rss``.
"""

import argparse
import sys

from judgeq_cache.cli.bench import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
