"""Derive, from a generated random-weight Llama, a variant whose every answer ends at once.

Run with the vLLM venv's Python (torch and safetensors live there). One hidden dimension is made a constant
of every token embedding, so it dominates the residual stream and the final norm; the output head reads that
dimension for the first end-of-sequence id only. End-of-sequence is then the argmax by a margin of about
25 logits at every position, so even sampling at temperature 1 ends the answer with its first token. The
rest of the model is unchanged: prompts are processed exactly as by the base model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

CONSTANT = 64.0  # far above what 8 random layers add to one dimension (about 1.5)
DIMENSION = 0


def main() -> int:
    from safetensors.torch import load_file, save_file

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, type=Path, help="the generated model's directory")
    parser.add_argument("--out", required=True, type=Path, help="a directory that does not exist yet")
    args = parser.parse_args()
    shutil.copytree(args.base, args.out)
    eos = json.loads((args.base / "generation_config.json").read_text())["eos_token_id"]
    eos_id = int(eos[0] if isinstance(eos, list) else eos)
    weights = args.out / "model.safetensors"
    tensors = load_file(weights)
    embed, head = tensors["model.embed_tokens.weight"], tensors["lm_head.weight"]
    embed[:, DIMENSION] = CONSTANT
    head[:, DIMENSION] = 0.0
    head[eos_id, DIMENSION] = 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    variant = {"base": args.base.name, "ends_with": eos_id, "dimension": DIMENSION, "constant": CONSTANT}
    (args.out / "thunder-variant.json").write_text(json.dumps(variant, indent=2) + "\n")
    print(f"variant ending every answer with token {eos_id} written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
