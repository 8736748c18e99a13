"""`gato-ros params model=X`: a model config's parameter count, checked against its documented figure.

The model is built on the meta device, so even the 1.18B config costs no memory.
"""

from __future__ import annotations

from gato_ros.config import load_config
from gato_ros.gato.model import build_model
from gato_ros.gato.tokenizer import ObservationTokenizer


def main(argv: list[str]) -> int:
    cfg = load_config(argv)
    vocab = ObservationTokenizer(cfg).vocab_size
    counts = build_model(cfg, vocab_size=vocab, device="meta").parameter_counts()
    m = cfg.model
    shape = f"{m.n_layer} layers, {m.n_head} heads, width {m.d_model}, ff {m.d_ff}, head {m.d_head}"
    print(f"model {m.name}: {shape}")
    print(f"  vocabulary        {vocab:>15,}")
    print(f"  total params      {counts['total']:>15,}")
    print(f"  non-embedding     {counts['non_embedding']:>15,}")
    print(f"  embedding tables  {counts['embedding']:>15,}")
    if m.get("paper_params"):
        print(f"  paper's figure    {int(m.paper_params):>15,}")
    expected = int(m.expected_params)
    if counts["total"] != expected:
        print(f"MISMATCH: model/{m.name}.yaml documents expected_params {expected:,}")
        return 1
    print(f"  matches model/{m.name}.yaml expected_params")
    return 0
