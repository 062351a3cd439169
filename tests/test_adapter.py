"""JudgeQAdapter files: PEFT-style save/load, Hub paths (mocked, offline), validation of bad files."""

from __future__ import annotations

import json
import logging
import struct

import pytest
import torch
from conftest import make_model

from judgeq_cache import JudgeQAdapter, JudgeQCache
from judgeq_cache.adapter import CONFIG_NAME, TENSOR_KEY, WEIGHTS_NAME, model_card


@pytest.fixture
def model():
    return make_model("llama")


@pytest.fixture
def saved(tmp_path, model):
    adapter = JudgeQAdapter.init_for(model, num_soft_tokens=5, seed=2)
    adapter.config.metrics = {"hit_rate/judgeq@10%": 0.5}
    adapter.save_pretrained(tmp_path / "ad")
    return adapter, tmp_path / "ad"


def test_round_trip_files_and_size(saved, model):
    adapter, path = saved
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert (path / WEIGHTS_NAME).stat().st_size < 4096  # only the rows: kilobytes
    config = json.loads((path / CONFIG_NAME).read_text())
    assert (
        config["adapter_type"] == "JUDGEQ" and config["num_soft_tokens"] == 5 and config["hidden_size"] == 64
    )
    assert config["library_version"]
    loaded = JudgeQAdapter.from_pretrained(path, model=model)
    assert torch.equal(loaded.rows, adapter.rows)
    assert loaded.config == adapter.config
    JudgeQCache(model, loaded, budget=0.5)  # usable by the cache as is


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_files(tmp_path, model, dtype):
    adapter = JudgeQAdapter.init_for(model, 3)
    adapter.config.dtype = dtype
    adapter.save_pretrained(tmp_path)
    loaded = JudgeQAdapter.from_pretrained(tmp_path)
    assert loaded.rows.dtype == torch.float32
    torch.testing.assert_close(loaded.rows, adapter.rows, atol=1e-2, rtol=1e-2)


def test_hidden_size_mismatch_errors_and_other_base_model_warns(saved, caplog):
    _, path = saved
    wide = make_model("llama", num_heads=8, num_kv_heads=2)  # hidden 128
    with pytest.raises(ValueError, match="hidden size 64"):
        JudgeQAdapter.from_pretrained(path, model=wide)
    other = make_model("qwen2")
    other.config._name_or_path = "org/other-model"
    adapter = JudgeQAdapter.from_pretrained(path)
    adapter.config.base_model = "org/base-model"
    with caplog.at_level(logging.WARNING):
        adapter.check_compatible(other)
    assert "org/base-model" in caplog.text and "org/other-model" in caplog.text


def test_missing_dir_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        JudgeQAdapter.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        JudgeQAdapter.from_pretrained(tmp_path / "empty")


def _corrupt(path, name, data):
    (path / name).write_bytes(data) if isinstance(data, bytes) else (path / name).write_text(data)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.pop("hidden_size"), "missing required keys"),
        (lambda c: c.update(num_soft_tokens=0), "positive integer"),
        (lambda c: c.update(num_soft_tokens=7), r"shape \(5, 64\).*\[7, 64\]"),
        (lambda c: c.update(dtype="float16"), "float32 but"),
        (lambda c: c.update(dtype="int8"), "dtype must be one of"),
        (lambda c: c.update(adapter_type="LORA", peft_type="LORA"), "PEFT LORA adapter"),
        (lambda c: c.update(training=[1]), "training must be a JSON object"),
    ],
)
def test_bad_config(saved, edit, match):
    _, path = saved
    config = json.loads((path / CONFIG_NAME).read_text())
    edit(config)
    _corrupt(path, CONFIG_NAME, json.dumps(config))
    with pytest.raises(ValueError, match=match):
        JudgeQAdapter.from_pretrained(path)


