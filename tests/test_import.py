"""The runtime must never need torch: importing the facade and its core modules must not load it."""

import subprocess
import sys

CHECK = """
import sys
import descore_sdk
from descore_sdk import Scorer, ScoreResult, PairResult, DescoreError
import descore_sdk.video, descore_sdk.preprocess, descore_sdk.prompt, descore_sdk.rope, descore_sdk.scorer, descore_sdk.cli
import descore_sdk.runtime
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print(",".join(heavy))
"""


def test_import_descore_sdk_does_not_import_torch_or_transformers():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"torch-free modules imported: {out.stdout.strip()}"


def test_wheel_installs_stages_as_descore_subpackages(tmp_path):
    """The wheel holds one top-level package; the stage folders land inside it, with the sample assets."""
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("descore_sdk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"descore_sdk"}
    for expected in (
        "descore_sdk/training/model.py",
        "descore_sdk/export/__init__.py",
        "descore_sdk/runtime/torch_backend.py",
        "descore_sdk/assets/samples.json",
        "descore_sdk/assets/videos/example_1_A.mp4",
        "descore_sdk/assets/videos/LICENSE",
    ):
        assert expected in names, expected
