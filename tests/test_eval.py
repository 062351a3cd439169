"""Evaluation harness: tasks, prompts, metrics, runners, report, loaders (tiny random models)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
import transformers

from judgeq_cache import JudgeQAdapter
from judgeq_cache.eval import SETTINGS, SYNTHETIC_TASKS, build_prompt, evaluate, make_samples, read_records
from judgeq_cache.eval import metrics as M
from judgeq_cache.eval.records import budget_label, parse_budget

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + ChatML specials) built in code, no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = CHATML
    return tok


def tiny_model(seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny random llama whose vocabulary fits :func:`tiny_tokenizer` (eos = <|im_end|> = 2)."""
    config = transformers.LlamaConfig(
        vocab_size=264,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ---------------------------------------------------------------------------- tasks and prompts
@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_tasks_are_deterministic_sized_and_contain_their_answers(task, tok):
    a = make_samples(task, 2, 600, tok, seed=3)
    b = make_samples(task, 2, 600, tok, seed=3)
    assert [s.context for s in a] == [s.context for s in b]
    assert a[0].context != a[1].context
    other = make_samples(task, 1, 600, tok, seed=4)[0]
    assert other.context != a[0].context
    for s in a:
        n = len(tok.encode(s.context, add_special_tokens=False))
        assert 0.6 * 600 <= n <= 1.15 * 600, (task, n)
        assert s.answers and s.max_new_tokens >= 8
        if task != "common_words":
            for ans in s.answers:
                assert ans in s.context
        assert s.answer_prefix == "" or not any(ans in s.answer_prefix for ans in s.answers)


def test_distractor_needles_use_other_relations(tok):
    s = make_samples("needle_multikey", 1, 400, tok)[0]
    assert s.context.count("special magic number") == 1
    assert any(rel in s.context for rel in ("secret code word", "hotel room", "home town"))


def test_settings_layouts(tok):
    s = make_samples("needle_single", 1, 200, tok)[0]
    aware = build_prompt(tok, s, "query-aware")
    agnostic = build_prompt(tok, s, "query-agnostic")
    first = build_prompt(tok, s, "question-first")
    assert aware.appended.shape[1] == 0 and first.appended.shape[1] == 0
    assert agnostic.appended.shape[1] > 0
    assert torch.equal(aware.compressed, agnostic.input_ids)
    text_first = tok.decode(first.compressed[0])
    assert text_first.index(s.question) < text_first.index(s.context[:50])
    assert s.question not in tok.decode(agnostic.compressed[0])
    with pytest.raises(ValueError, match="setting"):
        build_prompt(tok, s, "sideways")


# ---------------------------------------------------------------------------- metrics
def test_metrics():
    assert M.string_match_all("The numbers are 12 and 34", ["12", "34", "56"]) == pytest.approx(2 / 3)
    assert M.string_match_part("answer: Paris", ["paris", "Rome"]) == 1.0
    assert M.qa_f1_score("The Eiffel tower", ["eiffel tower"]) == 1.0
    assert 0 < M.qa_f1_score("tall Eiffel tower in Paris", ["eiffel tower"]) < 1
    assert M.rouge_l_score("a b c d", ["a c d"]) == pytest.approx(2 * (3 / 4) * 1 / (3 / 4 + 1))
    assert M.classification_score("Type: Location", ["Location"], all_classes=["Location", "Person"]) == 1.0
    assert M.retrieval_score("Paragraph 3", ["Paragraph 3"]) == 1.0
    assert M.count_score("There are 5 and 7", ["5"]) == 0.5
    assert M.code_sim_score("x = 1\n", ["x = 1"]) == 1.0
    with pytest.raises(ValueError, match="metric"):
        M.score("bleu", "a", ["a"])


def test_budget_parsing():
    assert parse_budget("0.25") == 0.25 and parse_budget("25%") == 0.25 and parse_budget("256") == 256
    assert budget_label(0.1) == "10%" and budget_label(256) == "256"
    with pytest.raises(ValueError):
        parse_budget("1.5")


# ---------------------------------------------------------------------------- runners
METHODS = ["full", "judgeq", "judgeq-shared", "snapkv", "pyramidkv", "h2o", "streamingllm", "random"]


def test_runner_writes_one_line_per_answer_and_resumes(tmp_path, tok, model):
    samples = make_samples("needle_single", 2, 120, tok)
    adapter = JudgeQAdapter.init_for(model, 4)
    out = tmp_path / "r.jsonl"
    kwargs = dict(
        settings=SETTINGS, methods=METHODS, budgets=[0.25, 16], adapter=adapter, output=out, progress=False
    )
    records = list(evaluate(model, tok, samples, **kwargs))
    per_prompt = 1 + (len(METHODS) - 1) * 2
    assert len(records) == len(samples) * len(SETTINGS) * per_prompt
    lines = out.read_text().splitlines()
    assert len(lines) == len(records)
    row = json.loads(lines[1])
    assert {"task", "index", "setting", "method", "budget", "answer", "score", "kv_bytes", "seconds"} <= set(
        row
    )
    by = {(r.setting, r.method, r.budget): r for r in records if r.index == 0}
    full = by[("query-aware", "full", "full")]
    snap = by[("query-aware", "snapkv", "25%")]
    assert snap.kv_bytes < full.kv_bytes and snap.kept_fraction == pytest.approx(0.25, abs=0.02)
    assert by[("query-aware", "snapkv", "16")].kept_fraction == pytest.approx(
        16 / full.prompt_tokens, abs=1e-6
    )
    assert 0.0 <= snap.hit_rate <= 1.0 and full.hit_rate is None
    shared = by[("query-aware", "judgeq-shared", "25%")]
    assert shared.kv_bytes == by[("query-aware", "judgeq", "25%")].kv_bytes and shared.adapter == ""
    assert by[("query-agnostic", "snapkv", "25%")].prompt_tokens < full.prompt_tokens
    # resume: nothing new; a deleted line is recomputed identically
    assert list(evaluate(model, tok, samples, resume=True, **kwargs)) == []
    out.write_text("\n".join(lines[:-1]) + "\n")
    again = list(evaluate(model, tok, samples, resume=True, **kwargs))
    assert len(again) == 1 and again[0].answer == json.loads(lines[-1])["answer"]
    assert len(read_records(out)) == len(records)


def test_query_agnostic_answers_equal_a_dedicated_compressed_prefill(tok, model):
    """The runner's agnostic path == compress the context alone, then generate with the question."""
    from conftest import cache_kwargs

    from judgeq_cache import EvictionCache

    sample = make_samples("needle_single", 1, 100, tok)[0]
    rec = next(
        r
        for r in evaluate(
            model,
            tok,
            [sample],
            settings=["query-agnostic"],
            methods=["snapkv"],
            budgets=[0.25],
            progress=False,
            with_hit_rate=False,
        )
    )
    prompt = build_prompt(tok, sample, "query-agnostic")
    cache = EvictionCache(model, 0.25, "snapkv", window_size=32)
    with torch.no_grad():
        model(input_ids=prompt.compressed, **cache_kwargs(model, cache))
        out = model.generate(
            input_ids=prompt.input_ids,
            max_new_tokens=sample.max_new_tokens,
            do_sample=False,
            **cache_kwargs(model, cache),
        )
    ids = out[0, prompt.input_ids.shape[1] :].tolist()
    if 2 in ids:
        ids = ids[: ids.index(2)]
    assert rec.answer == tok.decode(ids, skip_special_tokens=True).strip()


def test_kvpress_runner_matches_kvpress_hooks(tok, model, tmp_path):
    pytest.importorskip("kvpress")
    from kvpress import ExpectedAttentionPress, KnormPress, SnapKVPress, TOVAPress
    from transformers import DynamicCache

    from judgeq_cache.eval.kvpress_runner import KVPressPrefill, evaluate_kvpress, greedy_decode, stack_caches

    ids = torch.randint(3, 260, (1, 150), generator=torch.Generator().manual_seed(0))
    shared = KVPressPrefill(model, ids)
    presses = [SnapKVPress(compression_ratio=0.5), TOVAPress(compression_ratio=0.5), KnormPress(0.5)]
    question = torch.tensor([[5, 6, 7]])
    together = greedy_decode(
        model, stack_caches([shared.compressed(p) for p in presses]), 150, question, shared.logits, 8, {2}
    )
    for press, row in zip(presses, together):
        alone = greedy_decode(model, shared.compressed(press), 150, question, shared.logits, 8, {2})[0]
        assert torch.equal(row, alone)
    for press in (
        SnapKVPress(compression_ratio=0.5, window_size=16),
        KnormPress(compression_ratio=0.75),
        TOVAPress(compression_ratio=0.5),
        ExpectedAttentionPress(compression_ratio=0.5),
    ):
        got = shared.compressed(press)
        cache = DynamicCache()
        with torch.no_grad(), press(model):
            model(input_ids=ids, past_key_values=cache)
        for a, b in zip(got.layers, cache.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    samples = make_samples("needle_single", 1, 120, tok)
    out = tmp_path / "kv.jsonl"

    def run(resume=False):
        return list(
            evaluate_kvpress(
                model,
                tok,
                samples,
                settings=SETTINGS,
                presses=["kvpress-snapkv", "kvpress-knorm"],
                budgets=[0.25],
                output=out,
                resume=resume,
                progress=False,
            )
        )

    recs = run()
    assert len(recs) == 6 and all(r.source == "kvpress" for r in recs)
    assert all(r.kept_fraction == pytest.approx(0.25, abs=0.02) for r in recs)
    assert run(resume=True) == []


def test_adakv_runs_as_a_dedicated_masking_press_and_leaves_no_mask(tok, model, tmp_path):
    """AdaKV spends the layer's budget unevenly over heads (kvpress masks instead of dropping): its
    reported kept fraction is the unmasked share, and no mask outlives the answer."""
    pytest.importorskip("kvpress")
    from judgeq_cache.eval.kvpress_runner import _attention_modules, evaluate_kvpress

    samples = make_samples("needle_single", 1, 120, tok)
    recs = list(
        evaluate_kvpress(
            model,
            tok,
            samples,
            settings=["query-aware"],
            presses=["kvpress-adakv-snapkv"],
            budgets=[0.25],
            output=tmp_path / "adakv.jsonl",
            progress=False,
        )
    )
    assert [r.method for r in recs] == ["kvpress-adakv-snapkv"]
    assert recs[0].kept_fraction == pytest.approx(0.25, abs=0.02)
    assert all(getattr(m, "masked_key_indices", None) is None for m in _attention_modules(model))


# ---------------------------------------------------------------------------- report and plot
def _fake_records():
    from judgeq_cache.eval.records import Record

    rows = []
    for task, full_score in (("needle_single", 1.0), ("kv_retrieval", 0.0)):
        for i in range(2):
            for setting in SETTINGS:
                base = dict(
                    task=task, index=i, setting=setting, references=["1"], prompt_tokens=100, answer="1"
                )
                rows.append(
                    Record(
                        **base,
                        method="full",
                        budget="full",
                        source="judgeq_cache",
                        score=full_score,
                        kept_fraction=1.0,
                        kv_bytes=2**20,
                        seconds=1.0,
                    )
                )
                for method, source in (("judgeq", "judgeq_cache"), ("kvpress-snapkv", "kvpress")):
                    for b, f in (("25%", 0.25), ("10%", 0.1)):
                        rows.append(
                            Record(
                                **base,
                                method=method,
                                budget=b,
                                source=source,
                                score=float(i),
                                kept_fraction=f,
                                kv_bytes=int(f * 2**20),
                                seconds=1.0,
                                hit_rate=0.5 if source != "kvpress" else None,
                            )
                        )
    return rows


def test_report_and_plot(tmp_path):
    from judgeq_cache.eval.plots import plot_accuracy
    from judgeq_cache.eval.report import markdown_report

    records = _fake_records()
    png = plot_accuracy(records, str(tmp_path / "acc.png"))
    assert (tmp_path / "acc.png").stat().st_size > 1000
    text = markdown_report(records, command="judgeq eval run ...", plot=png)
    assert "kv_retrieval 0% (excluded)" in text and "needle_single 100%" in text
    assert "| judgeq | 50 (2) | 50 (2) |" in text and "| kvpress-snapkv | 50 (2) | 50 (2) |" in text
    assert "## question-first" in text and "judgeq eval run ..." in text and "acc.png" in text
    assert "| method | query-aware | query-agnostic | question-first |" in text
    assert "| judgeq | 50 / 50 | 50 / 50 | 50 / 50 |" in text


def test_eval_cli_report(tmp_path):
    from dataclasses import asdict

    from judgeq_cache.cli import main

    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(asdict(r)) for r in _fake_records()) + "\n")
    md = tmp_path / "r.md"
    assert main(["eval", "report", str(path), "--markdown", str(md), "--plot", str(tmp_path / "p.png")]) == 0
    assert "## query-agnostic" in md.read_text() and (tmp_path / "p.png").exists()
    args = ["eval", "report", str(path), "--markdown", str(md), "--settings", "question-first"]
    assert main([*args, "--methods", "full,judgeq"]) == 0
    text = md.read_text()
    assert "## question-first" in text and "## query-agnostic" not in text and "kvpress-snapkv" not in text
    assert main([*args, "--methods", "tova"]) == 2


