"""Data loading, cleaning, tokenising, masking and packing (no Ray; a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtrain.trainer import data, encode, tiny
from llmtrain.trainer.config import DatasetSpec
from llmtrain.trainer.stages import sft

from .helpers import Assets, stage_config

pytestmark = pytest.mark.trainer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tokenizer(assets: Assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(assets.tokenizer))


def test_sources_jsonl_csv_parquet_text_and_save_to_disk(tmp_path: Path) -> None:
    import datasets

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]
    sources = {"jsonl": write_jsonl(tmp_path / "d.jsonl", rows)}
    ds = datasets.Dataset.from_list(rows)
    ds.to_csv(str(tmp_path / "d.csv"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    sources |= {"csv": tmp_path / "d.csv", "parquet": tmp_path / "d.parquet"}
    both = datasets.DatasetDict({"train": ds, "test": ds.select(range(3))})
    both.save_to_disk(str(tmp_path / "dd"))
    for kind, path in sources.items():
        spec = DatasetSpec(source=str(path), format="prompt-completion", eval_fraction=0)
        train, evaluation, report = data.load_splits(spec, seed=0)
        assert len(train) == 10 and evaluation is None, kind
    spec = DatasetSpec(source=str(tmp_path / "dd"), format="prompt-completion", eval_split="test")
    train, evaluation, report = data.load_splits(spec, seed=0)
    assert (len(train), len(evaluation)) == (10, 3)
    (tmp_path / "t.txt").write_text("one line\nanother line\n")
    train, _, _ = data.load_splits(DatasetSpec(source=str(tmp_path / "t.txt"), format="text",
                                               eval_fraction=0), seed=0)  # fmt: skip
    assert train["text"] == ["one line", "another line"]


def test_cleaning_counts_every_reason(tmp_path: Path) -> None:
    rows = [
        {"prompt": "what  is\t1?", "completion": "one"},
        {"prompt": "what is 1?", "completion": " one "},  # same after normalising
        {"prompt": "", "completion": "x"},  # empty
        {"prompt": "p", "completion": "   "},  # empty after stripping
        {"prompt": "what is 2?", "completion": "two"},
        {"prompt": "what is 2?", "completion": "two"},  # exact duplicate
    ]
    spec = DatasetSpec(
        source=str(write_jsonl(tmp_path / "d.jsonl", rows)),
        format="prompt-completion",
        eval_fraction=0,
        preprocessing={"normalizeWhitespace": True},
    )
    train, _, report = data.load_splits(spec, seed=0)
    rep = report.splits["train"]
    assert (rep.loaded, rep.kept, dict(rep.dropped)) == (6, 2, {"empty": 2, "duplicate": 2})
    assert train["prompt"] == ["what is 1?", "what is 2?"]
    assert "dropped duplicate=2, empty=2" in report.summary()


def test_missing_column_and_empty_data_name_the_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "completion": "a"}])
    spec = DatasetSpec(source=str(path), format="prompt-completion")
    with pytest.raises(data.DataError, match=r"d\.jsonl.*missing column.*'prompt'.*question"):
        data.load_splits(spec, seed=0)
    spec = DatasetSpec(source=str(path), format="prompt-completion", columns={"prompt": "question"})
    assert len(data.load_splits(spec, seed=0)[0]) == 1  # mapped column names work
    (tmp_path / "empty.csv").write_text("prompt,completion\n")
    with pytest.raises(data.DataError, match=r"empty\.csv.*empty"):
        empty = DatasetSpec(source=str(tmp_path / "empty.csv"), format="prompt-completion")
        data.load_splits(empty, 0)
    with pytest.raises(data.DataError, match="no such file"):
        data.load_splits(DatasetSpec(source=str(tmp_path / "nope.jsonl"), format="text"), 0)


def test_overlong_samples_are_truncated_or_dropped(assets: Assets, tmp_path: Path) -> None:
    rows = [
        {"prompt": "question: hi", "completion": "the cat " * 40},  # long answer
        {"prompt": "question: " + "the dog " * 40, "completion": "yes"},  # long question
        {"prompt": "question: hi", "completion": "hello"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    tok = tokenizer(assets)
    for drop in (False, True):
        spec = DatasetSpec(source=str(path), format="prompt-completion", eval_fraction=0,
                           preprocessing={"dropOverlong": drop})  # fmt: skip
        train, _, report = data.load_splits(spec, seed=0)
        rep = report.splits["train"]
        ds = encode.tokenize(train, spec, tok, max_len=32, report=rep)
        assert max(ds["length"]) <= 32
        if drop:
            assert (rep.kept, rep.truncated, rep.dropped["overlong"]) == (1, 0, 2)
        else:
            # Truncation keeps the start; the long question loses its whole answer, so it has
            # nothing to learn from and is dropped rather than trained on as all-masked.
            assert (rep.kept, rep.truncated, rep.dropped["no_target_tokens"]) == (2, 1, 1)


def test_messages_loss_is_on_assistant_tokens_only(assets: Assets, tmp_path: Path) -> None:
    cfg = stage_config(assets, tmp_path / "sft", "sft",
                       {"source": str(assets.chats), "format": "messages", "evalFraction": 0},
                       hyperparameters={"maxSeqLength": 256})  # fmt: skip
    tok = tokenizer(assets)
    train, _, _ = sft.prepare_data(cfg, tok)
    raw = data.load_splits(cfg.stage.dataset, seed=42)[0]
    assert len(train) == len(raw) > 100
    for row, sample in zip(train, raw, strict=True):
        labels = row["labels"]
        assert len(labels) == len(row["input_ids"])
        targets = [t for t in labels if t != encode.IGNORE]
        replies = [m["content"] for m in sample["messages"] if m["role"] == "assistant"]
        # Exactly the assistant replies (each closed by EOS) carry loss; every system/user
        # token and the role markers are masked.
        assert tok.decode(targets) == "".join(r + tok.eos_token for r in replies)
        masked = tok.decode([t for t, lab in zip(row["input_ids"], labels, strict=True)
                             if lab == encode.IGNORE])  # fmt: skip
        for m in sample["messages"]:
            if m["role"] != "assistant":
                assert m["content"] in masked


def test_template_without_generation_marks_is_an_error(assets: Assets, tmp_path: Path) -> None:
    # Like many real tokenizers' templates: nothing marks the assistant's tokens.
    plain = tiny.CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    tiny.build_tokenizer(tmp_path / "tok", assets.corpus, chat_template=plain)
    cfg = stage_config(assets, tmp_path / "sft", "sft",
                       {"source": str(assets.chats), "format": "messages"})  # fmt: skip
    cfg.model.tokenizer.source = str(tmp_path / "tok")
    from llmtrain.trainer import models

    with pytest.raises(data.DataError, match=r"chats\.jsonl.*cannot mark assistant tokens"):
        sft.prepare_data(cfg, models.load_tokenizer(cfg))


def test_packing_fills_rows_and_matches_unpacked_loss(assets: Assets, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    cfg = stage_config(assets, tmp_path / "sft", "sft",
                       {"source": str(assets.instructions), "format": "prompt-completion",
                        "evalFraction": 0}, hyperparameters={"maxSeqLength": 128})  # fmt: skip
    tok = tokenizer(assets)
    unpacked, _, _ = sft.prepare_data(cfg, tok)
    packed = encode.pack(unpacked, 128)
    assert sum(packed["length"]) == sum(unpacked["length"])
    assert len(packed) < len(unpacked) / 3  # rows hold several samples
    assert max(packed["length"]) <= 128
    row = packed[0]
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
    assert len(starts) > 1 and all(row["labels"][i] == encode.IGNORE for i in starts)

    # The packed rows' loss equals the unpacked samples' loss: no attention across samples.
    model = AutoModelForCausalLM.from_pretrained(str(assets.model)).eval()
    loss_sum = torch.nn.CrossEntropyLoss(reduction="sum")
    batch = encode.Collator(tok.pad_token_id)([packed[0], packed[1]])
    with torch.no_grad():
        # use_cache=False as in training (the Trainer sets it): with a KV cache transformers
        # cannot tell packed rows from a continuation and would attend across samples.
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        labels = batch["labels"]
        packed_sum = float(loss_sum(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()))
        single_sum = 0.0
        for r in (packed[0], packed[1]):
            starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
            for a, b in zip(starts, [*starts[1:], len(r["input_ids"])], strict=True):
                ids = torch.tensor([r["input_ids"][a:b]])
                lab = torch.tensor(r["labels"][a:b])
                single_sum += float(loss_sum(model(input_ids=ids).logits[0, :-1], lab[1:]))
    assert packed_sum == pytest.approx(single_sum, rel=1e-4)
