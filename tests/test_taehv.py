"""The light TAEHV decoder: the published file format by path and through a hub cache, the Wan VAE's
frame count, streaming, the raw-latent family, and `runtime.run --decoder` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_lines, fixed_seed, run_main
from safetensors.torch import save_file

from runtime import Remover, run
from runtime.batch.manifest import model_options
from runtime.errors import RemoverError
from runtime.io import read_clip
from runtime.models.taehv import DecoderMemory, TAEHVConfig, TAEHVDecoder, decoder_file, load_light_decoder
from runtime.models.weights import load_vae

PUBLISHED_BYTES = 22_642_902  # safetensors/taew2_1.safetensors (madebyollin/taehv; the OzzyGT/taew2_1 mirror)
REVISION = "0123456789abcdef0123456789abcdef01234567"


def released_layout() -> dict[str, tuple[int, ...]]:
    """Every key and shape of taew2_1.safetensors, from the published architecture: encoder and decoder
    are module lists keyed by index; a MemBlock is conv.0 (2n -> n), conv.2, conv.4 (3x3, with bias)."""
    layout: dict[str, tuple[int, ...]] = {}

    def memblock(prefix: str, n: int) -> None:
        for index, n_in in ((0, 2 * n), (2, n), (4, n)):
            layout[f"{prefix}.conv.{index}.weight"] = (n, n_in, 3, 3)
            layout[f"{prefix}.conv.{index}.bias"] = (n,)

    layout["encoder.0.weight"], layout["encoder.0.bias"] = (64, 3, 3, 3), (64,)
    for stage, pool in enumerate((2, 2, 1)):  # TPool (1x1 over `pool` frames), strided conv, 3 MemBlocks
        first = 2 + 5 * stage
        layout[f"encoder.{first}.conv.weight"] = (64, 64 * pool, 1, 1)
        layout[f"encoder.{first + 1}.weight"] = (64, 64, 3, 3)
        for block in range(3):
            memblock(f"encoder.{first + 2 + block}", 64)
    layout["encoder.17.weight"], layout["encoder.17.bias"] = (16, 64, 3, 3), (16,)
    layout["decoder.1.weight"], layout["decoder.1.bias"] = (256, 16, 3, 3), (256,)
    for first, width, out, grow in ((3, 256, 128, 1), (9, 128, 64, 2), (15, 64, 64, 2)):
        for block in range(3):  # 3 MemBlocks, upsample, TGrow (1x1, no bias), conv without bias
            memblock(f"decoder.{first + block}", width)
        layout[f"decoder.{first + 4}.conv.weight"] = (width * grow, width, 1, 1)
        layout[f"decoder.{first + 5}.weight"] = (out, width, 3, 3)
    layout["decoder.22.weight"], layout["decoder.22.bias"] = (3, 64, 3, 3), (3,)
    return layout


@pytest.fixture(scope="module")
def released_file(tmp_path_factory) -> Path:
    """Random fp16 weights under the released keys and shapes, saved as the release is."""
    generator = torch.Generator().manual_seed(0)
    tensors = {key: (torch.randn(shape, generator=generator) * 0.05).half() for key, shape in released_layout().items()}
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.fixture
def fixture_vae(checkpoint: Path):
    return load_vae(checkpoint / "vae", torch.device("cpu"), torch.float32)


def file_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {key: value.float() for key, value in load_file(str(path)).items() if key.startswith("decoder.")}


def test_the_test_layout_is_the_published_files_size(released_file: Path) -> None:
    """128 tensors, 11.3 M parameters, and exactly the published file's bytes (the header spells every key
    and shape): the layout the other tests save is the release's."""
    layout = released_layout()
    assert len(layout) == 128
    assert sum(int(np.prod(shape)) for shape in layout.values()) == 11_315_539
    assert released_file.stat().st_size == PUBLISHED_BYTES


def test_a_released_format_file_loads_by_path(released_file: Path, fixture_vae) -> None:
    decoder = load_light_decoder(
        "taew2_1", decoder_file("taew2_1", released_file), fixture_vae.config, "cpu", torch.float32
    )
    assert decoder.config == TAEHVConfig()  # widths and strides read from the shapes: the published ones
    state = decoder.state_dict()
    expected = file_tensors(released_file)
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def lay_out_hub(home: Path, repo: str, filename: str, source: Path) -> None:
    """The hub cache layout huggingface_hub reads offline: models--owner--name/{snapshots/REV/file, refs/main}."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / REVISION).mkdir(parents=True)
    (folder / "snapshots" / REVISION / filename).symlink_to(source)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, released_file: Path) -> Path:
    """A temporary HF_HOME holding OzzyGT/taew2_1 and lightx2v/Autoencoders' lighttaew2_1, offline."""
    home = tmp_path / "hf"
    lay_out_hub(home, "OzzyGT/taew2_1", "taew2_1.safetensors", released_file)
    lay_out_hub(home, "lightx2v/Autoencoders", "lighttaew2_1.safetensors", released_file)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.mark.parametrize("name", ["taew2_1", "lighttaew2_1"])
