"""Training prompts for Judge Q adapters: ShareGPT-style files, ``datasets`` datasets, bundled text.

A prompt is a chat (``messages``: ``[{"role": ..., "content": ...}]``) that ends with a user turn; the
frozen model answers it itself (see :mod:`judgeq_cache.training`). Sources:

* :func:`load_prompts`: a local JSON / JSONL file (ShareGPT ``{"conversations": [{"from": "human",
  "value": ...}, ...]}``, OpenAI-style ``{"messages": [{"role": ..., "content": ...}]}`` or a plain
  text field such as ``"text"``, ``"prompt"``, ``"instruction"``, ``"question"``), a directory saved
  with ``datasets.Dataset.save_to_disk``, or any ``datasets.load_dataset`` name (Hub access needed).
* :func:`corpus_prompts`: long-context prompts over excerpts of the bundled public-domain books
  (questions, summaries, continuations; the instruction before or after the excerpt).

:func:`encode_prompt` applies the tokenizer's chat template and middle-truncates prompts longer than
the model's context, with a warning.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Prompt", "corpus_prompts", "encode_prompt", "load_prompts", "prompts_from_records"]

_TEXT_FIELDS = ("text", "prompt", "instruction", "question", "input", "content")
_CHAT_FIELDS = ("conversations", "messages", "conversation", "dialog", "chat")
_ROLE = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass
class Prompt:
    """One training prompt: a chat ending with a user turn."""

    id: str
    messages: list[dict[str, str]]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- files and datasets


def _chat_from_record(record: dict[str, Any], field_name: str | None) -> list[dict[str, str]] | None:
    """The messages of ``record`` up to its last user turn (None if it has none)."""
    names = [field_name] if field_name else [*_CHAT_FIELDS, *_TEXT_FIELDS]
    for name in names:
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            return [{"role": "user", "content": value}] if value.strip() else None
        if isinstance(value, list):
            messages = []
            for turn in value:
                if not isinstance(turn, dict):
                    continue
                role = _ROLE.get(str(turn.get("from", turn.get("role", ""))).lower())
                content = turn.get("value", turn.get("content"))
                if role is None or not isinstance(content, str):
                    continue
                messages.append({"role": role, "content": content})
            last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
            if last_user is None or not messages[last_user]["content"].strip():
                return None
            # The model answers the last user turn itself: drop the dataset's answer.
            return messages[: last_user + 1]
    return None


def prompts_from_records(
    records: list[dict[str, Any]] | Any, source: str, field_name: str | None = None
) -> list[Prompt]:
    """Prompts from dict records (a list or a ``datasets.Dataset``); records without a usable user turn are
    skipped (counted in one warning)."""
    prompts, skipped = [], 0
    for i, record in enumerate(records):
        messages = _chat_from_record(record, field_name) if isinstance(record, dict) else None
        if not messages:
            skipped += 1
            continue
        pid = str(record.get("id", f"{Path(source).name}:{i}"))
        prompts.append(Prompt(pid, messages, source))
    if skipped:
        logger.warning("%s: skipped %d records without a usable user turn", source, skipped)
    return prompts


def _read_json_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl" or (text.lstrip()[:1] == "{" and "\n{" in text.strip()):
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: invalid JSON line ({err})") from err
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if isinstance(data, dict):
        for key in ("data", "train", "records", "examples"):
            if isinstance(data.get(key), list):
                return data[key]
        return [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records, got {type(data).__name__}")
    return data


def load_prompts(
    source: str | Path,
    *,
    split: str = "train",
    field: str | None = None,
    limit: int | None = None,
    **load_dataset_kwargs: Any,
) -> list[Prompt]:
    """Prompts from a JSON/JSONL file, a ``save_to_disk`` directory or a ``datasets`` name.

    ``field`` names the conversation or text column (default: the first of ``conversations``,
    ``messages``, ``text``, ``prompt``, ``instruction``, ``question``... that a record has).
    Raises ``ValueError`` if no prompt could be read.
    """
    path = Path(source).expanduser()
    name = str(source)
    if path.is_file():
        records: Any = _read_json_records(path)
    else:
        try:
            import datasets
        except ImportError as err:
            raise ImportError(f"loading {name!r} needs the 'datasets' package: pip install datasets") from err
        if path.is_dir():
            records = datasets.load_from_disk(str(path))
            if isinstance(records, datasets.DatasetDict):
                records = records[split]
        else:
            records = datasets.load_dataset(name, split=split, **load_dataset_kwargs)
    if limit is not None:
        records = (
            records[:limit] if isinstance(records, list) else records.select(range(min(limit, len(records))))
        )
    prompts = prompts_from_records(records, name, field)
    if not prompts:
        raise ValueError(
            f"{name!r} holds no usable prompts (empty, or no conversation/text field: {field!r})"
        )
    return prompts


# --------------------------------------------------------------------------- bundled long-context text

#: Instructions over an excerpt. ``{excerpt}`` marks where the text goes; ``before`` puts it first.
TASKS: tuple[tuple[str, str], ...] = (
    ("question", "Who are the people mentioned in the text above, and what does each of them do?"),
    ("question", "What is the main event described in the passage above? Answer with details from the text."),
    ("question", "Which places, objects or animals does the text above mention? List them."),
    ("question", "What is the tone of the passage above, and which words show it?"),
    ("question", "Quote the most important sentence of the text above and explain why it matters."),
    ("summary", "Summarize the text above in three sentences."),
    ("summary", "Write a short summary of the passage above for someone who has not read it."),
    ("continuation", "Continue the text above with the next paragraph, in the same style."),
    ("question_first", "Read the following text, then answer: what happens in it, and who is involved?"),
    ("summary_first", "Summarize the following text in a few sentences."),
)


def corpus_prompts(
    tokenizer: Any,
    num_prompts: int,
    *,
    corpora: tuple[str, ...] = ("moby_dick", "brown"),
    min_tokens: int = 1000,
    max_tokens: int = 3000,
    seed: int = 0,
    id_prefix: str = "corpus",
) -> list[Prompt]:
    """``num_prompts`` prompts over excerpts of ``min_tokens``..``max_tokens`` tokens of bundled text.

    Excerpts are runs of consecutive paragraphs from a random start (alternating corpora); the
    instruction (question, summary or continuation) goes after the excerpt, or before it for the
    ``*_first`` tasks. Deterministic for a given ``seed``.
    """
    from .data import corpus_paragraphs

    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    rng = random.Random(seed)
    paragraphs = {name: corpus_paragraphs(name) for name in corpora}
    prompts = []
    for i in range(num_prompts):
        name = corpora[i % len(corpora)]
        paras = paragraphs[name]
        target = rng.randint(min_tokens, max_tokens)
        start = rng.randrange(len(paras))
        chosen, count = [], 0
        j = start
        while count < target and len(chosen) < len(paras):
            para = paras[j % len(paras)]
            n = len(tokenizer(para, add_special_tokens=False)["input_ids"])
            if count + n > target and chosen:
                break
            while n > target and len(para.split()) > 1:  # one paragraph longer than the excerpt: trim it
                words = para.split()
                para = " ".join(words[: max(1, int(len(words) * target / n) - 1)])
                n = len(tokenizer(para, add_special_tokens=False)["input_ids"])
            chosen.append(para)
            count += n
            j += 1
        excerpt = "\n\n".join(chosen)
        kind, instruction = TASKS[rng.randrange(len(TASKS))]
        content = f"{instruction}\n\n{excerpt}" if kind.endswith("_first") else f"{excerpt}\n\n{instruction}"
        prompts.append(
            Prompt(
                f"{id_prefix}-{seed}-{i}",
                [{"role": "user", "content": content}],
                source=f"judgeq_cache.data:{name}",
                meta={"task": kind, "corpus": name, "start_paragraph": start, "excerpt_tokens": count},
            )
        )
    return prompts


# --------------------------------------------------------------------------- tokenization


def encode_prompt(tokenizer: Any, prompt: Prompt, max_length: int | None = None) -> list[int]:
    """Token ids of ``prompt`` in the tokenizer's chat template, ready for the assistant to answer.

    Prompts longer than ``max_length`` keep their first and last ``max_length / 2`` tokens (middle
    truncation, as LongBench does) and log a warning. Tokenizers without a chat template get the
    user turns joined by blank lines.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in some versions
            ids = ids["input_ids"]
    else:
        text = "\n\n".join(m["content"] for m in prompt.messages)
        ids = tokenizer(text)["input_ids"]
    ids = list(ids)
    if max_length is not None and len(ids) > max_length:
        head = max_length // 2
        tail = max_length - head
        logger.warning(
            "prompt %s has %d tokens, more than the %d allowed: keeping the first %d and last %d",
            prompt.id,
            len(ids),
            max_length,
            head,
            tail,
        )
        ids = ids[:head] + ids[len(ids) - tail :]
    return ids
