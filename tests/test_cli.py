"""``judgeq`` command line: bad arguments are argparse errors (usage + one line, exit code 2) raised
before any model loads; budgets mean what the help says."""

from __future__ import annotations

import subprocess
import sys

import pytest

import judgeq_cache.eval.loading as loading
import judgeq_cache.models as models
from judgeq_cache.cli import main
from judgeq_cache.eval.records import parse_budget

pytestmark = pytest.mark.usefixtures("refuse_model_loading")


BAD = [
    (["eval", "run", "--output", "o.jsonl", "--budgets", "2.0"], "--budgets", "(0, 1)"),
    (["demo", "--budgets", "2.0"], "--budgets", "(0, 1)"),
    (["demo", "--budgets", "1.5,0.1"], "--budgets", "(0, 1)"),
    (["eval", "run", "--output", "o.jsonl", "--budgets", "abc"], "--budgets", "not a number"),
    (["eval", "run", "--output", "o.jsonl", "--budgets", "0"], "--budgets", ">= 1"),
    (["eval", "run", "--output", "o.jsonl", "--tasks", "nosuchtask"], "--tasks", "unknown task 'nosuchtask'"),
    (["eval", "run", "--output", "o.jsonl", "--tasks", "longbench:nope"], "--tasks", "LongBench dataset"),
    (["eval", "run", "--output", "o.jsonl", "--samples", "-1"], "--samples", ">= 1"),
    (["eval", "run", "--output", "o.jsonl", "--model", "/nonexistent"], "--model", "does not exist"),
    (["eval", "run", "--output", "o.jsonl", "--methods", "kvpress-tova"], "--methods", "unknown method"),
    (["eval", "run", "--output", "o.jsonl", "--settings", "agnostic"], "--settings", "unknown setting"),
    (["eval", "run", "--output", "o.jsonl", "--corpus", "bible"], "--corpus", "invalid choice"),
    (["eval", "run", "--output", "o.jsonl", "--adapter", "./no/such/adapter"], "--adapter", "does not exist"),
    (["demo", "--samples", "0"], "--samples", ">= 1"),
    (["demo", "--length", "8"], "--length", ">= 16"),
    (["bench", "--lengths", "0"], "--lengths", ">= 1"),
    (["bench", "--lengths", "1024,x"], "--lengths", "expected an integer"),
    (["bench", "--repeats", "0"], "--repeats", ">= 1"),
    (["bench", "--kept", "2"], "--kept", "(0, 1)"),
    (["train", "--output", "o", "--max-steps", "0"], "--max-steps", ">= 1"),
    (["train", "--output", "o", "--loss", "huber"], "--loss", "invalid choice"),
    (["train", "--output", "o", "--dtype", "float64"], "--dtype", "invalid choice"),
    (["train", "--output", "o", "--lr", "-1"], "--lr", "positive"),
    (["train", "--output", "o", "--heldout", "2.5"], "--heldout", "whole count"),
    (["train", "--output", "o", "--heldout", "-0.1"], "--heldout", "fraction in [0, 1)"),
    (["train", "--output", "o", "--model", "./missing-model"], "--model", "does not exist"),
]


@pytest.mark.parametrize(
    ("argv", "option", "message"), BAD, ids=[" ".join(b[0][:2] + b[0][-2:]) for b in BAD]
)
def test_bad_arguments_are_argparse_errors(argv, option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[0].startswith("usage: judgeq"), captured.err
    assert err[-1].startswith("judgeq ") and "error: argument " + option in err[-1], err[-1]
    assert message in err[-1]
    assert "Traceback" not in captured.err and not captured.out


def test_standalone_training_module_uses_the_same_checks(capsys):
    from judgeq_cache.training import main as train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(["--output", "o", "--steps", "0"])
    assert exit_info.value.code == 2 and "--steps" in capsys.readouterr().err


def test_train_flags_are_the_train_config_fields():
    """``judgeq train`` declares one flag per TrainConfig field, with its default, and builds the config."""
    import argparse
    import dataclasses

    from judgeq_cache.cli.args import dataclass_from_args
    from judgeq_cache.training import TrainConfig
    from judgeq_cache.training.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert dataclass_from_args(TrainConfig, parser.parse_args(["-o", "x"])) == TrainConfig()
    flags = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig)} - {"--eval-budgets"}
    assert flags <= set(parser._option_string_actions)
    args = parser.parse_args(["-o", "x", "--steps", "7", "--loss", "topk", "--no-keep-prefill", "--sample"])
    config = dataclass_from_args(TrainConfig, args)
    assert (config.max_steps, config.loss, config.keep_prefill, config.do_sample) == (7, "topk", False, True)


