"""The compute-dtype policy: float32 by default everywhere, 16-bit on request, and the CPU check that
keeps 16-bit compute off CPUs where PyTorch's 16-bit convolution is the slow fallback.

The CPU's ability is mocked both ways (the probe's timings and the capability string), so these
tests decide the same on every machine and never compute in a slow dtype.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

import videovae
from conftest import stepvideo_io, stepvideo_weights
from videovae import compute_dtype
from videovae.adapters.diffusers import SVDFace, VideoFace
from videovae.cli import main
from videovae.errors import DTypeFallbackWarning, VideoDTypeError, VideoVAEError


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU's measured 16-bit conv speed: cpu("slow") or cpu("fast"); counts probe calls."""
    calls = []

    def set_speed(speed: str, capability: str = "AVX2"):
        def probe(dtype):
            calls.append(dtype)
            if dtype == torch.float32:
                return 1e-3
            return 1e-3 * (300 if speed == "slow" else 0.5)

        compute_dtype.cpu_has_fast_conv.cache_clear()
        monkeypatch.setattr(compute_dtype, "probe_conv_seconds", probe)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        return calls

    yield set_speed
    compute_dtype.cpu_has_fast_conv.cache_clear()  # forget the mocked answers


def fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DTypeFallbackWarning)]


# -- the decision ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_16bit_on_a_slow_cpu_computes_in_float32_with_one_warning(cpu, dtype):
    cpu("slow", capability="AVX2")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        vae = videovae.load(stepvideo_weights(2), dtype=dtype)
        vae.reconstruct(stepvideo_io(2)["x_1f"])
    messages = fallback_warnings(record)
    assert vae.dtype == torch.float32 and vae.stored_dtype == torch.bfloat16
    assert len(messages) == 1, messages
    assert "capability AVX2" in messages[0] and f"no fast {dtype} convolution" in messages[0]
    assert "computing in float32" in messages[0] and "strict_dtype=True" in messages[0]


def test_the_fallback_gives_the_float32_models_numbers(cpu, v2):
    cpu("slow")
    with pytest.warns(DTypeFallbackWarning):
        vae = videovae.load(stepvideo_weights(2), dtype="bf16")
    x = stepvideo_io(2)["x_17f"]
    assert torch.equal(vae.reconstruct(x), v2.reconstruct(x))
    assert vae.reconstruct(x.bfloat16()).dtype == torch.bfloat16  # outputs still in the input's dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_on_a_fast_cpu_stays_16bit_without_a_warning(cpu, dtype):
    cpu("fast", capability="AVX512")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DTypeFallbackWarning)
        vae = videovae.load(stepvideo_weights(2), dtype=dtype)
    assert vae.dtype == dtype


def test_strict_dtype_forces_16bit_on_a_slow_cpu(cpu):
    cpu("slow")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DTypeFallbackWarning)
        vae = videovae.load(stepvideo_weights(2), dtype="bf16", strict_dtype=True)
        vae.encode(stepvideo_io(2)["x_1f"][..., :16, :16])
    assert vae.dtype == torch.bfloat16


def test_the_cpu_is_probed_once_per_process_and_dtype(cpu):
    calls = cpu("slow")
    for _ in range(3):
        with pytest.warns(DTypeFallbackWarning):
            videovae.load(stepvideo_weights(2), dtype="bf16")
    assert calls == [torch.bfloat16, torch.float32]  # one probe of each, then the cached answer
    assert compute_dtype.cpu_has_fast_conv(torch.float32) and len(calls) == 2  # float32 needs no probe


def test_no_check_off_the_cpu(cpu):
    calls = cpu("slow")
    resolve = compute_dtype.resolve_compute_dtype
    assert resolve("bf16", torch.bfloat16, torch.device("cuda")) == torch.bfloat16
    assert resolve(None, torch.bfloat16, torch.device("cuda")) == torch.float32
    assert resolve("file", torch.float16, torch.device("cuda")) == torch.float16
    assert calls == []


def test_the_real_probe_measures_both_dtypes():
    """The probe itself (not mocked): a float32 conv on this CPU in well under a second."""
    seconds = compute_dtype.probe_conv_seconds(torch.float32)
    assert 0 < seconds < 1.0
    assert compute_dtype.cpu_has_fast_conv(torch.float32) is True
    assert compute_dtype.cpu_has_fast_conv(torch.float64) is True