# ---------------------------------------------------------------------------- benchmark loaders
def test_longbench_loader_on_local_jsonl(tmp_path, tok, model):
    from judgeq_cache.eval.longbench import load_longbench

    rows = [
        {
            "input": "Who wrote it?",
            "context": "It was written by Ishmael. " * 20,
            "answers": ["Ishmael"],
            "length": 120,
            "all_classes": None,
            "_id": "a",
        },
        {
            "input": "Where?",
            "context": "At sea. " * 20,
            "answers": ["at sea"],
            "length": 40,
            "all_classes": None,
            "_id": "b",
        },
    ]
    (tmp_path / "hotpotqa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "trec.jsonl").write_text(
        json.dumps(
            {
                "input": "Q: what city?",
                "context": "examples",
                "answers": ["Location"],
                "all_classes": ["Location", "Person"],
                "_id": "c",
            }
        )
    )
    samples = load_longbench("hotpotqa", data_dir=tmp_path, limit=2)
    assert len(samples) == 2 and samples[0].metric == "qa_f1" and samples[0].max_new_tokens == 32
    assert samples[0].instruction.startswith("Answer the question based on the given passages")
    assert "Question: Who wrote it?" in samples[0].question and samples[0].context == rows[0]["context"]
    trec = load_longbench("trec", data_dir=tmp_path)[0]
    assert trec.meta["metric_kwargs"] == {"all_classes": ["Location", "Person"]}
    recs = list(
        evaluate(
            model,
            tok,
            samples[:1],
            settings=["query-aware"],
            methods=["full", "snapkv"],
            budgets=[0.5],
            progress=False,
        )
    )
    assert len(recs) == 2 and all(0 <= r.score <= 1 for r in recs)
    with pytest.raises(ValueError, match="LongBench"):
        load_longbench("nope", data_dir=tmp_path)


