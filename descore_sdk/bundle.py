"""Exported bundles: the `manifest.json` contract, and loading a bundle with its integrity checked.

A bundle is a folder written by `descore export` (`descore_sdk.export.bundle.export_bundle`):

    manifest.json        what is in the bundle (this module reads it; see `load_bundle`)
    vision.onnx          patches → visual token embeddings (+ Qwen3-VL DeepStack features)
    decoder.onnx         one KV-cached decoder step with LM head and reward head
    [*.onnx.data]        external weights of a graph over the 2 GB protobuf limit
    embed_tokens.npy     the token-embedding table (float32, memory-mapped by the runtime)
    tokenizer.json, tokenizer_config.json, chat_template.jinja     the checkpoint's tokenizer
    descore_config.json  reward dimensions, reward token, prompt layout, frame sampling
    parity.json          the ONNX-vs-torch parity report of the fp32 graphs, measured at export time
    [fidelity.json]      a reduced-precision bundle only: its fidelity report against fp32

manifest.json (format_version 1) holds: the SDK version that wrote it, the model family, every other
file with its size and sha256, each graph's file and I/O names/shapes/dtypes (read from the ONNX files),
the opset, the tokenizer files, the reward token and its id, the dimension names, the frame-sampling and
generation defaults, and the model sizes the runtime needs (layers, heads, vision constants).
Precision: each graph entry has `precision` ("fp32", "fp16", "bf16", "int8" or "int4"; absent in
bundles from before it existed = "fp32"), `manifest["precision"]` says what was asked for and how
(quantization bits / block size / accuracy level, or the float type), and a reduced bundle has
`manifest["fidelity"]`, the summary of fidelity.json. Graph I/O is float32 at every precision.

Loading refuses, with `BundleIntegrityError`, a bundle whose files were changed or removed since export,
one written by an SDK of another MAJOR version, one of a newer bundle format, and one of another family
than the caller asked for. Torch-free: json, hashlib and the SDK's own config only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ._version import __version__
from .config import CONFIG_NAME, FAMILIES, DescoreConfig
from .errors import BundleIntegrityError, ModelLoadError

MANIFEST_NAME = "manifest.json"
PARITY_NAME = "parity.json"
FIDELITY_NAME = "fidelity.json"
BUNDLE_FORMAT = "descore-onnx-bundle"
BUNDLE_FORMAT_VERSION = 1
GRAPH_KINDS = ("vision", "decoder")
# Files every bundle must list; graphs are required through manifest["graphs"].
REQUIRED_FILES = ("tokenizer.json", CONFIG_NAME)
_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (a multi-GB decoder never sits in memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(folder: str | Path, name: str) -> dict:
    """The manifest entry of one bundle file: `{"bytes": size, "sha256": hex}`."""
    path = Path(folder) / name
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def sdk_major(version: str) -> int:
    """MAJOR of a `MAJOR.MINOR.PATCH[...]` version string."""
    try:
        return int(str(version).split(".", 1)[0])
    except ValueError:
        raise BundleIntegrityError(f"The bundle's sdk_version {version!r} is not a MAJOR.MINOR.PATCH version.") from None


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. `manifest` is the parsed manifest.json."""

    path: Path
    manifest: dict
    descore_config: DescoreConfig

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def model(self) -> dict:
        """Model sizes and token ids: num_layers, hidden_size, num_deepstack, video_token_id, ..."""
        return self.manifest["model"]

    def graph(self, kind: str) -> dict:
        """`{"file", "inputs": [{name, dtype, shape}], "outputs": [...]}` of "vision" or "decoder"."""
        return self.manifest["graphs"][kind]

    def precision(self, kind: str) -> str:
        """Weights/activations type of graph "vision" or "decoder" ("fp32" for bundles older than the field)."""
        return self.graph(kind).get("precision", "fp32")

    def graph_path(self, kind: str) -> Path:
        return self.path / self.graph(kind)["file"]

    @property
    def embedding_path(self) -> Path:
        return self.path / self.manifest["embedding"]["file"]