def test_a_model_cast_to_16bit_by_hand_warns_once_on_a_slow_cpu(cpu, recwarn):
    cpu("slow")
    vae = videovae.load(stepvideo_weights(2)).to(torch.bfloat16)  # what `pipe.to(torch.bfloat16)` does
    x = stepvideo_io(2)["x_1f"][..., :16, :16]
    warnings.simplefilter("always")
    vae.encode(x)
    vae.encode(x)
    messages = fallback_warnings(recwarn.list)
    assert len(messages) == 1 and "vae.to(torch.float32)" in messages[0]


@pytest.mark.parametrize("name, dtype", [
    ("fp32", torch.float32), ("float32", torch.float32), ("bf16", torch.bfloat16), ("BFloat16", torch.bfloat16),
    ("fp16", torch.float16), ("half", torch.float16), ("torch.float16", torch.float16), (torch.bfloat16, torch.bfloat16),
])
def test_dtype_names(name, dtype):
    assert compute_dtype.parse_dtype(name) == dtype


@pytest.mark.parametrize("bad", ["fp8", "int8", torch.int32, 16])
def test_bad_dtypes_are_refused_before_the_file_is_read(bad, tmp_path):
    with pytest.raises(VideoDTypeError) as info:
        videovae.load(tmp_path / "does-not-exist.safetensors", dtype=bad)
    assert isinstance(info.value, (TypeError, VideoVAEError))
    assert "fp32" in str(info.value)


# -- one default everywhere --------------------------------------------------------------------------

def test_the_faces_default_to_float32_and_reproduce_the_fixture():
    io = stepvideo_io(2)
    face = VideoFace.from_pretrained(stepvideo_weights(2))
    assert face.dtype == torch.float32
    mean = face.encode(io["x_17f"].transpose(1, 2)).latent_dist.mean.transpose(1, 2)
    assert (mean - io["mean_17f"]).abs().max() < 1e-4
    decoded = face.decode(io["mean_17f"].transpose(1, 2)).sample.transpose(1, 2)
    assert (decoded - io["dec_17f"]).abs().max() < 1e-4


def test_svd_face_from_a_pipeline_folder_with_torch_dtype(tmp_path, svd_io):
    from conftest import SVD_FIXTURES

    pipeline = tmp_path / "pipeline"
    (pipeline / "vae").mkdir(parents=True)
    for f in (SVD_FIXTURES / "svd_vae_tiny_diffusers").iterdir():
        (pipeline / "vae" / f.name).symlink_to(f)
    face = SVDFace.from_pretrained(pipeline, subfolder="vae")
    assert face.dtype == torch.float32
    assert (face.decode(svd_io["latent_mean"], num_frames=3).sample - svd_io["decoded"]).abs().max() < 1e-5
    half = SVDFace.from_pretrained(pipeline, subfolder="vae", torch_dtype=torch.float16, strict_dtype=True)
    assert half.dtype == torch.float16


def test_cli_inspect_says_stored_and_compute_dtype(capsys):
    assert main(["inspect", str(stepvideo_weights(1))]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stored_dtype"] == "bf16"
    assert info["compute_dtype"].startswith("fp32")


def test_cli_and_dataset_default_to_fp32_and_accept_file():
    from videovae import cli, dataset

    args = cli.build_parser().parse_args(["encode", "in.mp4", "-o", "x.safetensors"])
    assert args.dtype == "fp32" and args.strict_dtype is False
    assert cli.build_parser().parse_args(["encode", "in.mp4", "-o", "x.safetensors", "--dtype", "file"]).dtype == "file"
    import argparse

    parser = argparse.ArgumentParser()
    dataset.add_arguments(parser)
    args = parser.parse_args(["--inputs", "a.mp4", "--out", "o", "--checkpoint", "c.safetensors"])
    assert args.dtype == "fp32" and args.strict_dtype is False


def test_import_videovae_needs_no_pyav():
    """GPU machines often lack PyAV: the library, the CLI module and the faces import without it."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'av' or name.startswith('av.'):\n"
        "            raise ImportError('PyAV is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import videovae, videovae.cli, videovae.adapters.diffusers, videovae.convert\n"
        "vae = videovae.load(sys.argv[1])\n"
        "print(vae.dtype, 'av' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(stepvideo_weights(2))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["torch.float32", "False"]
