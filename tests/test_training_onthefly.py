"""On-the-fly targets (no KV kept) end to end on CPU, the ``--targets auto`` rule, and ``--dry-run``'s numbers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model
from reference import one_pass_soft_attention
from test_training import make_tokenizer, small_config, text_prompts

from judgeq_cache import JudgeQAdapter
from judgeq_cache.training import alignment_loss, train
from judgeq_cache.training import data as data_module
from judgeq_cache.training.onthefly import LazyExample, attention_pair, resolve_targets
from judgeq_cache.training.plan import choose_targets, make_plan
from judgeq_cache.training.shapes import ModelShape, resolve_shape


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _history(out) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_on_the_fly_trains_the_rows_only_and_step0_loss_matches_an_independent_reference(
    tmp_path, tokenizer, monkeypatch
):
    """One prompt, batch 1: the loss of step 1 (the initial rows) is the loss between two plain eager
    forwards (prompt + soft rows, prompt + response) read from ``output_attentions``; no cache, no
    capture. Every step prefills again (nothing kept); the loss falls; only the rows get gradients."""
    model = make_model("llama")
    prompts = text_prompts(1)
    cfg = small_config(targets="on-the-fly", batch_size=1, max_steps=8, lr=5e-2, warmup_ratio=0.0, loss="mse")
    adapter = JudgeQAdapter.init_for(model, cfg.num_soft_tokens, seed=0)
    rows0 = adapter.rows.detach().clone()
    prefills = []
    real_prefill = data_module.prefill_prompt

    def counting_prefill(*args, **kwargs):
        prefills.append(args[2].shape)
        return real_prefill(*args, **kwargs)

    import judgeq_cache.training.onthefly as onthefly

    monkeypatch.setattr(onthefly, "prefill_prompt", counting_prefill)
    out = tmp_path / "otf"
    trained, report = train(model, tokenizer, prompts, out, cfg, adapter=adapter, progress=False)

    assert report["targets"] == "on-the-fly" and trained.config.training["targets"] == "on-the-fly"
    assert len(prefills) == 1 + cfg.max_steps  # one to answer, then one per step: no KV is kept
    losses = [h["loss"] for h in _history(out) if "loss" in h]
    assert losses[-1] < 0.9 * losses[0], losses
    assert not torch.equal(trained.rows, rows0)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())

    # The independent reference of the step-1 loss.
    record = json.loads((out / "responses.jsonl").read_text().splitlines()[0])
    prompt_ids = torch.tensor([record["prompt_ids"]])
    response = model.get_input_embeddings()(torch.tensor(record["response_ids"])).detach()
    pred = one_pass_soft_attention(model, prompt_ids, rows0)
    target = one_pass_soft_attention(model, prompt_ids, response)
    ref = alignment_loss(pred, target, torch.ones_like(prompt_ids), cfg.loss, cfg.ignore_first)
    assert losses[0] == pytest.approx(float(ref), rel=1e-5, abs=1e-7)

    # The prepared route (targets computed once, KV kept) gives the same step-1 loss.
    prepared = small_config(targets="prepared", batch_size=1, max_steps=1, loss="mse")
    out2 = tmp_path / "prepared"
    again = JudgeQAdapter.init_for(model, cfg.num_soft_tokens, seed=0)
    _, report2 = train(model, tokenizer, prompts, out2, prepared, adapter=again, progress=False)
    assert report2["targets"] == "prepared"
    assert _history(out2)[0]["loss"] == pytest.approx(losses[0], rel=1e-5)


def test_on_the_fly_gradient_reaches_only_the_rows(tokenizer):
    model = make_model("qwen2")
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = JudgeQAdapter.init_for(model, 4, seed=0)
    adapter.rows.requires_grad_(True)
    example = LazyExample(
        ["a", "b"],
        torch.tensor([[0, 0, 5, 6, 7, 8, 9, 10], [4, 5, 6, 7, 8, 9, 10, 11]]),
        torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8]),
        [[20, 21, 22], [30, 31]],
    )
    pred, target = attention_pair(model, adapter, example, grad=True)
    assert all(not t.requires_grad for t in target.values())
    alignment_loss(pred, target, example.attention_mask, "kl", 1).backward()
    assert adapter.rows.grad is not None and adapter.rows.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_bf16_model_keeps_fp32_rows_and_optimizer_state(tmp_path, tokenizer):
    """The GPU recipe's dtypes, on CPU: the frozen model in bf16, the rows and AdamW's moments in fp32."""
    model = make_model("llama", dtype=torch.bfloat16)
    cfg = small_config(targets="on-the-fly", batch_size=2, max_steps=2, save_every=0)
    adapter, report = train(model, tokenizer, text_prompts(2), tmp_path, cfg, progress=False)
    assert report["targets"] == "on-the-fly" and adapter.rows.dtype == torch.float32
    state = torch.load(tmp_path / "checkpoint" / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    assert {v.dtype for s in state.values() for k, v in s.items() if k != "step"} == {torch.float32}
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_auto_targets_rule(tokenizer):
    """``auto``: prepared while the store is <= half of the memory left after the weights."""
    assert choose_targets(50, 100, 200) == "prepared"
    assert choose_targets(51, 100, 200) == "on-the-fly"
    model = make_model("llama")  # 3 layers, 2 KV heads of 16, fp32
    weights = sum(p.numel() * 4 for p in model.parameters())
    lengths = [100, 200]
    # per prompt: fp32 target 4*3*2*n + fp32 KV 2*2*16*4*3*n = 24 n + 768 n
    store = sum(24 * n + 768 * n for n in lengths)
    just = (weights + 2 * store) / 1e9
    assert resolve_targets(model, small_config(gpu_memory_gb=just), lengths) == "prepared"
    assert resolve_targets(model, small_config(gpu_memory_gb=just * 0.999), lengths) == "on-the-fly"
    # without keep_prefill only the targets are stored
    small = (weights + 2 * sum(24 * n for n in lengths)) / 1e9
    assert (
        resolve_targets(model, small_config(gpu_memory_gb=small, keep_prefill=False), lengths) == "prepared"
    )
    assert resolve_targets(model, small_config(targets="prepared", gpu_memory_gb=1e-9), lengths) == "prepared"


# --------------------------------------------------------------------------- --dry-run

TINY = dict(
    model_type="llama",
    num_hidden_layers=2,
    hidden_size=8,
    intermediate_size=16,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=4,
    vocab_size=10,
    tie_word_embeddings=False,
)


def test_plan_numbers_by_hand(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    shape = resolve_shape("tiny", str(path))
    assert shape.source.startswith("--config-json")
    # one layer: q 8*8 + k 8*4 + v 8*4 + o 8*8 = 192, MLP 3*8*16 = 384, norms 16 -> 592
    assert shape.layer_params == 592
    assert shape.params == 2 * 592 + 8 + 2 * 10 * 8 == 1352
    run = dict(dtype="bfloat16", prompt_tokens=100, response_tokens=5, soft_tokens=3, batch_size=1)
    # tflops=1e-6 is 1 MFLOP/s: seconds = MFLOPs
    plan = make_plan(shape, **run, prompts=10, steps=7, memory_gb=80, tflops=1e-6)
    assert plan.weights_bytes == 1352 * 2
    # K and V: 2 * 1 KV head * head dim 4 * 2 bytes * 2 layers * 100 tokens
    assert plan.kv_bytes_per_prompt == 3200
    assert plan.target_bytes_per_prompt == 4 * 2 * 1 * 100 == 800
    assert plan.prepared_memory_bytes == 10 * (800 + 3200)
    # on disk: fp16 KV (3200) + target, window and last maps (3 * 800) + int64 ids (800)
    assert plan.prepared_disk_bytes == 10 * 6400
    # saved: 2 layers * 3 soft * (8h + 3I = 112) * 2 B + 2 layers * 2 q heads * 3 * 100 keys * (2 + 4) B
    # = 1344 + 7200; transient: max(prefill 100 * (4h + 3I = 80) * 2 = 16000, response 2*2*5*100*4 = 8000)
    assert plan.activation_bytes == 1344 + 7200 + 16000
    # weights + one prompt's KV + target and prediction + activations + rows/grad/2 moments (4 * 3 * 8 * 4)
    assert plan.onthefly_peak_bytes == 2704 + 3200 + 1600 + 24544 + 384
    # FLOPs, attention 4 * d * q_heads * layers = 64 per query-key pair:
    # prefill 2*1184*100 + 64 * 100*101/2 = 236800 + 323200; response 2*1184*5 + 64*(5*100 + 15) + scorer
    # 2*4*2*2*5*100 = 11840 + 32960 + 16000; soft (x3 for the backward) 3 * (7104 + 64*306 + 9600)
    assert plan.step_flops == 560000 + 60800 + 3 * 36288
    assert plan.step_seconds == pytest.approx(0.729664)
    assert plan.targets == "prepared"
    # On a CPU the prefill's attention is SDPA's math path: fp32 logits and probabilities, 2 q heads, 100 x 100
    cpu = make_plan(shape, **run, device="cpu")
    assert cpu.activation_bytes == 1344 + 7200 + 16000 + 2 * 2 * 100 * 100 * 4


def test_plan_for_llama_8b_at_4k():
    shape = resolve_shape("meta-llama/Llama-3.1-8B-Instruct")
    assert "built-in table" in shape.source
    assert shape.params == 8_030_261_248
    plan = make_plan(shape, dtype="bfloat16", prompt_tokens=4096, prompts=144)
    assert plan.kv_bytes_per_prompt == 2 * 32 * 8 * 128 * 4096 * 2 == 536_870_912
    assert 77e9 < 144 * plan.kv_bytes_per_prompt < 78e9
    assert plan.targets == "on-the-fly" and plan.onthefly_fits and not plan.prepared_fits


def test_sliding_layers_are_capped(tmp_path):
    shape = ModelShape.from_dict(
        dict(TINY, sliding_window=10, layer_types=["sliding_attention", "full_attention"]), "t", "d"
    )
    assert shape.full_layers == 1 and shape.kv_entries(100) == 100 + 10


def test_cli_dry_run_prints_the_plan_and_checks_flags(tmp_path, capsys):
    from judgeq_cache.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    assert (
        main(["train", "--dry-run", "--model", "tiny", "--config-json", str(path), "--dtype", "bfloat16"])
        == 0
    )
    text = capsys.readouterr().out
    assert "weights (0.00e9 parameters, bfloat16)" in text and "--config-json" in text
    cases = [
        (["train", "--dry-run", "--model", "nobody/unknown-model-xyz"], "--config-json"),
        (["train", "--dry-run", "--config-json", str(tmp_path / "missing.json")], "no such file"),
        (["train", "--corpus-prompts", "3"], "--output"),
        (["train", "-o", str(tmp_path), "--config-json", str(path)], "--dry-run only"),
        (["train", "--dry-run", "--targets", "sometimes"], "invalid choice"),
        (["train", "--dry-run", "--gpu-memory-gb", "0"], "positive"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
