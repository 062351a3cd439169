"""LongBench (Bai et al., 2023) loader with its official prompts, answer lengths and metrics.

``load_longbench("qasper")`` reads ``<data_dir>/qasper.jsonl`` (LongBench's own JSONL format: fields
``input``, ``context``, ``answers``, ``all_classes``, ``length``, ``_id``) or, without ``data_dir``,
the Hub dataset through ``datasets`` (``THUDM/LongBench``, config = dataset name, split ``test``).
Each row becomes a :class:`~judgeq_cache.eval.tasks.Sample` whose instruction/context/question split
follows the official prompt template, so the three settings apply.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tasks import Sample

__all__ = ["DATASETS", "load_longbench", "longbench_sample"]

#: dataset -> (official prompt template, max new tokens, metric). Templates from LongBench's
#: config/dataset2prompt.json (English tasks).
DATASETS: dict[str, tuple[str, int, str]] = {
    "narrativeqa": (
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
        "{context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if "
        "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
        128,
        "qa_f1",
    ),
    "qasper": (
        "You are given a scientific article and a question. Answer the question as concisely as you can, using a "
        "single phrase or sentence if possible. If the question cannot be answered based on the information in the "
        'article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". '
        "Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as "
        "concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered "
        'based on the information in the article, write "unanswerable". If the question is a yes/no question, answer '
        '"yes", "no", or "unanswerable". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:',
        128,
        "qa_f1",
    ),
    "multifieldqa_en": (
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on "
        "the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        64,
        "qa_f1",
    ),
    "hotpotqa": (
        "Answer the question based on the given passages. Only give me the answer and do not output any other "
        "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
        "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        32,
        "qa_f1",
    ),
    "2wikimqa": (
        "Answer the question based on the given passages. Only give me the answer and do not output any other "
        "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
        "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        32,
        "qa_f1",
    ),
    "musique": (
        "Answer the question based on the given passages. Only give me the answer and do not output any other "
        "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
        "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        32,
        "qa_f1",
    ),
    "gov_report": (
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
        "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
        512,
        "rouge_l",
    ),
    "qmsum": (
        "You are given a meeting transcript and a query containing a question or instruction. Answer the query in "
        "one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
        "transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
        512,
        "rouge_l",
    ),
    "multi_news": (
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, "
        "write a one-page summary of all the news.\n\nSummary:",
        512,
        "rouge_l",
    ),
    "trec": (
        "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
        64,
        "classification",
    ),
    "triviaqa": (
        "Answer the question based on the given passage. Only give me the answer and do not output any other words. "
        "The following are some examples.\n\n{context}\n\n{input}",
        32,
        "qa_f1",
    ),
    "samsum": (
        "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
        128,
        "rouge_l",
    ),
    "passage_count": (
        "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully "
        "read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
        "other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final "
        "count of unique paragraphs after removing duplicates. The output format should only contain the number, "
        "such as 1, 2, 3, and so on.\n\nThe final answer is: ",
        32,
        "count",
    ),
    "passage_retrieval_en": (
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
        "abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of "
        'the paragraph that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", '
        "etc.\n\nThe answer is: ",
        32,
        "retrieval",
    ),
    "lcc": ("Please complete the code given below. \n{context}Next line of code:\n", 64, "code_sim"),
    "repobench-p": (
        "Please complete the code given below. \n{context}{input}Next line of code:\n",
        64,
        "code_sim",
    ),
}


def longbench_sample(dataset: str, row: dict, index: int) -> Sample:
    """One LongBench row as a :class:`Sample` (instruction = template before ``{context}``)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown LongBench dataset {dataset!r}; choose from {sorted(DATASETS)}")
    template, max_new, metric = DATASETS[dataset]
    before, after = template.split("{context}")
    question = row.get("input") or ""
    answers = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
    meta = {"_id": row.get("_id", ""), "length": row.get("length")}
    if metric == "classification":
        meta["metric_kwargs"] = {"all_classes": list(row.get("all_classes") or [])}
    return Sample(
        task=f"longbench:{dataset}",
        index=index,
        instruction=before.replace("{input}", question).rstrip("\n"),
        context=row["context"],
        question=after.replace("{input}", question).strip("\n"),
        answers=[str(a) for a in answers],
        metric=metric,
        max_new_tokens=max_new,
        meta=meta,
    )


def load_longbench(
    dataset: str, *, data_dir: str | None = None, limit: int | None = None, hub_id: str = "THUDM/LongBench"
) -> list[Sample]:
    """Samples of LongBench ``dataset`` from ``<data_dir>/<dataset>.jsonl`` or the Hub."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown LongBench dataset {dataset!r}; choose from {sorted(DATASETS)}")
    if data_dir is not None:
        path = Path(data_dir) / f"{dataset}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        import datasets

        rows = list(datasets.load_dataset(hub_id, dataset, split="test"))
    rows = rows[:limit] if limit else rows
    return [longbench_sample(dataset, row, i) for i, row in enumerate(rows)]