def test_bad_argument_from_a_real_process_exits_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "judgeq_cache.cli", "eval", "run", "--output", "x.jsonl", "--budgets", "2.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("usage:") and "argument --budgets" in lines[-1]


@pytest.mark.parametrize(
    ("text", "expected"), [("256", 256), ("0.25", 0.25), ("25%", 0.25), (" 0.1 ", 0.1), (3, 3), (0.5, 0.5)]
)
def test_parse_budget_accepts(text, expected):
    value = parse_budget(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text", ["2.0", "1.0", "100%", "0", "-3", "0.0", "nan", "inf", "abc", "", 2.0, True])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def _harness_spy(monkeypatch) -> dict:
    """Patch model loading and evaluate(); returns the dict evaluate()'s keyword arguments land in."""
    import judgeq_cache.eval.runner as runner

    seen = {}

    def fake_evaluate(model, tokenizer, samples, **kwargs):
        seen.update(kwargs)
        return iter(())

    monkeypatch.setattr(models, "load_model", lambda name="embedded", **kwargs: (None, None))
    monkeypatch.setattr(loading, "load_samples", lambda *a, **k: [])
    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    return seen


def test_budget_types_reach_the_harness(monkeypatch):
    """Integers stay entries per head, decimals stay fractions, all the way to evaluate()."""
    seen = _harness_spy(monkeypatch)
    argv = ["eval", "run", "--output", "o.jsonl", "--methods", "full,snapkv", "--budgets", "256,0.25,10%"]
    argv += ["--settings", "query-agnostic"]
    assert main(argv) == 0
    assert seen["budgets"] == [256, 0.25, 0.1] and [type(b) for b in seen["budgets"]] == [int, float, float]
    assert seen["methods"] == ["full", "snapkv"] and seen["settings"] == ["query-agnostic"]


def test_demo_without_matplotlib_skips_the_plot_with_install_hint(
    monkeypatch, tmp_path, caplog, capsys, tiny_demo_models
):
    import logging

    import judgeq_cache.cli.args as cliargs

    monkeypatch.setattr(cliargs.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else 1)
    import judgeq_cache.eval.plots as plots

    monkeypatch.setattr(plots, "plot_accuracy", lambda *a, **k: pytest.fail("plotted without matplotlib"))
    plot = tmp_path / "demo.png"
    with caplog.at_level(logging.WARNING):
        assert main(["demo", "--samples", "1", "--length", "150", "--plot", str(plot)]) == 0
    assert "matplotlib is not installed" in caplog.text and "pip install matplotlib" in caplog.text
    assert not plot.exists() and "judgeq" in capsys.readouterr().out


def test_report_plot_without_matplotlib_is_an_argparse_error(monkeypatch, capsys, tmp_path):
    import judgeq_cache.cli.args as cliargs

    monkeypatch.setattr(cliargs.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "report", str(tmp_path / "r.jsonl"), "--plot", str(tmp_path / "p.png")])
    assert exit_info.value.code == 2 and "pip install matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["judgeq", "judgeq-shared", "judgeq-perhead"])
def test_every_judgeq_variant_gets_the_adapter(monkeypatch, method):
    """`eval run --methods judgeq-shared` alone still loads the adapter (it used to pass None)."""
    seen = _harness_spy(monkeypatch)
    monkeypatch.setattr(loading, "load_adapter", lambda m, path=None, **kw: ("ADAPTER", "label"))
    assert main(["eval", "run", "--output", "o.jsonl", "--methods", method]) == 0
    assert seen["adapter"] == "ADAPTER"
