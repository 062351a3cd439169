"""The ``judgeq`` entry point and the library's side effects (imports, matplotlib backend)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from judgeq_cache.cli import SUBCOMMANDS, build_parser, main


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_top_level_help_imports_neither_torch_nor_transformers():
    out = _run(
        "import sys\n"
        "from judgeq_cache.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'matplotlib', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    for name, (_, help_line) in SUBCOMMANDS.items():
        assert name in out and help_line.split()[0] in out
    assert "HEAVY []" in out


def test_lazy_package_exports():
    out = _run(
        "import sys, judgeq_cache\n"
        "print('torch' in sys.modules)\n"
        "from judgeq_cache import JudgeQCache, SCORERS\n"
        "print('torch' in sys.modules, JudgeQCache.__module__, 'snapkv' in SCORERS)\n"
    )
    assert out.split() == ["False", "True", "judgeq_cache.cache", "True"]
    import judgeq_cache

    assert set(judgeq_cache.__all__) <= set(dir(judgeq_cache))
    with pytest.raises(AttributeError):
        judgeq_cache.no_such_name  # noqa: B018


def test_subcommand_help_lines_match_their_modules():
    parser = build_parser()  # imports every subcommand module
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = {choice.dest: choice.help for choice in sub._choices_actions}
    assert registered == {name: help_line for name, (_, help_line) in SUBCOMMANDS.items()}


def test_subcommand_help_still_works(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    assert "--num-soft-tokens" in capsys.readouterr().out


def test_unloaded_subcommand_keeps_its_arguments():
    args = build_parser(["bench"]).parse_args(["-v", "demo", "--samples", "2", "-h"])
    assert args.command == "demo" and args.args == ["--samples", "2", "-h"] and args.verbose


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    out = _run(
        "import sys\n"
        "import matplotlib\n"
        "def forbidden(*a, **k):\n"
        "    raise AssertionError('matplotlib.use called')\n"
        "matplotlib.use = forbidden\n"
        "from judgeq_cache.training.loop import plot_loss\n"
        f"path = plot_loss([{{'step': i, 'loss': 1 / (i + 1)}} for i in range(12)], {str(tmp_path / 'l.png')!r})\n"
        "print(path.stat().st_size > 1000, 'matplotlib.pyplot' in sys.modules)\n"
    )
    assert out.split() == ["True", "False"]


def test_models_package_layers_without_a_cycle():
    """``models.specs`` (the table) is light, ``gguf_cache`` needs only the table, and the loader sits
    on top of both: importing the lower layers never pulls in the ones above."""
    out = _run(
        "import sys\n"
        "import judgeq_cache.models.specs\n"
        "print('torch' in sys.modules)\n"
        "import judgeq_cache.models.gguf_cache\n"
        "print('judgeq_cache.models.loader' in sys.modules)\n"
        "from judgeq_cache.models import EMBEDDED_MODELS, load_embedded_model, load_model\n"
        "print(load_model.__module__, EMBEDDED_MODELS['smollm2'].key)\n"
    )
    assert out.split() == ["False", "False", "judgeq_cache.models.loader", "smollm2"]


def test_subcommand_modules_are_light():
    """Each subcommand's parser module imports without torch (its handlers import the heavy code)."""
    modules = sorted({module for module, _ in SUBCOMMANDS.values()})
    out = _run(
        "import importlib, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\nprint('torch' in sys.modules)\n"
    )
    assert out.split() == ["False"]
