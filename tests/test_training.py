"""Soft-token training on tiny random models and local files (fast); the real model is marked."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import cache_kwargs, make_model

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.prompts import Prompt, corpus_prompts, encode_prompt, load_prompts
from judgeq_cache.training import (
    ResponseStore,
    TrainConfig,
    TrainData,
    TrainingError,
    alignment_loss,
    evaluate_hit_rates,
    prepare_examples,
    train,
)
from judgeq_cache.training.objective import kept_by

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    """A character-level tokenizer with a ChatML template whose ids fit the tiny models' vocab (128)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<unk>": 3}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    assert len(vocab) <= 128
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<unk>",
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def text_prompts(n, length=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        letters = torch.randint(0, 26, (length + 7 * i,), generator=gen)
        text = "".join(chr(97 + int(c)) for c in letters)
        out.append(Prompt(f"p{i}", [{"role": "user", "content": f"{text}\nsummarize"}]))
    return out


def small_config(**kw):
    base = dict(
        num_soft_tokens=4, max_new_tokens=6, batch_size=2, max_steps=4, save_every=2, lr=1e-2, ignore_first=1
    )
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- prompts


def test_load_prompts_sharegpt_jsonl_openai_and_text(tmp_path):
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(
        json.dumps(
            [
                {
                    "id": "a",
                    "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                },
                {"id": "b", "conversations": [{"from": "gpt", "value": "only the bot"}]},
                {
                    "id": "c",
                    "conversations": [
                        {"from": "system", "value": "be brief"},
                        {"from": "human", "value": "q1"},
                        {"from": "gpt", "value": "a1"},
                        {"from": "human", "value": "q2"},
                        {"from": "gpt", "value": "a2"},
                    ],
                },
            ]
        )
    )
    prompts = load_prompts(sharegpt)
    assert [p.id for p in prompts] == ["a", "c"]
    assert prompts[1].messages[-1] == {"role": "user", "content": "q2"}  # the dataset's answer is dropped
    assert prompts[1].messages[0]["role"] == "system"

    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hello"}]})
        + "\n\n"
        + json.dumps({"text": "plain"})
        + "\n"
    )
    assert [p.messages[-1]["content"] for p in load_prompts(jsonl)] == ["hello", "plain"]


def test_load_prompts_datasets_dir_and_empty(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"question": "what?"}, {"question": "why?"}])
    ds.save_to_disk(str(tmp_path / "ds"))
    assert [p.messages[0]["content"] for p in load_prompts(tmp_path / "ds")] == ["what?", "why?"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no usable prompts"):
        load_prompts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_prompts(bad)


def test_encode_prompt_middle_truncates_with_warning(tokenizer, caplog):
    prompt = Prompt("long", [{"role": "user", "content": "a" * 50 + "b" * 50}])
    full = encode_prompt(tokenizer, prompt)
    with caplog.at_level(logging.WARNING):
        ids = encode_prompt(tokenizer, prompt, max_length=40)
    assert len(ids) == 40 and ids[:20] == full[:20] and ids[20:] == full[-20:]
    assert "keeping the first 20 and last 20" in caplog.text


def test_corpus_prompts_lengths_and_determinism(tokenizer):
    a = corpus_prompts(tokenizer, 3, min_tokens=200, max_tokens=300, seed=1)
    b = corpus_prompts(tokenizer, 3, min_tokens=200, max_tokens=300, seed=1)
    assert [p.messages for p in a] == [p.messages for p in b]
    for p in a:
        assert 1 <= p.meta["excerpt_tokens"] <= 300 and p.meta["corpus"] in ("moby_dick", "brown")


# --------------------------------------------------------------------------- targets, loss, gradient


def test_target_is_response_attention_and_prediction_has_gradient(tokenizer):
    """The response target equals a per-row dry pass; the soft prediction back-propagates into the rows only."""
    model = make_model("qwen2")
    adapter = JudgeQAdapter.init_for(model, 4, seed=0)
    cfg = small_config()
    store = ResponseStore(None)
    examples = prepare_examples(model, tokenizer, text_prompts(3), adapter, cfg, store, progress=False)
    assert sum(len(e.ids) for e in examples) == 3
    ex = examples[0]
    # Row 0 alone, batch of one, no padding: same target.
    n0 = ex.lengths[0]
    ids = ex.input_ids[:1, -n0:]
    cache = JudgeQCache(model, adapter, budget=0.5, auto_compress=False)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, cache))
        resp = torch.tensor([store.records[ex.ids[0]]["response_ids"]])
        ref = cache.appended_attention({"input_ids": resp})
    for layer, t in ex.target.items():
        torch.testing.assert_close(t[:1, :, -n0:], ref[layer], atol=2e-5, rtol=1e-4)
    from judgeq_cache.training.objective import soft_attention

    adapter.rows.requires_grad_(True)
    for p in model.parameters():
        p.requires_grad_(False)
    pred, _ = soft_attention(model, adapter, ex, grad=True)
    loss = alignment_loss(pred, ex.target, ex.attention_mask, "mse", 1)
    loss.backward()
    assert adapter.rows.grad is not None and adapter.rows.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_alignment_loss_zero_when_equal_and_ignores_padding_and_sinks():
    t = {0: torch.softmax(torch.randn(2, 3, 10), -1)}
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    for kind in ("mse", "kl"):
        assert alignment_loss(t, t, mask, kind).item() == pytest.approx(0.0, abs=1e-6)
    p = {0: t[0].clone()}
    p[0][1, :, :4] = 5.0  # padding of row 1
    p[0][0, :, 0] = 3.0  # first real token of row 0
    p[0][1, :, 4] = 3.0  # first real token of row 1
    assert alignment_loss(p, t, mask, "mse", ignore_first=1).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(p, t, mask, "mse", ignore_first=0).item() > 0
    with pytest.raises(ValueError, match="mse"):
        alignment_loss(p, t, mask, "l1")


