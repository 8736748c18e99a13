"""Rebuild the shipped SentencePiece model gato_ros/assets/gato_text.model from the project's own corpus
gato_ros/assets/text_corpus.txt (nothing is downloaded). Deterministic: same corpus, same model.

    .venv/bin/python scripts/build_text_model.py [--vocab-size N] [--corpus PATH] [--output PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gato_ros.gato.text import (
    TEXT_CORPUS,
    TEXT_MODEL_VOCAB,
    TextTokenizer,
    default_text_model_path,
    train_text_model,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=TEXT_CORPUS)
    parser.add_argument("--output", type=Path, default=default_text_model_path())
    parser.add_argument("--vocab-size", type=int, default=TEXT_MODEL_VOCAB)
    args = parser.parse_args()
    path = train_text_model(args.corpus, args.output, args.vocab_size)
    text = TextTokenizer(path)
    sample = "Stack the red object on top of the blue object."
    print(f"wrote {path} ({path.stat().st_size} bytes, {text.piece_count} pieces)")
    print(f"{sample!r} -> {text.encode(sample).tolist()}")


if __name__ == "__main__":
    main()
