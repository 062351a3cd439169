"""Issue 23, problem 5: every ``judgeq`` argument is checked before anything heavy loads.

A missing file, an impossible combination or an out-of-range value is an argparse error (usage +
one line, exit 2, no traceback), and it comes back before torch is imported. A problem found only
while reading the data is one log line and exit 2 (``UserError``), still before the model loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import judgeq_cache.models as models
from judgeq_cache.cli import main

pytestmark = pytest.mark.usefixtures("refuse_model_loading")


def _bad_cases(tmp) -> list[tuple[list[str], str]]:
    """``(argv, words the error must contain)``; ``tmp`` holds a file, an empty folder and a record."""
    out, a_file, a_dir = str(tmp / "out"), str(tmp / "file.txt"), str(tmp / "empty")
    records = str(tmp / "r.jsonl")
    corpus = ["--corpus-prompts", "2"]
    return [
        (["train", "-o", out], "no prompts: pass --data"),
        (["train", "-o", out, "--data", "/nonexistent.json"], "'/nonexistent.json' does not exist"),
        (["train", "-o", out, "--data", a_dir + "/x.jsonl"], "does not exist"),
        (
            ["train", "-o", out, *corpus, "--min-tokens", "100", "--max-tokens", "10"],
            "--min-tokens 100 exceeds",
        ),
        (["train", "-o", out, *corpus, "--weight-decay", "-1"], "argument --weight-decay: must be a finite"),
        (["train", "-o", out, *corpus, "--weight-decay", "nan"], "argument --weight-decay: must be a finite"),
        (
            ["train", "-o", out, *corpus, "--warmup-ratio", "5"],
            "argument --warmup-ratio: must be a number in [0, 1]",
        ),
        (["train", "-o", out, *corpus, "--warmup-ratio", "-0.1"], "argument --warmup-ratio"),
        (["train", "-o", a_file, *corpus], "--output"),
        (["train", "-o", out, *corpus, "--responses", a_dir], "--responses"),
        (
            [
                "eval",
                "run",
                "--tasks",
                "longbench:narrativeqa",
                "--data-dir",
                "/nonexistent",
                "--output",
                out,
            ],
            "--data-dir '/nonexistent' is not a directory",
        ),
        (
            ["eval", "run", "--tasks", "longbench:narrativeqa", "--data-dir", a_dir, "--output", out],
            "narrativeqa.jsonl' does not exist",
        ),
        (["eval", "run", "--tasks", "ruler:niah_single_1", "--output", out], "needs --data-dir"),
        (["eval", "run", "--output", a_dir], "--output"),
        (["eval", "kvpress", "--tasks", "ruler:niah_single_1", "--output", out], "eval"),
        (["eval", "report", "/nonexistent.jsonl"], "input '/nonexistent.jsonl' does not exist"),
        (["eval", "report", records, "--compare", "judgeq"], "--compare"),
        (["eval", "report", records, "--markdown", a_dir], "--markdown"),
        (["demo", "--plot", a_file + "/plot.png"], "is a file"),
        (["bench", "--json", a_dir], "--json"),
        (["bench", "--adapter", "./no/such/adapter"], "--adapter"),
    ]


def _prepare(tmp) -> None:
    (tmp / "file.txt").write_text("x")
    (tmp / "empty").mkdir()
    (tmp / "r.jsonl").write_text("")


def test_each_bad_argument_is_an_argparse_error(tmp_path, capsys):
    _prepare(tmp_path)
    for argv, words in _bad_cases(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (argv, err)
        assert err.startswith("usage: judgeq") and words in err.strip().splitlines()[-1], (argv, err)
        assert "Traceback" not in err


def test_the_checks_run_before_torch_imports(tmp_path):
    """All the bad commands above, in one fresh process: each exits 2, and torch never loads."""
    _prepare(tmp_path)
    cases = [argv for argv, _ in _bad_cases(tmp_path)]
    code = (
        "import contextlib, io, json, sys\n"
        "from judgeq_cache.cli import main\n"
        "codes = []\n"
        f"for argv in {cases!r}:\n"
        "    with contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as e:\n"
        "            codes.append(e.code)\n"
        "print(json.dumps([codes, 'torch' in sys.modules, 'transformers' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    codes, torch_loaded, transformers_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert codes == [2] * len(cases)
    assert not torch_loaded and not transformers_loaded


def test_train_without_data_from_a_real_process_is_fast_and_clean(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "judgeq_cache.cli", "train", "-o", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no prompts: pass --data" in proc.stderr.strip().splitlines()[-1]
    assert seconds < 20  # torch alone takes 7-30 s to import here; the check needs none of it


def test_standalone_training_module_runs_the_same_check(tmp_path, capsys):
    from judgeq_cache.training.cli import main as train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(["-o", str(tmp_path / "x"), "--data", "/nonexistent.json"])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_unusable_data_file_is_one_line_and_exit_2_before_the_model_loads(tmp_path, caplog):
    data = tmp_path / "records.json"
    data.write_text(json.dumps([{"unrelated": 1}]))
    assert main(["train", "-o", str(tmp_path / "out"), "--data", str(data)]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "holds no usable prompts" in errors[0].getMessage()


def test_good_arguments_pass_the_checks(tmp_path):
    from judgeq_cache.cli import build_parser

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    runs = tmp_path / "runs"
    good = [
        ["train", "-o", str(tmp_path / "new" / "adapter"), "--data", str(data), "--warmup-ratio", "1"],
        [
            "train",
            "-o",
            str(tmp_path / "a"),
            "--corpus-prompts",
            "2",
            "--min-tokens",
            "10",
            "--max-tokens",
            "10",
        ],
        ["train", "-o", str(tmp_path / "a"), "--corpus-prompts", "2", "--weight-decay", "0"],
        ["eval", "run", "--tasks", "needle_single", "--output", str(runs / "o.jsonl")],
        ["demo", "--plot", str(tmp_path / "plots" / "demo.png")],
        ["bench", "--json", str(tmp_path / "b.json")],
    ]
    for argv in good:
        args = build_parser([argv[0]]).parse_args(argv)
        assert args.check(args) is None, argv


def test_malformed_task_data_is_one_line_and_exit_2(tmp_path, monkeypatch, caplog):
    """A data file that exists but cannot be parsed is found only when read: one line, exit 2."""
    monkeypatch.setattr(models, "load_model", lambda name, **kwargs: (None, None))
    (tmp_path / "narrativeqa.jsonl").write_text('{"input": "q", "context": \n')
    argv = ["eval", "run", "--tasks", "longbench:narrativeqa", "--data-dir", str(tmp_path)]
    assert main([*argv, "--methods", "full", "--output", str(tmp_path / "o.jsonl")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "longbench:narrativeqa: cannot read its samples" in errors[0]