def test_ruler_loader_on_local_jsonl(tmp_path):
    from judgeq_cache.eval.ruler import load_ruler

    prompt = (
        "Some special magic numbers are hidden within the following text.\nThe grass is green. One of the special "
        "magic numbers for long-context is: 123456.\nThe sky is blue.\n\nWhat is the special magic number for "
        "long-context mentioned in the provided text?"
    )
    row = {
        "index": 7,
        "input": prompt,
        "outputs": ["123456"],
        "length": 60,
        "answer_prefix": " The special magic number is",
    }
    (tmp_path / "niah_single_1").mkdir()
    (tmp_path / "niah_single_1" / "validation.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "qa_1.jsonl").write_text(json.dumps(dict(row, outputs=["x", "123456"])) + "\n")
    s = load_ruler("niah_single_1", data_dir=tmp_path)[0]
    assert (
        s.index == 7 and s.question.startswith("What is the special magic number") and "123456" in s.context
    )
    assert s.metric == "string_match_all" and M.score(s.metric, "It is 123456.", s.answers) == 1.0
    assert load_ruler("qa_1", data_dir=tmp_path)[0].metric == "string_match_part"
    with pytest.raises(ValueError, match="prepare.py"):
        load_ruler("niah_single_1")


def test_untrained_judgeq_rows_are_reported_apart_from_trained_ones(tmp_path):
    from dataclasses import asdict, replace

    from judgeq_cache.eval.report import markdown_report

    rows = [r for r in _fake_records() if r.method in ("full", "judgeq")]
    rows = [replace(r, adapter="untrained adapter") if r.method == "judgeq" else r for r in rows]
    trained = [replace(r, adapter="bundled", score=1.0) for r in rows if r.method == "judgeq"]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps(asdict(r)) for r in rows) + "\n")
    b.write_text("\n".join(json.dumps(asdict(r)) for r in trained) + "\n")
    records = read_records(a, b)
    assert len(records) == len(rows) + len(trained)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b.read_bytes()))
    assert read_records(a, tmp_path / "b.jsonl.gz") == records
    text = markdown_report(records)
    assert "| judgeq | 100 (2) |" in text and "| judgeq-untrained | 50 (2) |" in text


