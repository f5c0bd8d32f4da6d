"""Checkpoint → bundle: ONNX graphs, tokenizer, DeScore config, manifest.json and a parity report.

    from descore_sdk.export.bundle import export_bundle
    bundle = export_bundle("checkpoints/descore-8b", "bundles/descore-8b", max_frames=64)
    scorer = Scorer.from_pretrained(bundle)              # onnxruntime, no torch

or `descore export CHECKPOINT OUT_DIR --format onnx [--precision fp16|bf16|int8|int4]`. The folder layout
and the manifest are described in `descore_sdk/bundle.py`, which also loads and verifies bundles
(torch-free); reduced precision in `export/precision.py` and export/DESIGN.md.

Order matters: an old manifest in OUT_DIR is removed first and the new one is written only after every
file it lists is complete, so an interrupted export never leaves a folder that loads as a bundle.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from descore_sdk._version import __version__
from descore_sdk.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    FIDELITY_NAME,
    MANIFEST_NAME,
    PARITY_NAME,
    file_record,
    write_manifest,
)
from descore_sdk.config import CONFIG_NAME
from descore_sdk.errors import BundleIntegrityError, InvalidInputError
from descore_sdk.options import ScoreOptions

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json")


def _installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def export_bundle(
    checkpoint_dir_or_model,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    progress: bool = True,
    parity: bool = True,
    parity_video: str | Path | None = None,
    parity_threads: int | None = None,
    strict: bool = True,
    precision: str = "fp32",
    fidelity_videos: int | None = None,
    fidelity_samples: list[tuple] | None = None,
    kv_cache: str = "shared",
    fp32_reference: bool = True,
) -> Path:
    """Export a DeScore checkpoint folder (or an in-memory float32 DeScoreModel) as a bundle in `out_dir`.

    opset: ONNX opset (default 18). max_frames / max_pixels (per frame): the video bounds the bundle is
    built for; they become its default frame sampling (default: the checkpoint's). parity: run the
    teacher-forced ONNX-vs-torch check on `parity_video` (default: the packaged sample video) and save it
    as parity.json; with `strict`, a check over 1e-4 raises BundleIntegrityError (the files stay for
    inspection, but the folder is marked failed in the manifest).
    precision: "fp32" (default), "fp16" / "bf16" (both graphs in that type, fp32 islands) or "int8" /
    "int4" (weight-only MatMulNBits decoder). The fp32 graphs are exported and parity-checked first; the
    reduced graphs replace them and a fidelity report against fp32 (`fidelity_videos` generated videos,
    default 200, and `fidelity_samples` [(video, prompt)], default the packaged samples) is printed,
    saved as fidelity.json and summarised in the manifest. With `strict`, non-finite rewards (an fp16
    overflow) raise BundleIntegrityError.
    fp32_reference: False (fp16 / bf16 only) exports the half graphs straight from the checkpoint loaded in
    the type its safetensors store — a bf16/fp16 checkpoint is never held as an fp32 copy (half the memory of
    the default path, for machines without room for an 8B model in fp32) — at the price of the checks that
    need the fp32 reference: no parity check and no fidelity report (the manifest says so).
    kv_cache: "shared" (default: the decoder updates one preallocated buffer per layer in place through
    onnxruntime's GroupQueryAttention; fp32 / int8 / int4), "shared-fp16" (the same with the attention core
    and the cache in fp16, `export/half_cache.py`: the form onnxruntime CUDA's GroupQueryAttention kernel
    takes, half the cache memory; measured against fp32 like a reduced precision), "shared-standard" (the
    in-place contract in standard ONNX opset-24 ops, TensorScatter + Attention: the form TensorRT ≥ 10.15
    maps onto its KV-cache layers, export/standard_attention.py; with fp16 / bf16 the cache is in that
    type) or "concat" (past in, grown copy out: the portable form any ONNX runtime runs; what fp16 / bf16
    graphs use otherwise).
    Returns the bundle folder.
    """
    from .onnx_export import DEFAULT_OPSET, export_onnx
    from .parity import parity_report
    from .precision import PRECISIONS

    if precision not in PRECISIONS:
        raise InvalidInputError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if kv_cache not in KV_CACHE_FORMS:
        raise InvalidInputError(f"Unknown kv_cache {kv_cache!r}; use one of {', '.join(KV_CACHE_FORMS)}.")
    half_cache = kv_cache == "shared-fp16"
    if half_cache and precision in ("fp16", "bf16"):
        raise InvalidInputError(f"{precision} graphs use the concatenating cache (already {precision} inside the "
                                "graph); --kv-cache shared-fp16 is for fp32 / int8 / int4 decoders.")

    if not fp32_reference and precision not in ("fp16", "bf16"):
        raise InvalidInputError(f"Only fp16/bf16 exports can skip the fp32 reference (--no-fp32-reference); this is {precision}.")
    say = _printer(progress)
    out = Path(out_dir)
    if isinstance(checkpoint_dir_or_model, (str, Path)) and Path(checkpoint_dir_or_model).resolve() == out.resolve():
        raise InvalidInputError(f"Export into a new folder, not into the checkpoint {out} itself.")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST_NAME, PARITY_NAME, FIDELITY_NAME):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / REFERENCE_DIR, ignore_errors=True)  # left by an interrupted reduced-precision export

    start = time.perf_counter()
    model, source = _load_model(checkpoint_dir_or_model, say, None if fp32_reference else precision)
    say(f"Exporting the {model.family} model from {source} to {out} (ONNX opset {opset or DEFAULT_OPSET}) ...")
    if not fp32_reference:
        if kv_cache == "shared":
            kv_cache = "concat"  # what half graphs use unless shared-standard is asked (as on the default path)
        say(f"  {precision} graphs straight from the {precision} weights: no fp32 copy, so no parity check and no "
            "fidelity report")
        parity = False
    graphs = export_onnx(model, out, opset=opset or DEFAULT_OPSET, max_frames=max_frames, max_pixels=max_pixels,
                         kv_cache="shared" if half_cache else kv_cache,
                         float_type="fp32" if fp32_reference else precision)
    say(f"  graphs written: {', '.join(graphs.files)} ({sum(graphs.timings_s.values()):.1f} s)")

    tokenizer_files = _write_tokenizer(model, out)
    config = _bundle_config(model.descore_config, graphs.max_frames, graphs.max_pixels)
    config.save(out)
    manifest = build_manifest(out, graphs, model, config, tokenizer_files)
    if not fp32_reference:
        manifest["fidelity"] = {"measured": False, "reason": "exported without the fp32 reference (--no-fp32-reference)"}
    write_manifest(out, manifest)
    say(f"  manifest written: {len(manifest['files'])} files with sha256")

    if parity:
        say("Checking the bundle against the torch model (teacher-forced, real video) ...")
        report = parity_report(model, out, parity_video, threads=parity_threads, print_table=progress)
        (out / PARITY_NAME).write_text(json.dumps(report, indent=2) + "\n")
        manifest["files"][PARITY_NAME] = file_record(out, PARITY_NAME)
        manifest["parity"] = {"passed": report["passed"], "max_abs_diff": report["max_abs_diff"], "tolerance": report["tolerance"]}
        write_manifest(out, manifest)
        if strict and not report["passed"]:
            raise BundleIntegrityError(
                f"The exported graphs differ from the torch model by up to {report['max_abs_diff']:.2e} "
                f"(tolerance {report['tolerance']:.0e}); see {out / PARITY_NAME}. Do not deploy this bundle."
            )
    if fp32_reference and (precision != "fp32" or half_cache):
        _reduce_precision(model, out, manifest, precision, say, opset=opset or DEFAULT_OPSET, graphs=graphs,
                          threads=parity_threads, fidelity_videos=fidelity_videos, fidelity_samples=fidelity_samples,
                          progress=progress, strict=strict, half_cache=half_cache, kv_cache=kv_cache)
    say(f"Bundle ready in {out} ({time.perf_counter() - start:.1f} s). Score with: descore score VIDEO --prompt TEXT --model {out}")
    return out


# -- reduced precision ------------------------------------------------------------------------------
REFERENCE_DIR = ".fp32-reference"  # inside the bundle while the fidelity report runs; removed after
KV_CACHE_FORMS = ("shared", "shared-fp16", "shared-standard", "concat")


def _reduce_precision(model, out: Path, manifest: dict, precision: str, say, *, opset: int, graphs, threads,
                      fidelity_videos, fidelity_samples, progress: bool, strict: bool, half_cache: bool = False,
                      kv_cache: str = "shared") -> None:
    """Replace the fp32 graphs in `out` by `precision` ones (and, with `half_cache`, the decoder's attention
    core and cache by fp16 ones, `export/half_cache.py`), then measure and record what that cost.

    The fp32 bundle moves to `out/.fp32-reference` (graphs moved, other files hard-linked) to serve as
    the fidelity reference, and is deleted at the end. The manifest is removed first and rewritten only
    once the new graphs are complete, as for any export."""
    from .onnx_export import export_onnx
    from .precision import DEFAULT_FIDELITY_VIDEOS, HALF_TYPES, QUANTIZED_BITS, fidelity_report, fidelity_summary, quantize_graph

    (out / MANIFEST_NAME).unlink(missing_ok=True)
    reference = out / REFERENCE_DIR
    shutil.rmtree(reference, ignore_errors=True)
    reference.mkdir()
    graph_files = {name for name in manifest["files"] if name.endswith((".onnx", ".onnx.data"))}
    for name in manifest["files"]:
        if name in graph_files:
            (out / name).replace(reference / name)
        else:
            _link_or_copy(out / name, reference / name)
    write_manifest(reference, manifest)

    try:
        if precision in HALF_TYPES:
            say(f"Exporting {precision} graphs (fp32 islands: norms, softmax, rotary, final norm, reward head) ...")
            (out / graphs.embedding_file).unlink(missing_ok=True)  # a new file, not a write through the hard link
            half = export_onnx(model, out, opset=opset, max_frames=graphs.max_frames, max_pixels=graphs.max_pixels,
                               float_type=precision, kv_cache="shared-standard" if kv_cache == "shared-standard" else "concat")
            written = [name for name in half.files if name.endswith((".onnx", ".onnx.data"))] + [graphs.embedding_file]
            per_graph = {"vision": precision, "decoder": precision}
            details = {"float_type": precision, "io": "float32"}
        elif precision == "fp32":  # only the cache changes (half_cache below)
            for name in graph_files:
                _link_or_copy(reference / name, out / name)
            written = sorted(graph_files)
            per_graph = {"vision": "fp32", "decoder": "fp32"}
            details = {}
        else:
            bits = QUANTIZED_BITS[precision]
            say(f"Quantizing the decoder's weights to {precision} (MatMulNBits) ...")
            details = quantize_graph(reference / graphs.decoder_file, out / graphs.decoder_file, bits)
            for name in graph_files:
                if name.startswith(graphs.vision_file):
                    _link_or_copy(reference / name, out / name)
            written = [name for name in (graphs.vision_file, graphs.vision_file + ".data", graphs.decoder_file,
                                         graphs.decoder_file + ".data") if (out / name).is_file()]
            per_graph = {"vision": "fp32", "decoder": precision}
            say(f"  {details['quantized']} MatMuls now MatMulNBits ({bits} bits, block {details['block_size']}, "
                f"accuracy_level {details['accuracy_level']}); kept fp32: {', '.join(details['kept_fp32']) or 'none'}")
        if half_cache:
            import onnx

            from .half_cache import CACHE_RECORD, half_cache_graph

            say("Casting the decoder's attention core and KV cache to fp16 (onnxruntime CUDA's GroupQueryAttention "
                "takes fp16/bf16 caches only) ...")
            decoder = out / graphs.decoder_file
            proto = onnx.load(str(decoder), load_external_data=False)  # the weights stay in decoder.onnx.data
            decoder.unlink()  # a new file, not a write through the hard link into the reference
            onnx.save(half_cache_graph(proto), str(decoder))
            per_graph["decoder"] = f"{per_graph['decoder']}, fp16 KV cache"
            manifest["kv_cache"] = dict(CACHE_RECORD)

        files = {name: record for name, record in manifest["files"].items() if name not in graph_files}
        files.update({name: file_record(out, name) for name in written})
        manifest["files"] = dict(sorted(files.items()))
        for kind, file in (("vision", graphs.vision_file), ("decoder", graphs.decoder_file)):
            manifest["graphs"][kind] = {"file": file, "precision": per_graph[kind], **graph_io(out / file)}
        manifest["precision"] = {"requested": precision, **details}
        if "parity" in manifest:
            manifest["parity"]["graphs"] = "fp32 (before --precision; the reduced graphs are in fidelity.json)"
        write_manifest(out, manifest)

        videos = DEFAULT_FIDELITY_VIDEOS if fidelity_videos is None else int(fidelity_videos)
        say(f"Measuring the {per_graph['decoder']} graphs against fp32 ({videos} generated videos, the sample videos, "
            "teacher-forced logits) ...")
        report = {"precision": precision, "graphs": per_graph,
                  **fidelity_report(model, out, reference, num_videos=videos, sample_videos=fidelity_samples,
                                    threads=threads, print_table=False)}
        if progress:
            from .precision import format_fidelity

            print(format_fidelity(report), flush=True)
        (out / FIDELITY_NAME).write_text(json.dumps(report, indent=2) + "\n")
        manifest["files"][FIDELITY_NAME] = file_record(out, FIDELITY_NAME)
        manifest["fidelity"] = fidelity_summary(report)
        write_manifest(out, manifest)
    finally:
        shutil.rmtree(reference, ignore_errors=True)
    if strict and report.get("measurable") and not report["finite"]:
        raise BundleIntegrityError(
            f"The {precision} graphs give non-finite rewards (overflow); see {out / FIDELITY_NAME}. Export with "
            "--precision bf16 or fp32 instead."
        )


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy of a multi-GB file) where the filesystem allows, else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# -- pieces -----------------------------------------------------------------------------------------
def _printer(progress: bool):
    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stdout, flush=True)

    return say


def _load_model(checkpoint_dir_or_model, say, half: str | None = None):
    """(DeScoreModel in eval mode — float32, or in `half` ("fp16"/"bf16") for the export without an fp32
    reference —, where it came from)."""
    import torch

    from descore_sdk.training.model import DeScoreModel

    if isinstance(checkpoint_dir_or_model, DeScoreModel):
        return checkpoint_dir_or_model.eval(), "memory"
    if isinstance(checkpoint_dir_or_model, (str, Path)):
        # without the fp32 reference: the weights in the type they are stored in (bf16 → fp16 then rounds once,
        # as on the default path, and the fp32 islands and the embedding table are exact upcasts)
        dtype = torch.float32 if half is None else _stored_float_dtype(checkpoint_dir_or_model) or torch.float32
        say(f"Loading the checkpoint {checkpoint_dir_or_model} ({str(dtype).replace('torch.', '')}) ...")
        return DeScoreModel.from_pretrained(checkpoint_dir_or_model, dtype=dtype), str(checkpoint_dir_or_model)
    raise InvalidInputError(
        f"export_bundle takes a checkpoint folder or a DeScoreModel, not {type(checkpoint_dir_or_model).__name__}."
    )


def _stored_float_dtype(folder):
    """The floating type a checkpoint's safetensors store its weights in (read from the headers), or None."""
    import torch
    from safetensors import safe_open

    types = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "np") as handle:  # headers only: nothing is read into memory
            for key in handle.keys():
                dtype = types.get(handle.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return None


def _write_tokenizer(model, out: Path) -> list[str]:
    """Copy the checkpoint's tokenizer files (byte for byte) when they match the model's tokenizer,
    else write the in-memory tokenizer (e.g. `<Reward>` added since the last save). Returns the names."""
    source = model.tokenizer_dir
    if source is not None and (Path(source) / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        on_disk = Tokenizer.from_file(str(Path(source) / "tokenizer.json"))
        if on_disk.token_to_id(model.descore_config.reward_token) == model.reward_token_id:
            names = [name for name in TOKENIZER_FILES if (Path(source) / name).is_file()]
            for name in names:
                if Path(source).resolve() != out.resolve():
                    shutil.copyfile(Path(source) / name, out / name)
            return names
    from descore_sdk.training.tokenizer import write_tokenizer_files

    write_tokenizer_files(out, model.tokenizer, model.tokenizer_config, model.chat_template)
    return [name for name in TOKENIZER_FILES if (out / name).is_file()]


def _bundle_config(config, max_frames: int, max_pixels: int):
    """The checkpoint's DescoreConfig with the bundle's video bounds as its frame-sampling defaults."""
    sampling = dataclasses.replace(
        config.sampling,
        max_frames=max_frames,
        max_pixels=max_pixels,
        min_frames=min(config.sampling.min_frames, max_frames),
        min_pixels=min(config.sampling.min_pixels, max_pixels),
    )
    return dataclasses.replace(config, sampling=sampling)


def graph_io(path: Path) -> dict:
    """Inputs/outputs (name, numpy dtype name, shape with dim names) and opsets of an ONNX file,
    read without loading external weights."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in tensor.shape.dim]
        return {"name": value.name, "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name, "shape": shape}

    return {
        "inputs": [describe(v) for v in model.graph.input if v.name not in weights],
        "outputs": [describe(v) for v in model.graph.output],
        "opsets": {op.domain or "ai.onnx": int(op.version) for op in model.opset_import},
        "ir_version": int(model.ir_version),
    }


def build_manifest(out: Path, graphs, model, config, tokenizer_files: list[str]) -> dict:
    """manifest.json for the files now in `out` (see descore_sdk/bundle.py for the contract)."""
    import onnx
    import torch
    import transformers

    table = np.load(out / graphs.embedding_file, mmap_mode="r")
    backbone_config = model.backbone.config
    options = ScoreOptions()
    stop_ids = [model.tokenizer.token_to_id(t) for t in options.stop_tokens]
    files = sorted({*graphs.files, *tokenizer_files, CONFIG_NAME})
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "sdk_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "exporter": {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
                     "onnxruntime": _installed_version("onnxruntime")},
        "family": graphs.family,
        "opset": graphs.opset,
        "graphs": {
            "vision": {"file": graphs.vision_file, "precision": graphs.float_type, **graph_io(out / graphs.vision_file)},
            "decoder": {"file": graphs.decoder_file, "precision": graphs.float_type, **graph_io(out / graphs.decoder_file)},
        },
        "precision": {"requested": graphs.float_type},
        "embedding": {"file": graphs.embedding_file, "dtype": table.dtype.name, "shape": list(table.shape)},
        "tokenizer": {
            "file": "tokenizer.json",
            "config": "tokenizer_config.json" if "tokenizer_config.json" in tokenizer_files else None,
            "chat_template": next((n for n in tokenizer_files if n.startswith("chat_template")), None),
        },
        "prompt": {"template": config.prompt_template, "system_prompt": config.system_prompt},
        "reward_token": config.reward_token,
        "reward_token_id": int(model.reward_token_id),
        "dimension_names": list(config.dimension_names),
        "sampling": dataclasses.asdict(config.sampling),
        "generation": {
            "stop_tokens": list(options.stop_tokens),
            "stop_token_ids": stop_ids,
            "max_new_tokens": config.max_new_tokens,
            "max_context": config.max_context,
        },
        "model": {
            "num_layers": graphs.num_layers,
            "num_attention_heads": graphs.num_attention_heads,
            "num_key_value_heads": graphs.num_key_value_heads,
            "head_dim": graphs.head_dim,
            "hidden_size": graphs.hidden_size,
            "vocab_size": graphs.vocab_size,
            "num_rewards": graphs.num_rewards,
            "num_deepstack": graphs.num_deepstack,
            "video_token_id": int(backbone_config.video_token_id),
            "image_token_id": int(backbone_config.image_token_id),
            "tokens_per_second": getattr(backbone_config.vision_config, "tokens_per_second", None),
            "vision": graphs.vision.to_dict(),
            "max_vision_patches": graphs.max_vision_patches,
        },
        "files": {name: file_record(out, name) for name in files},
    }
