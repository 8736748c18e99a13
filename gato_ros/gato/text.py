"""Text tokens: a SentencePiece model whose ids stay inside the paper's text range [0, 32000).

Nothing is downloaded: the shipped model ``gato_ros/assets/gato_text.model`` is trained from the
project's own text (``gato_ros/assets/text_corpus.txt``: task instructions and descriptions of the cell)
by ``scripts/build_text_model.py``. That corpus is a few kilobytes, so the model has a small vocabulary
(``TEXT_MODEL_VOCAB`` pieces, of which 256 are byte-fallback pieces that make every UTF-8 string
encodable and exactly decodable) instead of the paper's 32000: a 32000-piece model cannot be learned
from so little text and most of its ids would never occur. The id range, and therefore the model's
embedding rows and the continuous ids at 32000+, keep the paper's layout, so a larger SentencePiece
model trained on more text drops in without changing anything else.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sentencepiece as spm

from gato_ros.gato.tokenizer import PAPER_LAYOUT
from gato_ros.paths import PACKAGE_DIR

ASSETS_DIR = PACKAGE_DIR / "assets"
TEXT_CORPUS = ASSETS_DIR / "text_corpus.txt"
TEXT_MODEL_VOCAB = 640  # pieces of the shipped model: 256 byte pieces + specials + learned subwords


def default_text_model_path(model_name: str = "gato_text.model") -> Path:
    return ASSETS_DIR / model_name


class TextTokenizer:
    """SentencePiece encode/decode with the ids checked against the text range of the token layout."""

    def __init__(
        self, model_path: str | Path | None = None, text_vocab_size: int = PAPER_LAYOUT.text_vocab_size
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_text_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"SentencePiece model {self.model_path} is missing; "
                "rebuild it with scripts/build_text_model.py"
            )
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        if self._sp.get_piece_size() > text_vocab_size:
            raise ValueError(
                f"{self.model_path.name} has {self._sp.get_piece_size()} pieces, more than the text range "
                f"[0, {text_vocab_size})"
            )
        self.text_vocab_size = text_vocab_size

    @classmethod
    def from_config(cls, cfg) -> TextTokenizer:
        """From the full config: ``cfg.tokenizer.text_model`` (a name under assets/ or a path)."""
        name = str(cfg.tokenizer.text_model)
        path = Path(name) if Path(name).is_absolute() else default_text_model_path(name)
        return cls(path, int(cfg.tokenizer.text_vocab_size))

    @property
    def piece_count(self) -> int:
        """Ids the model actually uses: [0, piece_count), a prefix of the text range."""
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> np.ndarray:
        """Text -> int64 ids in [0, piece_count)."""
        return np.asarray(self._sp.encode(text, out_type=int), dtype=np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.piece_count]
        if bad:
            raise ValueError(f"ids {bad[:5]} are not text ids of {self.model_path.name}")
        return self._sp.decode(ids)


def train_text_model(corpus: Path, output: Path, vocab_size: int = TEXT_MODEL_VOCAB) -> Path:
    """Train the SentencePiece model deterministically (one thread, no sampling, identity normalisation
    so that ``decode(encode(s)) == s``) and write it to ``output``."""
    sentences = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(model.getvalue())
    return output
