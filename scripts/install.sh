#!/usr/bin/env bash
# Install finecap into ./.venv on a fresh machine: the CPU build of PyTorch first (an
# unpinned torch would pull a multi-GB CUDA build), then finecap with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[eval,dev]"
if ! command -v java >/dev/null 2>&1; then
  echo "warning: java not found: METEOR, SPICE and the PTB tokenizer of pycocoevalcap need Java 8+" >&2
fi
