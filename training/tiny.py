"""A tiny random Llama with SmolLM2's tokenizer: fast stand-in for the base model in tests/CI.

    python -m training.tiny --out /tmp/tiny-llama
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_tiny_model(out_dir: str | Path, *, layers: int = 4, hidden: int = 256, heads: int = 4,
                    kv_heads: int = 2, ffn: int = 512, seed: int = 0, tokenizer=None) -> Path:
    """Write an HF Llama directory (config, safetensors, tokenizer) and return its path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.common import base_gguf_path

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    if tokenizer is None:
        p = base_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ffn,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=2048, rope_theta=100000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    tmp.replace(out)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    a = ap.parse_args()
    print(make_tiny_model(a.out, layers=a.layers, hidden=a.hidden))