def test_the_published_files_load_through_the_hub_cache(name: str, hub_home: Path, released_file, checkpoint) -> None:
    """No --decoder-weights: the family's published file, found in the temporary HF_HOME's cache."""
    path = decoder_file(name, None)
    assert hub_home in path.parents and path.name == f"{name}.safetensors"
    remover = Remover.from_pretrained(checkpoint, "cpu", decoder=name)
    weight = remover.stages.decoder.decoder[1].weight
    torch.testing.assert_close(weight, file_tensors(released_file)["decoder.1.weight"], rtol=0, atol=0)


def small_decoder(seed: int) -> TAEHVDecoder:
    torch.manual_seed(seed)
    decoder = TAEHVDecoder(TAEHVConfig(widths=(24, 16, 8, 8))).eval()
    for parameter in decoder.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return decoder


@torch.no_grad()
def test_the_decode_has_the_wan_vaes_frame_count_and_streams_exactly(fixture_vae) -> None:
    """T latent frames -> 4T - 3 frames at 8x the size, as the VAE's decode; streamed latent by latent it
    equals one pass over the whole clip with the first 3 frames dropped, and is causal."""
    seed = fixed_seed()
    decoder = small_decoder(seed)
    latents = torch.randn(1, 16, 4, 3, 5, generator=torch.Generator().manual_seed(seed))
    streamed = torch.cat(list(decoder.iter_decode(latents)), dim=2)
    assert streamed.shape == fixture_vae.decode(latents).shape == (1, 3, 13, 24, 40)
    whole = decoder.decode_chunk(latents, DecoderMemory())[:, :, 3:]
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
    first_two = torch.cat(list(decoder.iter_decode(latents[:, :, :2])), dim=2)
    torch.testing.assert_close(first_two, streamed[:, :, :5], rtol=0, atol=0)
    assert streamed.min() >= -1.0 and streamed.max() <= 1.0 and streamed.std() > 0


@torch.no_grad()
def test_lighttaew2_1_decodes_raw_latents(released_file: Path, fixture_vae) -> None:
    """The same weights as lighttaew2_1 on normalized z equal them as taew2_1 on z * std + mean."""
    light = load_light_decoder("lighttaew2_1", released_file, fixture_vae.config, "cpu", torch.float32)
    plain = load_light_decoder("taew2_1", released_file, fixture_vae.config, "cpu", torch.float32)
    z = torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(fixed_seed()))
    mean, std = fixture_vae.latent_stats(z.device)
    raw = z * std + mean
    expected = torch.cat(list(plain.iter_decode(raw)), dim=2)
    torch.testing.assert_close(torch.cat(list(light.iter_decode(z)), dim=2), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(torch.cat(list(plain.iter_decode(z)), dim=2), expected, atol=1e-3)


def test_the_run_with_a_light_decoder_end_to_end(tennis, checkpoint, released_file, tmp_path, capsys) -> None:
    frames, masks = tennis
    out = tmp_path / "out.mp4"
    args = ["--video", frames, "--mask", masks, "--weights", checkpoint, "--height", 64, "--width", 112]
    light = ["--decoder", "taew2_1", "--decoder-weights", released_file]
    code, stdout, stderr = run_main(run.main, [*args, *light, "--out", out], capsys)
    assert code == 0 and stdout.startswith("wrote"), stderr
    assert "decoder taew2_1" in stderr and "light decoder" in stdout
    assert read_clip(out).frames.shape == (9, 240, 432, 3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--decoder", "taew2_1", "--decoder-weights", "/no/such/taew2_1.safetensors"], "neither a local path"),
        (["--decoder", "lighttaew2_1", "--decoder-weights", "owner/absent"], "not in the hub cache"),
        (["--decoder-weights", "x.safetensors"], "give --decoder taew2_1 or lighttaew2_1"),
        (["--decoder", "taew2_1", "--decoder-weights", "VAE_FILE"], "is not a TAEHV decoder file"),
    ],
)
def test_bad_decoder_weights_are_one_error_line(extra, message, tennis, checkpoint, hub_home, tmp_path, capsys):
    frames, masks = tennis
    out = tmp_path / "out.mp4"
    extra = [str(checkpoint / "vae" / "diffusion_pytorch_model.safetensors") if e == "VAE_FILE" else e for e in extra]
    args = ["--video", frames, "--mask", masks, "--weights", checkpoint, "--out", out, *extra]
    code, _, stderr = run_main(run.main, args, capsys)
    assert code == 2 and len(error_lines(stderr)) == 1 and message in error_lines(stderr)[0], stderr
    assert not out.exists()


def test_the_batch_takes_the_decoder_for_every_clip() -> None:
    options = model_options({"decoder": "lighttaew2_1", "decoder_weights": "owner/name"})
    assert (options.decoder, options.decoder_weights) == ("lighttaew2_1", "owner/name")
    with pytest.raises(RemoverError, match="--decoder"):
        model_options({"decoder": "tiny"})