def test_report_breaks_accuracy_down_by_task():
    from dataclasses import replace

    from judgeq_cache.eval.report import markdown_report

    records = _fake_records()
    records += [replace(r, task="needle_multikey", score=1.0) for r in records if r.task == "needle_single"]
    text = markdown_report(records)
    assert "By task (accuracy % at 25% / 10% kept" in text
    assert "| method | needle_multikey | needle_single |" in text
    assert "| judgeq | 100 / 100 | 50 / 50 |" in text and "| full | 100 | 100 |" in text
    assert "kv_retrieval |" not in text  # excluded task (full cache fails it)


def test_paired_report_keeps_only_prompts_every_method_answered():
    from judgeq_cache.eval.report import markdown_report, paired

    records = _fake_records()
    records = [r for r in records if not (r.method == "kvpress-snapkv" and r.index == 0)]
    kept = paired(records)
    assert {r.index for r in kept} == {1}
    assert "| judgeq | 100 (1) | 100 (1) |" in markdown_report(records, paired_only=True)


def test_report_options_group_the_report_parameters():
    """``ReportOptions`` and its fields as keywords give the same report; both at once is an error."""
    from judgeq_cache.eval.report import ReportOptions, markdown_report

    records = _fake_records()
    options = ReportOptions(title="T", command="judgeq eval run", plot="x/p.png", paired_only=True)
    text = markdown_report(records, options)
    assert text == markdown_report(
        records, title="T", command="judgeq eval run", plot="x/p.png", paired_only=True
    )
    assert text.startswith("# T\n") and "![accuracy vs kept fraction](p.png)" in text and "Paired:" in text
    with pytest.raises(TypeError, match="not both"):
        markdown_report(records, options, title="U")


