import json
from pathlib import Path

import pytest

from neuronforge.assets.texts import (
    EMBEDDED_TEXTS,
    calibration_samples,
    embedded_splits,
    evaluation_windows,
    load_embedded_text,
    load_local_texts,
    split_document,
)
from neuronforge.errors import NeuronforgeError


def _shingles(text: str, width: int = 80) -> set[str]:
    return {text[i : i + width] for i in range(0, max(1, len(text) - width), 7)}


def test_embedded_texts_are_real_and_cleaned() -> None:
    britannica = load_embedded_text("britannica")
    assert "Stratford-upon-Avon" in britannica
    assert "### START" not in britannica and "\np.772:0\n" not in britannica
    hamlet = load_embedded_text("hamlet")
    assert "Elsinore" in hamlet
    verne = load_embedded_text("verne")
    assert "2889" in verne and "PROJECT GUTENBERG EBOOK" not in verne
    assert all(len(load_embedded_text(n)) > 20_000 for n in EMBEDDED_TEXTS)


def test_splits_are_disjoint_and_deterministic() -> None:
    first, second = embedded_splits(), embedded_splits()
    assert first == second
    for name in EMBEDDED_TEXTS:
        calib, held_out = first.calibration[name], first.evaluation[name]
        assert 0.15 < len(held_out) / (len(calib) + len(held_out)) < 0.35
        assert not (_shingles(calib) & _shingles(held_out)), f"{name}: calibration and evaluation overlap"


def test_split_cuts_at_a_paragraph_break() -> None:
    text = "".join(f"paragraph {i} " * 5 + "\n\n" for i in range(20))
    calib, held_out = split_document(text, 0.25)
    assert calib.rstrip().endswith("paragraph 14") and held_out.startswith("paragraph 15")
    with pytest.raises(NeuronforgeError, match="eval_fraction"):
        split_document(text, 1.5)


def test_local_text_loaders(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("Hello there.\r\n\r\n\r\n\r\nGeneral Kenobi.\n")
    assert load_local_texts(txt) == {"notes": "Hello there.\n\nGeneral Kenobi.\n"}
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps("two") + "\n")
    assert load_local_texts(jsonl) == {"corpus": "one\n\ntwo\n"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", "{not json}\n", "not valid JSON"),
        ("bad2.jsonl", '{"title": "x"}\n', "has no text"),
        ("empty.txt", "   \n", "contains no text"),
        ("data.csv", "a,b\n", "unsupported text file type"),
    ],
)
def test_local_text_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(NeuronforgeError, match=message):
        load_local_texts(path)
    with pytest.raises(NeuronforgeError, match="does not exist"):
        load_local_texts(tmp_path / "missing.txt")


def test_calibration_samples_have_full_length(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    calib = embedded_splits().calibration
    samples = calibration_samples(tok, calib, nsamples=6, seqlen=64)
    assert len(samples) == 6 and all(s.shape == (1, 64) for s in samples)
    assert len({tuple(s[0, :8].tolist()) for s in samples}) == 6, "windows should be spread over the text"
    assert [s.tolist() for s in samples] == [s.tolist() for s in calibration_samples(tok, calib, 6, 64)]
    with pytest.raises(NeuronforgeError, match="fewer than one window"):
        calibration_samples(tok, {"x": "tiny text"}, nsamples=2, seqlen=512)
    windows = evaluation_windows(tok, embedded_splits().evaluation["hamlet"], seqlen=32, max_tokens=100)
    assert windows.shape == (3, 32)
