"""The shipped SentencePiece model: small, rebuilt deterministically from the project's corpus, ids inside
the text range, exact round trips (byte fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gato_ros.gato.text import (
    TEXT_CORPUS,
    TEXT_MODEL_VOCAB,
    TextTokenizer,
    default_text_model_path,
    train_text_model,
)
from gato_ros.gato.tokenizer import PAPER_LAYOUT

TEXT = TextTokenizer()


def test_shipped_model_is_small_and_rebuilds_identically(tmp_path: Path) -> None:
    shipped = default_text_model_path()
    assert shipped.stat().st_size < 1_000_000
    assert TEXT.piece_count == TEXT_MODEL_VOCAB < PAPER_LAYOUT.text_vocab_size
    rebuilt = train_text_model(TEXT_CORPUS, tmp_path / "rebuilt.model")
    assert rebuilt.read_bytes() == shipped.read_bytes()


def test_corpus_encodes_compactly() -> None:
    text = TEXT_CORPUS.read_text(encoding="utf-8")
    ids = TEXT.encode(text)
    assert ids.max() < TEXT.piece_count
    assert len(ids) < len(text) / 2  # real subwords, not byte-by-byte
    assert TEXT.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_any_text_round_trips_with_ids_in_range(text: str) -> None:
    ids = TEXT.encode(text)
    assert ids.dtype == np.int64
    assert np.all((ids >= 0) & (ids < TEXT.piece_count))
    assert TEXT.decode(ids) == text