def _scored(method: str, scores: list[float], setting: str = "query-agnostic", budget: str = "25%"):
    from judgeq_cache.eval.records import Record

    return [
        Record(
            task="needle_single",
            index=i,
            setting=setting,
            method=method,
            budget="full" if method == "full" else budget,
            source="judgeq_cache",
            answer="",
            references=["1"],
            score=s,
            kept_fraction=0.25,
            kv_bytes=1,
            seconds=1.0,
            prompt_tokens=100,
        )
        for i, s in enumerate(scores)
    ]


def test_paired_difference_counts_and_matches_the_normal_approximation():
    from judgeq_cache.eval.stats import paired_difference

    # 400 prompts: a-only right on 60, b-only right on 20, ties elsewhere -> +10 points
    a = [1.0] * 60 + [0.0] * 20 + [1.0] * 100 + [0.0] * 220
    b = [0.0] * 60 + [1.0] * 20 + [1.0] * 100 + [0.0] * 220
    records = _scored("judgeq", a) + _scored("snapkv", b) + _scored("snapkv", b, setting="query-aware")
    d = paired_difference(records, "judgeq", "snapkv", "query-agnostic", "25%", resamples=4000)
    assert (d.a_only, d.b_only, d.n) == (60, 20, 400) and d.diff == pytest.approx(0.10)
    delta = torch.tensor(a) - torch.tensor(b)
    se = float(delta.std(unbiased=False)) / 400**0.5  # independent reference: normal interval
    assert d.low == pytest.approx(0.10 - 1.96 * se, abs=0.01)
    assert d.high == pytest.approx(0.10 + 1.96 * se, abs=0.01)
    assert paired_difference(records, "judgeq", "snapkv", "query-agnostic", "25%") == paired_difference(
        records, "judgeq", "snapkv", "query-agnostic", "25%"
    )  # seeded
    same = paired_difference(records, "snapkv", "snapkv", "query-agnostic", "25%")
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)
    assert paired_difference(records, "judgeq", "snapkv", "question-first", "25%") is None
    # the full cache has one budget and is matched at every budget
    full = paired_difference(
        records + _scored("full", [1.0] * 400), "full", "judgeq", "query-agnostic", "25%"
    )
    assert full.diff == pytest.approx(1 - 160 / 400)