def test_snapkv_hit_rate_selection_equals_eviction_cache(tokenizer):
    """The evaluation's SnapKV kept set equals EvictionCache(model, budget, 'snapkv').kept_indices."""
    model = make_model("llama")
    adapter = JudgeQAdapter.init_for(model, 4)
    cfg = small_config(batch_size=1)
    [ex] = prepare_examples(
        model, tokenizer, text_prompts(1, length=80), adapter, cfg, window_size=32, progress=False
    )
    from judgeq_cache.scorers import make_scorer

    n = ex.lengths[0]
    k = round(0.25 * n)
    cache = EvictionCache(model, k, "snapkv")
    with torch.no_grad():
        model(input_ids=ex.input_ids, **cache_kwargs(model, cache))
    snap = make_scorer("snapkv")
    for layer, idx in cache.kept_indices.items():
        assert torch.equal(kept_by(snap, ex.window[layer].float(), k), idx)
    metrics = evaluate_hit_rates(model, adapter, [ex], (0.1, 0.25), cfg)
    assert set(metrics) >= {"hit_rate/judgeq@10%", "hit_rate/snapkv@25%", "heldout_loss"}
    assert all(0.0 <= v <= 1.0 for k_, v in metrics.items() if k_.startswith("hit_rate"))


# --------------------------------------------------------------------------- training loop


def test_train_end_to_end_checkpoint_resume_and_response_cache(tmp_path, tokenizer):
    model = make_model("llama")
    prompts = text_prompts(6)
    cfg = small_config(max_steps=4)
    out = tmp_path / "adapter"
    adapter, report = train(
        model, tokenizer, prompts[:4], out, cfg, heldout_prompts=prompts[4:], progress=False
    )
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss_curve.png",
        "history.jsonl",
        "report.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "checkpoint" / "optimizer.pt").is_file()
    loaded = JudgeQAdapter.from_pretrained(out, model=model)
    torch.testing.assert_close(loaded.rows, adapter.rows)
    assert loaded.config.training["max_steps"] == 4
    assert "hit_rate/judgeq@10%" in loaded.config.metrics
    assert report["steps"] == 4
    records = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(records) == 6

    # Resume to 6 steps: continues from step 4, and reuses the cached responses (no new lines).
    cfg6 = small_config(max_steps=6)
    _, report6 = train(
        model, tokenizer, prompts[:4], out, cfg6, heldout_prompts=prompts[4:], resume=True, progress=False
    )
    assert report6["steps"] == 6
    # Resuming a finished run with a fresh adapter passed in continues from the checkpoint's rows.
    fresh = JudgeQAdapter.init_for(model, cfg6.num_soft_tokens, seed=123)
    resumed, _ = train(
        model,
        tokenizer,
        prompts[:4],
        out,
        cfg6,
        adapter=fresh,
        heldout_prompts=prompts[4:],
        resume=True,
        progress=False,
    )
    torch.testing.assert_close(resumed.rows, JudgeQAdapter.from_pretrained(out / "checkpoint").rows)
    assert len((out / "responses.jsonl").read_text().splitlines()) == 6
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_train_data_equals_the_keywords_and_both_raise(tmp_path, tokenizer):
    """``train(..., data=TrainData(...))`` trains the very rows of the keyword form; both is a TypeError."""
    model = make_model("llama")
    cfg = small_config(max_steps=2, save_every=0)
    prompts = text_prompts(4)
    held = prepare_examples(
        model, tokenizer, prompts[2:], JudgeQAdapter.init_for(model, 4), cfg, window_size=32, progress=False
    )
    fields = dict(train_prompts=prompts[:2], heldout_examples=held, responses_path=tmp_path / "r.jsonl")
    by_keywords, report = train(
        model, tokenizer, output_dir=tmp_path / "kw", config=cfg, progress=False, **fields
    )
    by_data, report_data = train(
        model, tokenizer, None, tmp_path / "data", cfg, data=TrainData(**fields), progress=False
    )
    assert torch.equal(by_data.rows, by_keywords.rows)
    assert report_data["final"] == report["final"] and report_data["steps"] == 2
    assert not (tmp_path / "data" / "responses.jsonl").exists()  # responses_path came through data
    with pytest.raises(TypeError, match="data= and heldout_prompts=, responses_path="):
        train(
            model,
            tokenizer,
            None,
            tmp_path / "both",
            cfg,
            data=TrainData(**fields),
            heldout_prompts=prompts[2:],
            responses_path=tmp_path / "r.jsonl",
        )


