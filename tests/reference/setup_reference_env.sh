#!/usr/bin/env bash
# Installs the parity reference for descore_sdk.preprocess: transformers 4.57's slow (PIL + numpy)
# Qwen2VLImageProcessor, which still accepts `videos=` and needs no torchvision.
#
# It goes into a private --target folder (default <repo>/.cache/ref-transformers-4.57, git-ignored) so
# the globally installed transformers 5 is untouched; tests put that folder first on PYTHONPATH in a
# subprocess. transformers 4.57 checks these versions when imported, and the global env's are too new:
#   huggingface-hub >=0.34,<1.0   and   tokenizers >=0.22,<=0.23.0
# so those two are pinned into the same folder, with `requests` (huggingface_hub 0.x imports it at
# transformers import time; a fresh machine need not have it) and requests' own dependencies.
# Everything else it imports (numpy, pillow, regex, pyyaml, safetensors, filelock, packaging, tqdm)
# comes from the main environment, which the project's extras already provide.
#
# Usage: tests/reference/setup_reference_env.sh [TARGET_DIR]   (or set DESCORE_REF_ENV)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARGET="${1:-${DESCORE_REF_ENV:-$REPO_ROOT/.cache/ref-transformers-4.57}}"
PYTHON="${PYTHON:-python3}"
STAMP="descore-reference-v2.txt"  # bump when the requirement list changes
REQUIREMENTS=("transformers==4.57.6" "huggingface_hub==0.36.2" "tokenizers==0.22.2"
              "requests==2.32.5" "urllib3==2.5.0" "idna==3.10" "certifi==2025.8.3" "charset-normalizer==3.4.3")

# Install into a scratch folder and move it into place only once complete, so an interrupted install
# never leaves a half-populated reference that the tests would then trust.
SCRATCH="$TARGET.partial.$$"
rm -rf "$SCRATCH"
trap 'rm -rf "$SCRATCH"' EXIT
"$PYTHON" -m pip install --quiet --no-deps --no-compile --target "$SCRATCH" "${REQUIREMENTS[@]}"
printf '%s\n' "${REQUIREMENTS[@]}" > "$SCRATCH/$STAMP"
rm -rf "$TARGET"
mkdir -p "$(dirname "$TARGET")"
mv "$SCRATCH" "$TARGET"
echo "reference environment ready: $TARGET"