def read_manifest(path: str | Path) -> dict:
    """Parse `<path>/manifest.json`, or raise BundleIntegrityError saying what is wrong."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleIntegrityError(f"{folder} has no {MANIFEST_NAME}: it is not an exported bundle (run `descore export`).")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleIntegrityError(f"{manifest_path} is not valid JSON ({exc}); re-export the bundle.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleIntegrityError(f"{manifest_path} is not a DeScore bundle manifest (format {BUNDLE_FORMAT!r} expected).")
    return manifest


def load_bundle(path: str | Path, *, family: str | None = None, verify: bool = True) -> Bundle:
    """Load and check a bundle folder.

    family: refuse a bundle of any other model family (e.g. a deployment that expects qwen3_vl).
    verify: compare every file's sha256 with the manifest (reads every byte: about 1 s per GB). Sizes
        and presence are always checked.
    Raises BundleIntegrityError for a tampered, incomplete, foreign-family or incompatible bundle.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    _check_versions(manifest, folder)
    _check_family(manifest, family, folder)
    _check_files(manifest, folder, verify)
    try:
        config = DescoreConfig.load(folder)
    except ModelLoadError as exc:
        raise BundleIntegrityError(f"The bundle's {CONFIG_NAME} cannot be used: {exc}") from None
    if config.family != manifest["family"]:
        raise BundleIntegrityError(
            f"{folder / CONFIG_NAME} says family {config.family!r} but the manifest says {manifest['family']!r}; "
            "the bundle mixes two exports. Re-export it."
        )
    return Bundle(path=folder, manifest=manifest, descore_config=config)


def _check_versions(manifest: dict, folder: Path) -> None:
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleIntegrityError(f"{folder / MANIFEST_NAME} has no valid format_version; re-export the bundle.")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleIntegrityError(
            f"The bundle at {folder} has format_version {version}, newer than this SDK reads ({BUNDLE_FORMAT_VERSION}). "
            "Upgrade descore-sdk."
        )
    written_by = manifest.get("sdk_version", "")
    if sdk_major(written_by) != sdk_major(__version__):
        raise BundleIntegrityError(
            f"The bundle at {folder} was exported by descore-sdk {written_by}, but this is descore-sdk {__version__}: "
            f"a different MAJOR version, whose graph contract may differ. Re-export it with this SDK, or install "
            f"descore-sdk=={sdk_major(written_by)}.*."
        )


def _check_family(manifest: dict, wanted: str | None, folder: Path) -> None:
    family = manifest.get("family")
    if family not in FAMILIES:
        raise BundleIntegrityError(f"The bundle at {folder} names unknown family {family!r}; expected one of {FAMILIES}.")
    if wanted is not None and wanted != family:
        raise BundleIntegrityError(
            f"The bundle at {folder} is a {family} model, but a {wanted} model was requested. "
            "Point to the matching bundle, or drop the family requirement."
        )


def _check_files(manifest: dict, folder: Path, verify: bool) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleIntegrityError(f"{folder / MANIFEST_NAME} lists no files; re-export the bundle.")
    graphs = manifest.get("graphs") or {}
    needed = [graphs.get(kind, {}).get("file") for kind in GRAPH_KINDS]
    needed += [(manifest.get("embedding") or {}).get("file"), *REQUIRED_FILES]
    for name in needed:
        if not name or name not in files:
            raise BundleIntegrityError(
                f"{folder / MANIFEST_NAME} does not list {name or 'a required graph'}; the manifest is incomplete. "
                "Re-export the bundle."
            )
    for name, record in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or name == MANIFEST_NAME:
            raise BundleIntegrityError(f"{folder / MANIFEST_NAME} lists an invalid file name {name!r}.")
        file_path = folder / relative
        if not file_path.is_file():
            raise BundleIntegrityError(
                f"The bundle at {folder} is missing {name}, which its manifest lists. Copy the whole bundle folder, "
                "or re-export it."
            )
        size = file_path.stat().st_size
        if size != record.get("bytes"):
            raise BundleIntegrityError(
                f"{file_path} has {size} bytes but the manifest records {record.get('bytes')}: the file was changed "
                "after export. Re-export the bundle or restore the original file."
            )
        if verify and sha256_file(file_path) != record.get("sha256"):
            raise BundleIntegrityError(
                f"{file_path} does not match its sha256 in the manifest: the file was changed after export. "
                "Re-export the bundle or restore the original file."
            )


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write manifest.json atomically (a crash never leaves a half-written manifest that looks valid)."""
    path = Path(folder) / MANIFEST_NAME
    temporary = path.with_name(MANIFEST_NAME + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)
    return path


__all__ = [
    "MANIFEST_NAME",
    "PARITY_NAME",
    "FIDELITY_NAME",
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "Bundle",
    "load_bundle",
    "read_manifest",
    "write_manifest",
    "sha256_file",
    "file_record",
    "sdk_major",
]
