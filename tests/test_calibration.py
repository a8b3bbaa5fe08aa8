"""Calibration sources (lists, datasets, local files, local dataset folders), their errors, and tokenizing."""

from __future__ import annotations

import json

import pytest

from qwodel_nb.engine.calibration import CalibrationSet, RawCalibration, Sample, read_source, tokenize
from qwodel_nb.engine.errors import CalibrationDataError
from qwodel_nb.engine.secrets import Secret

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def write_json(path, data) -> str:
    return write(path, json.dumps(data))


def write_jsonl(path, records) -> str:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def conversation(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _chat_dataset():
    import datasets

    return datasets.Dataset.from_dict({"messages": [conversation("what is red", "the boat")]})


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_llama):
    """A fresh copy of the tiny tokenizer with a small chat template (the shared one is left alone)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ----------------------------------------------------------------------------- in-memory sources


def test_list_of_strings():
    raw = read_source(["first text", "", "second text", "   \n", "third"])
    assert isinstance(raw, RawCalibration)
    assert raw.rows == ["first text", "second text", "third"]
    assert len(raw) == 3
    assert raw.kind == "text" and raw.column is None
    assert raw.dropped_empty == 2
    assert raw.description == "in-memory list (5 texts)"


def test_tuple_of_strings():
    assert read_source(("a", "b")).rows == ["a", "b"]


def test_list_with_non_text():
    with pytest.raises(CalibrationDataError, match="must hold only texts"):
        read_source(["ok", 3, None])


def test_dataset_text_column_preferred():
    import datasets

    ds = datasets.Dataset.from_dict({"id": [1, 2, 3], "title": ["t1", "t2", "t3"], "text": ["alpha", "", "gamma"]})
    raw = read_source(ds)
    assert raw.column == "text" and raw.kind == "text"
    assert raw.rows == ["alpha", "gamma"]
    assert raw.dropped_empty == 1
    assert "Dataset" in raw.description and "3 rows" in raw.description and "'text'" in raw.description


def test_dataset_single_string_column():
    import datasets

    ds = datasets.Dataset.from_dict({"idx": [0, 1], "body": ["one body", "two body"], "score": [0.5, 0.7]})
    raw = read_source(ds)
    assert raw.column == "body"
    assert raw.rows == ["one body", "two body"]


def test_dataset_several_string_columns_asks_for_text_column():
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["q1"], "answer": ["a1"]})
    with pytest.raises(CalibrationDataError) as info:
        read_source(ds)
    msg = str(info.value)
    assert "several text columns" in msg
    assert "question" in msg and "answer" in msg
    assert "text_column" in msg


def test_dataset_without_string_columns():
    import datasets

    ds = datasets.Dataset.from_dict({"a": [1, 2], "b": [0.1, 0.2]})
    with pytest.raises(CalibrationDataError) as info:
        read_source(ds)
    assert "no text columns (a, b)" in str(info.value)
    assert "text_column" in str(info.value)


def test_dataset_explicit_text_column():
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["q1", "q2"], "answer": ["a1", ""], "text": ["t1", "t2"]})
    raw = read_source(ds, text_column="answer")
    assert raw.column == "answer"
    assert raw.rows == ["a1"]
    assert raw.dropped_empty == 1


def test_dataset_explicit_text_column_missing():
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["q1"], "answer": ["a1"]})
    with pytest.raises(CalibrationDataError) as info:
        read_source(ds, text_column="prompt")
    msg = str(info.value)
    assert "no column 'prompt'" in msg
    assert "its columns: question, answer" in msg


def test_dataset_chat_messages_column():
    import datasets

    ds = datasets.Dataset.from_dict(
        {
            "messages": [
                conversation("hello", "hi there"),
                [{"role": "user", "content": ""}, {"role": "assistant", "content": "  "}],  # nothing to say
                conversation("how are you", "fine"),
            ],
            "source": ["a", "b", "c"],
        }
    )
    raw = read_source(ds)
    assert raw.kind == "chat" and raw.column == "messages"
    assert len(raw) == 2
    assert raw.dropped_empty == 1
    assert raw.rows[0][0] == {"role": "user", "content": "hello"}


def test_dataset_chat_column_by_name():
    import datasets

    ds = datasets.Dataset.from_dict({"conv": [conversation("q", "a")], "note": ["x"]})
    raw = read_source(ds, text_column="conv")
    assert raw.kind == "chat" and raw.column == "conv"


def test_dataset_dict_asks_for_a_split():
    import datasets

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["a"]}), "test": datasets.Dataset.from_dict({"text": ["b"]})}
    )
    with pytest.raises(CalibrationDataError) as info:
        read_source(dd)
    assert "DatasetDict" in str(info.value)
    assert "ds['train']" in str(info.value)


# ----------------------------------------------------------------------------- local files


def test_txt_paragraphs_split_on_blank_lines(tmp_path):
    path = write(tmp_path / "calib.txt", "First paragraph\nstill first.\n\nSecond one.\n\n\nThird one.\n")
    raw = read_source(path)
    assert raw.rows == ["First paragraph\nstill first.", "Second one.", "Third one."]
    assert raw.kind == "text"
    assert "calib.txt" in raw.description


def test_txt_windows_line_endings(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one\r\ntwo\r\n\r\nthree\r\n")
    assert read_source(str(path)).rows == ["one\ntwo", "three"]


def test_txt_without_blank_lines_is_one_sample_per_line(tmp_path):
    path = write(tmp_path / "lines.txt", "line one\nline two\nline three\n")
    raw = read_source(path)
    assert raw.rows == ["line one", "line two", "line three"]
    assert raw.dropped_empty == 0


def test_txt_single_line(tmp_path):
    assert read_source(write(tmp_path / "one.txt", "just this")).rows == ["just this"]


def test_txt_empty_file_has_no_rows(tmp_path):
    raw = read_source(write(tmp_path / "empty.txt", ""))
    assert len(raw) == 0


def test_path_object_and_home_expansion(tmp_path, monkeypatch):
    write(tmp_path / "c.txt", "a\n\nb")
    assert read_source(tmp_path / "c.txt").rows == ["a", "b"]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_source("~/c.txt").rows == ["a", "b"]


def test_json_list_of_strings(tmp_path):
    raw = read_source(write_json(tmp_path / "c.json", ["one", "", "two"]))
    assert raw.rows == ["one", "two"]
    assert raw.dropped_empty == 1
    assert raw.column is None


def test_json_list_of_records(tmp_path):
    records = [{"id": 1, "text": "alpha"}, {"id": 2, "text": None}, {"id": 3, "text": "gamma"}, {"id": 4}]
    raw = read_source(write_json(tmp_path / "c.json", records))
    assert raw.column == "text"
    assert raw.rows == ["alpha", "gamma"]
    assert raw.dropped_empty == 2
    assert "(4 rows)" in raw.description


def test_json_records_single_string_column(tmp_path):
    raw = read_source(write_json(tmp_path / "c.json", [{"n": 1, "content": "x"}, {"n": 2, "content": "y"}]))
    assert raw.column == "content" and raw.rows == ["x", "y"]


def test_json_records_text_column(tmp_path):
    records = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    raw = read_source(write_json(tmp_path / "c.json", records), text_column="completion")
    assert raw.rows == ["c1", "c2"]


def test_json_object_with_one_list(tmp_path):
    raw = read_source(write_json(tmp_path / "c.json", {"version": 2, "name": "x", "data": [{"text": "a"}, {"text": "b"}]}))
    assert raw.rows == ["a", "b"]


def test_json_object_with_two_lists(tmp_path):
    with pytest.raises(CalibrationDataError) as info:
        read_source(write_json(tmp_path / "c.json", {"train": ["a"], "test": ["b"]}))
    assert "exactly one list" in str(info.value)
    assert "'c.json'" in str(info.value)


def test_json_object_without_list(tmp_path):
    with pytest.raises(CalibrationDataError, match="exactly one list"):
        read_source(write_json(tmp_path / "c.json", {"text": "a"}))


def test_json_scalar(tmp_path):
    with pytest.raises(CalibrationDataError, match="must hold a list of texts or of records"):
        read_source(write_json(tmp_path / "c.json", "just a string"))


def test_json_mixed_texts_and_records(tmp_path):
    with pytest.raises(CalibrationDataError, match="mixes texts and records"):
        read_source(write_json(tmp_path / "c.json", ["a", {"text": "b"}]))


def test_json_records_without_text_column(tmp_path):
    with pytest.raises(CalibrationDataError) as info:
        read_source(write_json(tmp_path / "c.json", [{"id": 1, "score": 0.5}, {"id": 2, "score": 0.1}]))
    msg = str(info.value)
    assert "no 'text' or chat 'messages' column" in msg
    assert "id, score" in msg
    assert "text_column" in msg


def test_json_invalid(tmp_path):
    path = write(tmp_path / "bad.json", '[\n  "a",\n  "b",\n  oops\n]\n')
    with pytest.raises(CalibrationDataError) as info:
        read_source(path)
    msg = str(info.value)
    assert "'bad.json' is not valid JSON" in msg
    assert "line 4" in msg


def test_jsonl_records(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "one"}, {"text": ""}, {"text": "three"}])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n   \n")  # blank lines are skipped, not rows
    raw = read_source(path)
    assert raw.rows == ["one", "three"]
    assert raw.dropped_empty == 1


def test_jsonl_of_strings(tmp_path):
    raw = read_source(write_jsonl(tmp_path / "c.jsonl", ["a", "b"]))
    assert raw.rows == ["a", "b"] and raw.column is None


def test_jsonl_chat(tmp_path):
    raw = read_source(write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation("q", "a")}]))
    assert raw.kind == "chat" and raw.column == "messages"
    assert raw.rows == [conversation("q", "a")]


def test_jsonl_invalid_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": oops}\n')
    with pytest.raises(CalibrationDataError, match=r"'bad.jsonl' is not valid JSON"):
        read_source(path)


def test_jsonl_invalid_line_number(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
    with pytest.raises(CalibrationDataError, match=r"line 3"):
        read_source(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    with pytest.raises(CalibrationDataError, match="'latin.txt' is not UTF-8 text"):
        read_source(str(path))


# ----------------------------------------------------------------------------- malformed sources


@pytest.mark.parametrize("name", ["missing.txt", "missing.json", "missing.jsonl"])
def test_missing_file(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(CalibrationDataError) as info:
        read_source(path)
    assert "does not exist" in str(info.value)
    assert name in str(info.value)


def test_missing_path_without_extension(tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist; check the path"):
        read_source(str(tmp_path / "no" / "such" / "thing"))


def test_unknown_extension(tmp_path):
    path = write(tmp_path / "data.csv", "text\nhello\n")
    with pytest.raises(CalibrationDataError) as info:
        read_source(path)
    msg = str(info.value)
    assert "extension '.csv'" in msg
    assert ".json, .jsonl or .txt" in msg


def test_file_without_extension(tmp_path):
    path = write(tmp_path / "README", "hello")
    with pytest.raises(CalibrationDataError, match=r"extension '\(none\)'"):
        read_source(path)


def test_repo_without_subset():
    with pytest.raises(CalibrationDataError) as info:
        read_source("wikitext:")
    msg = str(info.value)
    assert "names no subset after ':'" in msg
    assert "repo:subset" in msg


def test_subset_without_repo():
    with pytest.raises(CalibrationDataError, match="names no repository before ':'"):
        read_source(":wikitext-2-raw-v1")


@pytest.mark.parametrize("source", ["", "   ", None, 5])
def test_empty_or_wrong_type_source(source):
    with pytest.raises(CalibrationDataError, match="calibration_dataset is empty"):
        read_source(source)


def test_unknown_hub_dataset_offline():
    """With HF_DATASETS_OFFLINE=1 (conftest) the hub path fails fast with an actionable message."""
    token = Secret("hf_ThisIsNotARealToken1234567890")
    with pytest.raises(CalibrationDataError) as info:
        read_source("qwodel-test/no-such-dataset:some-subset", token=token)
    msg = str(info.value)
    assert "'qwodel-test/no-such-dataset:some-subset'" in msg
    assert "cannot be loaded" in msg
    assert token.reveal() not in msg


# ----------------------------------------------------------------------------- local dataset folders


@pytest.fixture
def dataset_folder(tmp_path):
    folder = tmp_path / "calib_folder"
    folder.mkdir()
    write_jsonl(folder / "data.jsonl", [{"text": "first row"}, {"text": ""}, {"text": "third row"}])
    return folder


def test_local_dataset_folder_relative(dataset_folder, monkeypatch):
    """A folder goes through datasets.load_dataset, the hub code path, offline."""
    monkeypatch.chdir(dataset_folder.parent)
    raw = read_source("calib_folder")
    assert sorted(raw.rows) == ["first row", "third row"]
    assert raw.dropped_empty == 1
    assert raw.column == "text"
    assert "calib_folder" in raw.description and "[train]" in raw.description


def test_local_dataset_folder_unknown_split(dataset_folder, monkeypatch):
    monkeypatch.chdir(dataset_folder.parent)
    with pytest.raises(CalibrationDataError) as info:
        read_source("calib_folder", split="validation")
    assert "has no split 'validation'" in str(info.value)


def test_local_dataset_folder_absolute(dataset_folder):
    raw = read_source(str(dataset_folder))
    assert sorted(raw.rows) == ["first row", "third row"]


# ----------------------------------------------------------------------------- tokenize


def test_tokenize_takes_num_samples_and_keeps_short_texts_whole(tiny_tokenizer, calibration_texts):
    raw = read_source(calibration_texts)
    cal = tokenize(raw, tiny_tokenizer, seq_len=512, num_samples=10, batch_size=4, seed=0)
    assert isinstance(cal, CalibrationSet)
    assert cal.num_samples == 10
    assert cal.seq_len == 512
    # 4 unless batching these unequal texts by 4 would cut over 5% of their tokens (then it says so)
    assert cal.batch_size == 4 or (cal.batch_size < 4 and cal.batch_note.startswith("capped from 4"))
    assert cal.description == raw.description
    for sample in cal.samples:
        assert sample.text in calibration_texts
        assert not sample.truncated
        assert list(sample.input_ids) == tiny_tokenizer(sample.text)["input_ids"]
        assert sample.source_tokens == sample.num_tokens
    assert len({s.text for s in cal.samples}) == 10  # no row taken twice


def test_tokenize_more_samples_than_rows_takes_all(tiny_tokenizer):
    raw = read_source(["one text", "two texts", "three texts"])
    cal = tokenize(raw, tiny_tokenizer, seq_len=64, num_samples=100, batch_size=8)
    assert sorted(s.text for s in cal.samples) == ["one text", "three texts", "two texts"]
    assert cal.batch_size <= 3  # never more than the samples
    same = tokenize(read_source(["word " * 9] * 3), tiny_tokenizer, seq_len=64, num_samples=100, batch_size=8)
    assert same.batch_size == 3 and same.batch_note == ""


def test_tokenize_seed_is_deterministic_and_matters(tiny_tokenizer, calibration_texts):
    raw = read_source(calibration_texts)

    def order(seed):
        cal = tokenize(raw, tiny_tokenizer, seq_len=512, num_samples=len(calibration_texts), batch_size=1, seed=seed)
        assert not any(s.truncated for s in cal.samples)
        return [s.text for s in cal.samples]

    first = order(3)
    assert order(3) == first
    assert sorted(first) == sorted(calibration_texts)  # a permutation of every row
    assert first != calibration_texts  # really shuffled
    assert order(4) != first


def test_tokenize_truncates_to_seq_len(tiny_tokenizer, calibration_texts):
    seq_len = 16
    raw = read_source(calibration_texts)
    cal = tokenize(raw, tiny_tokenizer, seq_len=seq_len, num_samples=len(calibration_texts), batch_size=2)
    full = [tiny_tokenizer(t)["input_ids"] for t in calibration_texts]
    assert sorted(s.input_ids for s in cal.samples) == sorted(tuple(f[:seq_len]) for f in full)
    for sample in cal.samples:
        assert sample.num_tokens == min(seq_len, sample.source_tokens)
        assert sample.truncated == (sample.source_tokens > seq_len)
    truncated = [s for s in cal.samples if s.truncated]
    assert len(truncated) == sum(len(f) > seq_len for f in full)
    assert truncated  # generated paragraphs are longer than 16 tokens
    assert truncated[0].text == tiny_tokenizer.decode(list(truncated[0].input_ids))
    assert truncated[0].text not in calibration_texts
    assert cal.summary()["truncated"] == len(truncated)


def test_tokenize_mixed_lengths_flags_only_long_ones(tiny_tokenizer):
    short, long = "Hi.", " ".join(["The engineer repairs the red boat."] * 20)
    cal = tokenize(read_source([short, long]), tiny_tokenizer, seq_len=16, num_samples=2, batch_size=1)
    by_text = {s.truncated: s for s in cal.samples}
    assert by_text[False].text == short
    assert by_text[True].num_tokens == 16
    assert by_text[True].source_tokens > 16


def test_tokenize_huge_text_is_clipped_and_flagged(tiny_tokenizer):
    huge = "x" * 10_000
    cal = tokenize(read_source([huge]), tiny_tokenizer, seq_len=8, num_samples=1, batch_size=1)
    assert cal.samples[0].truncated
    assert cal.samples[0].num_tokens <= 8


def test_tokenize_nothing_usable(tiny_tokenizer):
    raw = read_source(["", "  "])
    with pytest.raises(CalibrationDataError) as info:
        tokenize(raw, tiny_tokenizer, seq_len=64, num_samples=4, batch_size=1)
    assert "has no non-empty text" in str(info.value)
    assert "in-memory list" in str(info.value)


def test_tokenize_chat_uses_the_template(chat_tokenizer):
    raw = read_source(_chat_dataset())
    cal = tokenize(raw, chat_tokenizer, seq_len=256, num_samples=1, batch_size=1)
    sample = cal.samples[0]
    assert sample.text == "<|user|>what is red\n<|assistant|>the boat\n"
    assert list(sample.input_ids) == chat_tokenizer(sample.text, add_special_tokens=False)["input_ids"]


def test_tokenize_chat_from_jsonl(chat_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation("hello", "hi")}])
    cal = tokenize(read_source(path), chat_tokenizer, seq_len=256, num_samples=4, batch_size=1)
    assert cal.samples[0].text == "<|user|>hello\n<|assistant|>hi\n"


def test_tokenize_chat_without_template(tiny_tokenizer):
    assert not getattr(tiny_tokenizer, "chat_template", None)
    raw = read_source(_chat_dataset())
    with pytest.raises(CalibrationDataError) as info:
        tokenize(raw, tiny_tokenizer, seq_len=64, num_samples=1, batch_size=1)
    msg = str(info.value)
    assert "chat 'messages'" in msg
    assert "no chat template" in msg
    assert "text_column" in msg


# ----------------------------------------------------------------------------- batching


def _set(lengths: list[int], batch_size: int) -> CalibrationSet:
    samples = [Sample(f"s{i}", tuple(range(100 * i, 100 * i + n)), n, False) for i, n in enumerate(lengths)]
    return CalibrationSet(samples, seq_len=64, batch_size=batch_size, description="hand-made")


def test_batches_group_longest_first():
    cal = _set([3, 10, 5, 2, 7], batch_size=2)
    assert cal.batches() == [[1, 4], [2, 0], [3]]


def test_batches_ties_keep_source_order():
    assert _set([4, 4, 4], batch_size=2).batches() == [[0, 1], [2]]


def test_batch_dropped_tokens_hand_computed():
    """Batches (10, 7), (5, 3), (2): trimming to the shortest drops 3 + 2 + 0 tokens."""
    cal = _set([3, 10, 5, 2, 7], batch_size=2)
    assert cal.total_tokens == 27
    assert cal.batch_dropped_tokens == 5


def test_batch_size_one_drops_nothing():
    assert _set([3, 10, 5, 2, 7], batch_size=1).batch_dropped_tokens == 0


def test_one_batch_of_everything():
    """A single batch of (10, 7, 5, 3, 2) keeps 5 x 2 tokens of 27."""
    assert _set([3, 10, 5, 2, 7], batch_size=5).batch_dropped_tokens == 17


def test_summary():
    s = _set([3, 10, 5, 2, 7], batch_size=2).summary()
    assert s["source"] == "hand-made"
    assert (s["samples"], s["tokens"], s["tokens_used"]) == (5, 27, 22)
    assert (s["min_tokens"], s["median_tokens"], s["max_tokens"]) == (2, 5, 10)
    assert (s["batches"], s["dropped_by_batching"], s["truncated"]) == (3, 5, 0)
    assert (s["seq_len"], s["batch_size"]) == (64, 2)


def test_dataloader_batches_are_cut_to_the_shortest():
    import torch

    cal = _set([3, 10, 5, 2, 7], batch_size=2)
    batches = list(cal.dataloader())
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 7), (2, 3), (1, 2)]
    first = batches[0]
    assert first["input_ids"].dtype == torch.long
    assert first["input_ids"][0].tolist() == list(range(100, 107))  # sample 1, first 7 tokens
    assert first["input_ids"][1].tolist() == list(range(400, 407))  # sample 4, whole
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask"}
        assert batch["attention_mask"].shape == batch["input_ids"].shape
        assert bool((batch["attention_mask"] == 1).all())
    kept = sum(b["input_ids"].numel() for b in batches)
    assert kept == cal.total_tokens - cal.batch_dropped_tokens


def test_dataloader_from_real_tokenization(tiny_tokenizer, calibration_texts):
    cal = tokenize(read_source(calibration_texts), tiny_tokenizer, seq_len=32, num_samples=12, batch_size=4, seed=1)
    batches = list(cal.dataloader())
    assert len(batches) == 3
    for batch, indices in zip(batches, cal.batches()):
        shortest = min(cal.samples[i].num_tokens for i in indices)
        assert tuple(batch["input_ids"].shape) == (4, shortest)
        assert batch["input_ids"].shape[1] <= 32


def test_batch_size_capped_when_batching_would_cut_many_tokens(tiny_tokenizer):
    """Samples of very unequal length are not batched into trimmed batches that lose most tokens."""
    from qwodel_nb.engine.calibration import MAX_BATCH_LOSS, RawCalibration, tokenize

    lengths = [3, 5, 100, 120, 150, 7, 9, 200, 30, 40, 60, 80, 90, 2, 4, 6]
    raw = RawCalibration(["word " * n for n in lengths], "text", None, "unequal")
    cal = tokenize(raw, tiny_tokenizer, seq_len=512, num_samples=16, batch_size=16)
    assert cal.batch_size < 16
    assert cal.dropped_tokens() <= MAX_BATCH_LOSS * cal.total_tokens
    assert cal.dropped_tokens(cal.batch_size + 1) > MAX_BATCH_LOSS * cal.total_tokens  # the largest that keeps 95%
    assert cal.batch_note.startswith("capped from 16 to ") and "of unequal length" in cal.batch_note
    assert cal.summary()["batch_note"] == cal.batch_note

    equal = tokenize(RawCalibration(["word " * 50] * 16, "text", None, "equal"), tiny_tokenizer,
                     seq_len=512, num_samples=16, batch_size=16)
    assert equal.batch_size == 16 and equal.batch_note == ""
