"""What a user outside the repository meets: no shadowed dependency, the shipped adapter by name,
refusals of untrained adapters before any model loads, and the README's quick start verbatim."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from judgeq_cache import JudgeQAdapter
from judgeq_cache.errors import UntrainedAdapterError, UserError
from judgeq_cache.pretrained import shipped_adapter_names, shipped_adapter_path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ["", "benchmarks", "scripts"]  # where `python -m`, `python -c` and `python script.py` put cwd first

FIND_SPEC = (
    "import importlib.util, json; s = importlib.util.find_spec('kernels'); "
    "print(json.dumps(None if s is None else [s.origin, list(s.submodule_search_locations or [])]))"
)


@pytest.fixture(scope="module")
def model():
    from conftest import make_model

    return make_model("llama")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.parametrize("folder", FOLDERS)
def test_kernels_from_a_repo_folder_is_not_the_repo(folder):
    """transformers >= 5.25 imports the PyPI package ``kernels``; nothing in the repo may shadow it."""
    out = subprocess.run(
        [sys.executable, "-c", FIND_SPEC], cwd=ROOT / folder, env=_clean_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)
    if spec is None:
        return
    origin, locations = spec
    venv = Path(sys.prefix).resolve()  # the installed package may live in a venv inside the checkout
    for where in [origin, *locations]:
        if where is None or Path(where).resolve().is_relative_to(venv):
            continue
        assert not Path(where).resolve().is_relative_to(ROOT), f"'kernels' resolves to {where}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_module_in_a_repo_folder_carries_a_dependency_name(folder):
    """Any ``x.py`` or ``x/`` where cwd lands on ``sys.path`` would shadow an installed ``x``."""
    provided = set(importlib.metadata.packages_distributions()) - {"judgeq_cache"}
    names = {p.stem for p in (ROOT / folder).glob("*.py")}
    names |= {p.name for p in (ROOT / folder).iterdir() if p.is_dir() and not p.name.startswith(".")}
    clashes = sorted(names & provided)
    assert not clashes, f"{folder or 'repo root'}: {clashes} shadow installed packages"


def test_shipped_adapter_is_package_data_and_loads_by_name():
    assert "smollm2-135m-instruct" in shipped_adapter_names()
    path = shipped_adapter_path("smollm2-135m-instruct")
    assert path is not None and path.is_relative_to(ROOT / "judgeq_cache")
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["judgeq_cache.pretrained"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        assert f"*/{name}" in shipped and (path / name).is_file()
    adapter = JudgeQAdapter.from_pretrained("smollm2-135m-instruct")
    assert adapter.is_trained and adapter.config.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert JudgeQAdapter.from_pretrained("SmolLM2-135M-Instruct").is_trained  # names are case-insensitive


def test_a_local_folder_always_wins_over_a_shipped_name(tmp_path, monkeypatch, model):
    local = JudgeQAdapter.init_for(model, 3)
    local.save_pretrained(tmp_path / "smollm2-135m-instruct")
    monkeypatch.chdir(tmp_path)
    loaded = JudgeQAdapter.from_pretrained("smollm2-135m-instruct")
    assert loaded.num_soft_tokens == 3 and not loaded.is_trained


def test_for_model_finds_the_shipped_adapter_only_for_its_model(model):
    with pytest.raises(LookupError, match="judgeq train"):
        JudgeQAdapter.for_model(model)


@pytest.mark.real_model
def test_for_model_finds_the_shipped_adapter_for_the_embedded_model():
    from judgeq_cache.models import is_embedded_model_available, load_model

    if not is_embedded_model_available():
        pytest.skip("embedded model not installed")
    real, _ = load_model("embedded")
    adapter = JudgeQAdapter.for_model(real)
    assert adapter.is_trained and adapter.config.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.real_model
def test_the_gemma3_adapter_ships_by_name_and_is_found_for_its_model():
    from judgeq_cache.models import load_model

    adapter = JudgeQAdapter.from_pretrained("gemma-3-270m")
    assert adapter.is_trained and adapter.config.base_model == "google/gemma-3-270m"
    assert (shipped_adapter_path("gemma-3-270m") / "README.md").is_file()
    try:
        real, _ = load_model("gemma3")
    except ImportError:
        pytest.skip("the embedded Gemma-3-270M package is not installed")
    found = JudgeQAdapter.for_model(real)
    assert torch.equal(found.rows, adapter.rows)


def test_untrained_adapters_are_refused_for_figures_unless_asked_for(tmp_path, model):
    from judgeq_cache.eval.loading import load_adapter

    JudgeQAdapter.init_for(model, 4).save_pretrained(tmp_path / "fresh")
    with pytest.raises(UntrainedAdapterError, match="--allow-untrained"):
        load_adapter(model, str(tmp_path / "fresh"))
    with pytest.raises(UntrainedAdapterError, match="judgeq train"):
        load_adapter(model)  # no shipped adapter fits a tiny random model
    adapter, label = load_adapter(model, allow_untrained=True)
    assert not adapter.is_trained and label.startswith("untrained")
    _, label = load_adapter(model, str(tmp_path / "fresh"), allow_untrained=True)
    assert label.startswith("untrained")
    assert issubclass(UntrainedAdapterError, UserError)


def test_eval_without_an_adapter_for_the_model_is_an_argparse_error_before_loading(monkeypatch, capsys):
    import judgeq_cache.models as models
    from judgeq_cache.cli import main

    monkeypatch.setattr(
        models, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check")
    )
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "eval",
                "run",
                "--model",
                "some-org/some-model",
                "--tasks",
                "needle_single",
                "--output",
                "x.jsonl",
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--allow-untrained" in err and "judgeq train" in err


def test_readme_is_a_users_readme():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "pip install" in text and "@inproceedings" in text and "make demo" in text and "make test" in text
    assert "huggingface-cli" not in text


def _takes_cache_kwarg() -> bool:
    from transformers import LlamaConfig, LlamaForCausalLM

    from judgeq_cache.utils import cache_kwarg

    config = LlamaConfig(
        vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1
    )
    return cache_kwarg(LlamaForCausalLM(config)) == "cache"


def readme_first_python_block() -> str:
    return re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)


@pytest.mark.real_model
@pytest.mark.slow
def test_readme_first_python_block_runs_verbatim_outside_the_repo(tmp_path):
    """The quick start, verbatim, from an empty folder, offline: the trained adapter finds the number."""
    from judgeq_cache.models import is_embedded_model_available

    if not is_embedded_model_available():
        pytest.skip("embedded model not installed")
    if not _takes_cache_kwarg():
        pytest.skip("the README's quick start passes cache=, which transformers < 5.24 does not take")
    script = tmp_path / "quickstart.py"
    script.write_text(readme_first_python_block())
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    answer, kept = out.stdout.strip().splitlines()[-2:]
    assert "4817" in answer
    prompt, per_head = re.findall(r"\d+", kept)
    assert int(per_head) <= int(prompt) // 10 + 16  # the kept 10 % + the generated tokens


def test_bench_refuses_an_untrained_adapter_unless_asked(tmp_path, monkeypatch, model, caplog):
    """`judgeq bench` outside the repo used to warn and then time an untrained adapter (issue 23, 7)."""
    import logging

    import judgeq_cache.eval.speed as speed
    import judgeq_cache.models as models
    from judgeq_cache.cli import main

    monkeypatch.setattr(models, "load_model", lambda *a, **k: (model, None))
    monkeypatch.setattr(speed, "measure", lambda *a, **k: pytest.fail("an untrained adapter was timed"))
    JudgeQAdapter.init_for(model, 4).save_pretrained(tmp_path / "fresh")
    with caplog.at_level(logging.ERROR):
        assert main(["bench", "--adapter", str(tmp_path / "fresh"), "--lengths", "16"]) == 2
    assert "never trained" in caplog.text and "--allow-untrained" in caplog.text