def test_training_reduces_loss_on_a_fixed_batch(tokenizer):
    model = make_model("qwen3")
    cfg = small_config(max_steps=30, lr=5e-2, warmup_ratio=0.0, batch_size=3)
    adapter = JudgeQAdapter.init_for(model, 4, init="mean")
    examples = prepare_examples(model, tokenizer, text_prompts(3), adapter, cfg, progress=False)
    from judgeq_cache.training.objective import soft_attention

    def loss_now():
        pred, _ = soft_attention(model, adapter, examples[0], grad=False)
        return float(alignment_loss(pred, examples[0].target, examples[0].attention_mask, "mse", 1))

    before = loss_now()
    train(
        model,
        tokenizer,
        None,
        "/tmp/unused-judgeq",
        cfg,
        adapter=adapter,
        train_examples=examples,
        progress=False,
    )
    assert loss_now() < before


def test_empty_dataset_and_empty_responses(tmp_path, tokenizer, caplog):
    model = make_model("llama")
    with pytest.raises(TrainingError, match="empty"):
        train(model, tokenizer, [], tmp_path, small_config(), progress=False)
    # Every response is empty: the model's first token is EOS.
    eos_model = make_model("llama")
    with torch.no_grad():
        eos_model.lm_head.weight.zero_()
        eos_model.lm_head.weight[2] = 1.0  # logits favour id 2 (eos) ...
        eos_model.model.norm.weight.fill_(1.0)
    store = ResponseStore(None)
    store.add("p0", [], [])
    cfg = small_config()
    adapter = JudgeQAdapter.init_for(eos_model, 4)
    with caplog.at_level(logging.WARNING):
        try:
            examples = prepare_examples(eos_model, tokenizer, text_prompts(2), adapter, cfg, progress=False)
        except TrainingError as err:
            assert "empty" in str(err)
            examples = []
    assert "empty" in caplog.text or examples


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tokenizer, monkeypatch):
    model = make_model("llama")
    cfg = small_config(max_steps=6, save_every=2)
    import judgeq_cache.training.loop as tr

    calls = {"n": 0}
    real = tr.alignment_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(tr, "alignment_loss", flaky)
    with pytest.raises(TrainingError, match="non-finite loss .* step 3"):
        train(model, tokenizer, text_prompts(4), tmp_path, cfg, progress=False)
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2
    good = JudgeQAdapter.from_pretrained(tmp_path / "checkpoint")
    assert torch.isfinite(good.rows).all()


def test_response_store_resumes_and_ignores_truncated_line(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResponseStore(path)
    store.add("a", [1, 2], [3, 4])
    with path.open("a") as f:
        f.write('{"id": "b", "prompt_ids": [1')  # killed mid-write
    again = ResponseStore(path)
    assert again.get("a", [1, 2]) == [3, 4]
    assert again.get("a", [9]) is None  # prompt changed: regenerate
    assert again.get("b", [1]) is None


def test_cli_train_parser_registers():
    from judgeq_cache.cli import build_parser

    args = build_parser().parse_args(["train", "--output", "x", "--corpus-prompts", "3", "--init", "mean"])
    assert args.func.__name__ == "run_cli" and args.init == "mean" and args.corpus_prompts == 3


@pytest.mark.slow
def test_data_parallel_two_cpu_processes(tmp_path, tokenizer):
    """The same module under torchrun (2 CPU processes, gloo): shards prompts, all-reduces row gradients."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() or shutil.which("true") is None:
        pytest.skip("torchrun not available")
    model = make_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"messages": p.messages}) + "\n" for p in text_prompts(8)))
    out = tmp_path / "out"
    cmd = [
        str(torchrun), "--nproc_per_node", "2", "-m", "judgeq_cache.training",
        "--model", str(tmp_path / "tiny"), "--data", str(data), "--output", str(out),
        "--num-soft-tokens", "4", "--max-new-tokens", "4", "--steps", "3", "--batch-size", "2", "--heldout", "2",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["training"]["world_size"] == 2
    assert (out / "responses.rank0.jsonl").is_file() and (out / "responses.rank1.jsonl").is_file()
