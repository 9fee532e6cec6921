"""Stage `tokenizer`: train SentencePiece BPE on the training documents, or copy the official model.

Reads params `tokenizer` and `export.val_docs` (documents before it are validation and never reach
the trainer). Writes data/tokenizer/{tokenizer.model, tokenizer.vocab, tokenizer.json}.
"""

from __future__ import annotations

import argparse

from pgolf.config.data import ExportParams, TokenizerParams
from pgolf.stage import run_stage
from pgolf.tokenizer import build_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetched", default="data/fetch", help="fetch output directory")
    parser.add_argument("--out", default="data/tokenizer", help="output directory")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    run_stage(
        {"tokenizer": TokenizerParams, "export": ExportParams},
        lambda params, export: build_tokenizer(args.fetched, params, export, args.out),
        args.params,
    )


if __name__ == "__main__":
    main()
