"""The method registry: the CLI defaults, the report order and the kvpress names derive from it."""

from __future__ import annotations

import ast
from pathlib import Path

from judgeq_cache.eval.methods import PRESS_METHODS, default_methods, default_presses, method_order, variants
from judgeq_cache.eval.runner import METHODS, scorer_of

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_method_is_a_default_a_variant_or_opt_in():
    defaults = default_methods()
    assert defaults[:2] == ["full", "judgeq"] and "judgeq-shared" not in defaults
    assert "judgeq-shared" in variants("judgeq") and variants("snapkv") == ["snapkv-shared"]
    assert variants("full") == [] and "judgeq" not in variants("judgeq")
    for method in METHODS:
        base = scorer_of(method)
        assert method in defaults or method in variants(base) or method == "oracle"


def test_report_order_is_unchanged_for_the_published_methods():
    published = [
        "full",
        "judgeq",
        "judgeq-shared",
        "judgeq-untrained",
        "judgeq-untrained-shared",
        "snapkv",
        "snapkv-shared",
        "pyramidkv",
        "h2o",
        "streamingllm",
        "random",
    ]
    presses = ["kvpress-tova", "kvpress-expected_attention", "kvpress-snapkv", "kvpress-knorm"]
    assert method_order(set(published) | set(presses) | {"zzz"}) == published + sorted(presses) + ["zzz"]
    assert method_order(["random", "judgeq-untrained", "full"]) == ["full", "judgeq-untrained", "random"]


def test_press_names_are_the_kvpress_runners():
    """kvpress_runner needs kvpress to import: read its PRESSES keys from the source instead."""
    tree = ast.parse((ROOT / "judgeq_cache" / "eval" / "kvpress_runner.py").read_text())
    presses = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PRESSES"
    )
    assert tuple(key.value for key in presses.keys) == PRESS_METHODS
    assert default_presses() == [p for p in PRESS_METHODS if p != "kvpress-kvzip"]


def test_eval_cli_defaults_come_from_the_registry():
    from judgeq_cache.cli import build_parser

    parser = build_parser(["eval"])
    run = parser.parse_args(["eval", "run", "--output", "x.jsonl"])
    assert run.methods == default_methods()
    kv = parser.parse_args(["eval", "kvpress", "--output", "x.jsonl"])
    assert kv.presses == default_presses()
