"""The models `descore bench --preset` runs, built once and cached like quickstart.

    tiny    one tiny random-weight qwen3_vl model + fp32 bundle (2 text layers of width 64): the CI smoke.
    small   a Qwen3-VL-shaped and a Qwen2.5-VL-shaped model of 50-100 M parameters each (training/
            bench_presets.py), seeded random weights, 8 frames at ≤ 224² per video; for each: the
            checkpoint, fp32 / int8 / int4 bundles (`descore export --precision`, with its fidelity
            report), and for `--baseline ort-genai` the text decoder as a Qwen2/Qwen3ForCausalLM folder
            built by onnxruntime-genai's model builder at each precision.

Everything is built in child processes (so the benchmark process's peak RSS is not the build's) under
`$DESCORE_CACHE/bench/<preset>-<sdk version>-e<EXPORT_REVISION>/` (default `~/.cache/descore`), and
reused by later runs. Delete that folder to rebuild.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from ._version import __version__
from .errors import InvalidInputError, MissingDependencyError, ModelLoadError

PRESETS = ("tiny", "small")
PRESET_PRECISIONS = {"tiny": ("fp32",), "small": ("fp32", "int8", "int4")}
TINY_FAMILY = "qwen3_vl"
SMALL_FAMILIES = ("qwen3_vl", "qwen2_5_vl")  # training/bench_presets.PRESET_FAMILIES, without importing torch
# The same weight-only quantization as `descore export --precision` (export/precision.py): asymmetric,
# 32 weights per block, accuracy_level 4, for a like-for-like onnxruntime-genai baseline.
GENAI_QUANT_OPTIONS = "block_size=32 accuracy_level=4 is_symmetric=false"


def cache_root() -> Path:
    """$DESCORE_CACHE (default ~/.cache/descore)/bench: next to quickstart's cache."""
    root = os.environ.get("DESCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "descore")
    return Path(root) / "bench"


# Bumped whenever export/ changes what a bundle's graphs contain, so a cached bundle is never measured in
# place of the current export's (2: in-place KV cache through GroupQueryAttention, fused RMSNorms;
# 3: RotaryEmbedding for q/k; 4: packed q/k/v and gate/up; 5: the q/k rotations inside GroupQueryAttention —
# the "after" tables of docs/BENCHMARKS.md are revision 2).
EXPORT_REVISION = 5


def preset_dir(preset: str) -> Path:
    return cache_root() / f"{preset}-{__version__}-e{EXPORT_REVISION}"


def preset_families(preset: str) -> tuple[str, ...]:
    check_preset(preset)
    return (TINY_FAMILY,) if preset == "tiny" else SMALL_FAMILIES


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise InvalidInputError(f"Unknown --preset {preset!r}; use one of {', '.join(PRESETS)}.")
    return preset


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _child(code: str, args: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        raise ModelLoadError(f"{what} failed: {' | '.join(tail)}")


_BUILD_CHECKPOINT = """
import sys
if sys.argv[1] == "tiny":
    from descore_sdk.training.tiny import build_tiny_model
    build_tiny_model(sys.argv[2], seed=0, out_dir=sys.argv[3])
else:
    from descore_sdk.training.bench_presets import build_small_model
    build_small_model(sys.argv[2], sys.argv[3], seed=0)
"""

_BUILD_BUNDLE = """
import sys
from descore_sdk.export.bundle import export_bundle
preset, checkpoint, out, precision = sys.argv[1:5]
kwargs = dict(progress=False, parity=preset != "tiny", precision=precision)
if preset == "small":
    from descore_sdk.training.bench_presets import SMALL_FRAMES, SMALL_MAX_PIXELS
    kwargs.update(max_frames=SMALL_FRAMES, max_pixels=SMALL_MAX_PIXELS)
export_bundle(checkpoint, out, **kwargs)
"""

_BUILD_TEXT_DECODER = """
import sys
from descore_sdk.training.bench_presets import write_text_decoder
write_text_decoder(sys.argv[1], sys.argv[2])
"""


def _need(modules: tuple[tuple[str, str], ...], what: str) -> None:
    for module, extra in modules:
        if _version(module) is None:
            raise MissingDependencyError(
                f"{what} needs '{module}'. Install it with: pip install 'descore-sdk[{extra}]', or pass --model/--bundle.")


def ensure_models(preset: str, say: Callable[[str], None], *, folder: Path | None = None,
                  precisions: tuple[str, ...] | None = None) -> dict[str, dict]:
    """{family: {"checkpoint": Path, "bundles": {precision: Path}}} for `preset`, building what is
    missing (checkpoint first, then each bundle) in `folder` (default: the preset's cache folder)."""
    from .bundle import MANIFEST_NAME

    check_preset(preset)
    folder = Path(folder) if folder is not None else preset_dir(preset)
    precisions = precisions or PRESET_PRECISIONS[preset]
    out = {}
    for family in preset_families(preset):
        base = folder if preset == "tiny" else folder / family
        checkpoint = base / "checkpoint"
        if not (checkpoint / "config.json").is_file():
            _need((("torch", "train"), ("transformers", "train")), f"descore bench --preset {preset}")
            say(f"Building the {preset} random-weight {family} model in {checkpoint} (once) ...")
            shutil.rmtree(checkpoint, ignore_errors=True)
            _child(_BUILD_CHECKPOINT, [preset, family, str(checkpoint)], f"Building the {preset} {family} model")
        bundles = {}
        for precision in precisions:
            bundle = base / ("bundle" if preset == "tiny" else f"bundle-{precision}")
            if not (bundle / MANIFEST_NAME).is_file():
                _need((("torch", "export"), ("onnx", "export")), f"descore bench --preset {preset}")
                say(f"Exporting its {precision} bundle to {bundle} (once; int8/int4 also measure fidelity) ...")
                shutil.rmtree(bundle, ignore_errors=True)
                _child(_BUILD_BUNDLE, [preset, str(checkpoint), str(bundle), precision], f"Exporting the {precision} bundle")
            bundles[precision] = bundle
        out[family] = {"checkpoint": checkpoint, "bundles": bundles}
    return out


def genai_available() -> str | None:
    """None when onnxruntime-genai can run here, else why not."""
    if _version("onnxruntime-genai") is None:
        return "onnxruntime-genai is not installed (pip install 'descore-sdk[ort-genai]')"
    return None


def ensure_genai_model(checkpoint: Path, precision: str, say: Callable[[str], None]) -> Path:
    """The checkpoint's text decoder built by onnxruntime-genai's model builder at `precision` (cached
    next to the checkpoint). Builder CLI as documented for onnxruntime-genai 0.18
    (`python -m onnxruntime_genai.models.builder -i HF_FOLDER -o OUT -p PRECISION -e cpu -c CACHE`)."""
    base = Path(checkpoint).parent
    hf = base / "text-decoder-hf"
    if not (hf / "config.json").is_file():
        say(f"Writing the text decoder as a Hugging Face causal LM in {hf} (once) ...")
        _child(_BUILD_TEXT_DECODER, [str(checkpoint), str(hf)], "Writing the text decoder")
    out = base / f"genai-{precision}"
    if not (out / "genai_config.json").is_file():
        say(f"Building it with onnxruntime-genai's model builder at {precision} in {out} (once) ...")
        shutil.rmtree(out, ignore_errors=True)
        argv = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                "-p", precision, "-e", "cpu", "-c", str(base / "genai-cache")]
        if precision in ("int8", "int4"):
            argv += ["--extra_options", *GENAI_QUANT_OPTIONS.split()]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0 or not (out / "genai_config.json").is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
            raise ModelLoadError(f"onnxruntime-genai's model builder failed ({precision}): {' | '.join(tail)}")
    return out


def preset_videos(preset: str) -> list[tuple[Path, str]] | None:
    """Extra real sample videos for the small preset: the VideoAlign examples when this checkout has
    them (../shared/data/videoalign_examples relative to the repository), with their prompts; None
    otherwise (the packaged samples are always used)."""
    if preset != "small":
        return None
    root = Path(__file__).resolve().parents[1]
    for candidate in (root.parent / "shared" / "data" / "videoalign_examples", root / "shared" / "data" / "videoalign_examples"):
        csv_path = candidate / "example.csv"
        if csv_path.is_file():
            import csv

            rows = []
            with open(csv_path, newline="") as handle:
                for row in csv.DictReader(handle):
                    for key, value in row.items():
                        if value and value.endswith(".mp4") and (candidate / "videos" / Path(value).name).is_file():
                            rows.append((candidate / "videos" / Path(value).name, row.get("prompt") or row.get("caption") or ""))
            return [(p, q) for p, q in rows if q] or None
    return None


def describe(preset: str) -> str:
    if preset == "tiny":
        return "tiny random-weight qwen3_vl (2 text layers of width 64)"
    return "small random-weight Qwen3-VL- and Qwen2.5-VL-shaped models (~55 M parameters each)"


__all__ = ["PRESETS", "ensure_models", "ensure_genai_model", "genai_available", "preset_dir", "cache_root"]