def test_invalid_json(saved):
    _, path = saved
    _corrupt(path, CONFIG_NAME, '{"base_model": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        JudgeQAdapter.from_pretrained(path)
    _corrupt(path, CONFIG_NAME, "[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        JudgeQAdapter.from_pretrained(path)


def test_truncated_and_garbage_weights(saved):
    _, path = saved
    blob = (path / WEIGHTS_NAME).read_bytes()
    for data in (blob[: len(blob) // 2], blob[:5], b"", b"\x00" * 64, struct.pack("<Q", 10**9) + b"{}"):
        _corrupt(path, WEIGHTS_NAME, data)
        with pytest.raises(ValueError, match="corrupt or truncated"):
            JudgeQAdapter.from_pretrained(path)


def test_wrong_tensor_name_dtype_and_non_finite(saved):
    from safetensors.torch import save_file

    adapter, path = saved
    rows = adapter.rows.detach().clone()
    save_file({"prompt_embeddings": rows}, str(path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="prompt_embeddings"):
        JudgeQAdapter.from_pretrained(path)
    save_file({TENSOR_KEY: rows.long()}, str(path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="floating point"):
        JudgeQAdapter.from_pretrained(path)
    bad = rows.clone()
    bad[1, 3] = float("nan")
    save_file({TENSOR_KEY: bad}, str(path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="NaN or Inf"):
        JudgeQAdapter.from_pretrained(path)
    adapter.rows.data[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        adapter.save_pretrained(path)


def test_hub_id_goes_through_snapshot_download(saved, monkeypatch):
    _, path = saved
    calls = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns, **kwargs)
        return str(path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    adapter = JudgeQAdapter.from_pretrained("org/judgeq-llama", revision="v1", cache_dir="/x")
    assert adapter.num_soft_tokens == 5
    assert calls["repo_id"] == "org/judgeq-llama" and calls["revision"] == "v1" and calls["cache_dir"] == "/x"
    assert CONFIG_NAME in calls["allow_patterns"] and WEIGHTS_NAME in calls["allow_patterns"]


def test_offline_or_missing_repo_names_the_id(tmp_path, monkeypatch):
    with pytest.raises(OSError, match="'nobody/missing-judgeq'.*local Hub cache"):
        JudgeQAdapter.from_pretrained("nobody/missing-judgeq", local_files_only=True, cache_dir=str(tmp_path))

    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    class NotFound(RepositoryNotFoundError):
        def __init__(self, message):  # no HTTP response object needed
            Exception.__init__(self, message)

    def not_found(repo_id, **kwargs):
        raise NotFound(f"404 {repo_id}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(OSError, match="'nobody/missing-judgeq' not found on the Hugging Face Hub"):
        JudgeQAdapter.from_pretrained("nobody/missing-judgeq")

    def offline(repo_id, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="'nobody/x'.*could not download"):
        JudgeQAdapter.from_pretrained("nobody/x")


def test_push_to_hub_uploads_files_and_model_card(saved, monkeypatch, tmp_path):
    adapter, _ = saved
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            uploaded["created"] = repo_id

        def upload_folder(self, repo_id, folder_path, **kwargs):
            from pathlib import Path

            uploaded["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            return "https://hub/commit/1"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    png = tmp_path / "loss.png"
    png.write_bytes(b"\x89PNG")
    url = adapter.push_to_hub("me/judgeq-tiny", extra_files={"loss_curve.png": png})
    assert url == "https://hub/commit/1" and uploaded["created"] == "me/judgeq-tiny"
    assert set(uploaded["files"]) == {CONFIG_NAME, WEIGHTS_NAME, "README.md", "loss_curve.png"}
    card = uploaded["files"]["README.md"].decode()
    assert "library_name: judgeq-cache" in card and "me/judgeq-tiny" in card and "loss_curve.png" in card
    assert "hit_rate/judgeq@10%" in card


def test_model_card_lists_training_and_metrics(model):
    adapter = JudgeQAdapter.init_for(model, 4)
    adapter.config.training = {"lr": 0.01, "steps": 3}
    adapter.config.metrics = {"hit": 0.61234}
    card = model_card(adapter)
    assert "| lr | 0.01 |" in card and "| hit | 0.6123 |" in card


def test_init_choices(model):
    vocab = JudgeQAdapter.init_for(model, 4, init="vocab")
    mean = JudgeQAdapter.init_for(model, 4, init="mean")
    assert vocab.config.init == "vocab" and mean.config.init == "mean"
    assert not torch.equal(vocab.rows, mean.rows)
    with pytest.raises(ValueError, match="init"):
        JudgeQAdapter.init_for(model, 4, init="zeros")


@pytest.mark.real_model
def test_bundled_adapter_loads_for_embedded_model():
    from judgeq_cache.models import is_embedded_model_available, load_embedded_model

    if not is_embedded_model_available():
        pytest.skip("embedded model not available")
    model, _ = load_embedded_model()
    adapter = JudgeQAdapter.from_pretrained("smollm2-135m-instruct", model=model)
    assert adapter.rows.shape == (32, 576)
    assert adapter.config.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_real_peft_prompt_tuning_config_is_named_as_such(tmp_path):
    """What peft's PromptTuningConfig(...).save_pretrained writes (peft 0.13), with its weights file."""
    from safetensors.torch import save_file

    peft_config = {
        "auto_mapping": None,
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "inference_mode": True,
        "num_attention_heads": 9,
        "num_layers": 30,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": 20,
        "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "revision": None,
        "task_type": "CAUSAL_LM",
        "token_dim": 576,
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }
    (tmp_path / CONFIG_NAME).write_text(json.dumps(peft_config))
    save_file({"prompt_embeddings": torch.zeros(20, 576)}, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="PEFT adapter config .*PROMPT_TUNING.*not a Judge Q adapter.*peft"):
        JudgeQAdapter.from_pretrained(tmp_path)


@pytest.mark.parametrize("version", [2, 99])
def test_newer_format_version_is_refused(saved, version):
    _, path = saved
    config = json.loads((path / CONFIG_NAME).read_text())
    config["format_version"] = version
    (path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"format_version {version} is newer.*pip install -U judgeq-cache"):
        JudgeQAdapter.from_pretrained(path)


@pytest.mark.parametrize("version", ["1", 0, True])
def test_malformed_format_version(saved, version):
    _, path = saved
    config = json.loads((path / CONFIG_NAME).read_text())
    config["format_version"] = version
    (path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version must be a positive integer"):
        JudgeQAdapter.from_pretrained(path)


def test_push_to_hub_without_network_names_the_repo(saved, monkeypatch):
    """A closed local port stands in for an unreachable Hub: a real connection error, no mock of the API."""
    import huggingface_hub.constants

    adapter, _ = saved
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(OSError, match="'me/judgeq-tiny'.*check the network") as err:
        adapter.push_to_hub("me/judgeq-tiny", token="hf_not_a_real_token")
    assert err.value.__cause__ is not None


def test_same_model_from_another_path_does_not_warn_and_another_model_warns_once(tmp_path, model, caplog):
    """The mismatch warning compares architecture, sizes and an embedding fingerprint, not the path."""
    adapter = JudgeQAdapter.init_for(model, 4)
    adapter.config.base_model = "org/tiny-llama"
    model.save_pretrained(tmp_path / "local-copy")
    from transformers import AutoModelForCausalLM

    for dtype in (torch.float32, torch.bfloat16):
        same = AutoModelForCausalLM.from_pretrained(tmp_path / "local-copy", dtype=dtype)
        assert same.config._name_or_path != adapter.config.base_model
        with caplog.at_level(logging.WARNING):
            JudgeQCache(same, adapter, 8)
        assert "JudgeQ adapter" not in caplog.text, dtype

    other = make_model("llama", seed=7)  # same sizes, other weights
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            JudgeQCache(other, adapter, 8)
    assert caplog.text.count("JudgeQ adapter was trained on 'org/tiny-llama'") == 1
    assert "embedding weights" in caplog.text

    caplog.clear()
    deeper = make_model("llama", seed=0)
    deeper.config.num_hidden_layers = 5
    with caplog.at_level(logging.WARNING):
        adapter.check_compatible(deeper)
    assert "num_hidden_layers 3 vs 5" in caplog.text


def test_model_signature_round_trips_and_legacy_adapters_compare_model_type(saved, model, caplog):
    adapter, path = saved
    loaded = JudgeQAdapter.from_pretrained(path)
    assert loaded.config.model_signature == adapter.config.model_signature
    assert loaded.config.model_signature["hidden_size"] == 64
    legacy = JudgeQAdapter.from_pretrained(path)
    legacy.config.model_signature = {}  # adapters saved before signatures existed
    legacy.config.base_model = "org/base"
    with caplog.at_level(logging.WARNING):
        legacy.check_compatible(make_model("llama", seed=4))  # same type: no path comparison, no warning
        assert "JudgeQ adapter" not in caplog.text
        legacy.check_compatible(make_model("qwen2"))
    assert "model_type 'llama' vs 'qwen2'" in caplog.text