def test_report_compare_table_and_cli_errors(tmp_path, caplog):
    from dataclasses import asdict

    from judgeq_cache.cli import main
    from judgeq_cache.eval.report import markdown_report
    from judgeq_cache.eval.stats import parse_pairs

    records = _scored("judgeq", [1.0, 1.0, 0.0, 1.0]) + _scored("snapkv", [0.0, 1.0, 0.0, 0.0])
    text = markdown_report(records, compare=[("judgeq", "snapkv"), ("judgeq", "tova")])
    assert "## Paired comparisons" in text
    row = next(line for line in text.splitlines() if line.startswith("| judgeq − snapkv"))
    assert "| query-agnostic | 25% | +50 |" in row and "| 2 / 0 | 4 |" in row
    assert "no prompt answered by both" in caplog.text and "judgeq − tova" not in text
    assert parse_pairs(" judgeq:snapkv, a:b ,") == [("judgeq", "snapkv"), ("a", "b")]
    with pytest.raises(ValueError, match="judgeq:snapkv"):
        parse_pairs("judgeq-snapkv")
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(asdict(r)) for r in records) + "\n")
    with pytest.raises(SystemExit) as exit_info:  # an argparse error, checked before anything runs
        main(["eval", "report", str(path), "--compare", "judgeq"])
    assert exit_info.value.code == 2
    md = tmp_path / "r.md"
    assert main(["eval", "report", str(path), "--compare", "judgeq:snapkv", "--markdown", str(md)]) == 0
    assert "judgeq − snapkv" in md.read_text()


def test_untrained_adapter_on_request_is_the_training_starting_point(model):
    from judgeq_cache.eval.loading import load_adapter
    from judgeq_cache.eval.records import label_for

    adapter, label = load_adapter(model, "untrained")
    assert torch.equal(adapter.rows, JudgeQAdapter.init_for(model).rows)
    assert label_for("judgeq-shared", label) == "judgeq-untrained-shared"


def test_failure_modes_tell_garbled_from_lost_needles():
    from dataclasses import replace

    from judgeq_cache.eval.failures import classify_answer, failure_modes
    from judgeq_cache.eval.report import markdown_report

    assert classify_answer("7288810.", "7288810", 1.0) == "right"
    assert classify_answer("The number is 728.", "7288810", 0.0) == "garbled"
    assert classify_answer("7288881000", "7288810", 0.0) == "garbled"
    assert classify_answer("11. It is a number", "7288810", 0.0) == "lost"
    assert classify_answer("no idea", "7288810", 0.0) == "lost"
    records = _scored("judgeq", [1.0, 0.0, 0.0, 0.0])
    records = [replace(r, references=["7288810"]) for r in records]
    records[1] = replace(records[1], answer="72888")
    records[2] = replace(records[2], answer="4411")
    records.append(replace(records[0], task="needle_multivalue", score=0.0))  # not a single-answer task
    modes = failure_modes(records)
    assert modes == {("judgeq", "25%"): {"right": 1, "garbled": 1, "lost": 2}}
    text = markdown_report(records)
    assert "## Failure modes (needle_single, needle_multikey)" in text and "| judgeq | 25 / 25 / 50 |" in text
    assert "## Failure modes" not in markdown_report([replace(r, task="kv_retrieval") for r in records])
