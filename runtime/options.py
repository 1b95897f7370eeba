"""Every choice a run takes, as data: frozen dataclasses that check themselves when made.

    ModelOptions   which model and how it runs (weights, engine bundle, device, dtype, kernels, ...)
    RunOptions     what one clip's run does with it (steps, seed, paste-back, progress)
    PlanOptions    how a clip is split into windows and cropped (runtime/clips/plan.py makes the plan)
    MaskOptions    how mask files become masks (runtime/io/masks.py)
    OutputOptions  how the result is encoded (runtime/io/writer.py)

The CLI (`runtime.run`), the batch manifest (`runtime.batch`), the web app and Python callers all build
these, so a value is refused the same way wherever it comes from: a RemoverError of one line that names
the command-line flag.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import RemoverError
from runtime.execution.attention import ATTENTION_CHOICES
from runtime.execution.choices import KERNEL_CHOICES
from runtime.models.config import SIZE_MULTIPLE
from runtime.models.taehv import DECODER_CHOICES, VAE_DECODER
from runtime.pipeline.composite import DEFAULT_DILATION, DEFAULT_FEATHER, DEFAULT_RESIZE, RESIZE_MODES
from runtime.pipeline.samplers import SAMPLER_CHOICES

# The kernel, attention and sampler choices are owned where they are implemented (imported above); the
# rest are the front doors' own.
DTYPE_CHOICES = ("bf16", "fp16", "fp32")
COMPILE_CHOICES = ("cuda-graphs", "inductor", "off")
ENGINE_RUNTIMES = ("onnxruntime", "tensorrt", "aoti")
DEVICE_TYPES = ("cpu", "cuda")
MASK_CHANNELS = ("auto", "luma", "alpha")
MAX_STEPS = 1000  # the scheduler's training timesteps: more steps than that repeat timesteps
MAX_SEED = 2**63 - 1  # window k draws its noise from seed + k: a signed 64-bit generator seed
DEFAULT_WINDOW = 81  # the model's training length (21 latent frames)
DEFAULT_OVERLAP = 5  # finished frames each window starts from (latents 0 and 1); see the README
BLEND_MODES = ("continue", "crossfade")
CROP_MODES = ("auto", "on", "off")
DEFAULT_CONTEXT = 0.25
DEFAULT_MIN_CROP = 256
MAX_DILATION = 240  # --dilate/--feather, pixels at 480p: half its short side; more covers any working frame
MAX_CONTEXT = 16.0  # --context: with a margin of 16 box sides any crop is already the whole frame

__all__ = ["ModelOptions", "RunOptions", "PlanOptions", "MaskOptions", "OutputOptions"]


def _choice(flag: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise RemoverError(f"{flag} {value}: choose one of {', '.join(choices)}")


def _whole(flag: str, value: object, least: int, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise RemoverError(f"{flag} must be a whole number from {least} to {most}, got {value!r}")


def check_device(name: str | None) -> None:
    """A RemoverError unless `name` is None or a device this package runs on: cpu, cuda or cuda:N."""
    if name is None:
        return
    kind, _, index = str(name).partition(":")
    if kind not in DEVICE_TYPES or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise RemoverError(f"--device {name}: use cpu, cuda or cuda:N")


@dataclass(frozen=True)
class PlanOptions:
    """How a clip is split and cropped (the CLI's --window ... --min-crop)."""

    window: int = DEFAULT_WINDOW  # frames per window; 0: the whole clip in one pass
    overlap: int = DEFAULT_OVERLAP
    blend: str = "continue"  # or "crossfade"
    crop: str = "auto"  # "on", "off"
    height: int | None = None  # working-size budget; default 480p keeping the aspect ratio
    width: int | None = None
    dilation: int = DEFAULT_DILATION  # pixels at 480p
    feather: int = DEFAULT_FEATHER  # pixels at 480p
    context: float = DEFAULT_CONTEXT  # crop margin around the dilated mask box, times its longer side
    min_crop: int = DEFAULT_MIN_CROP  # shortest crop side the model sees, in working pixels
    fixed_window: bool = False  # every window exactly `window` frames (an engine bundle with static shapes)
    upscale: bool = False  # let the default 480p working size exceed a smaller clip's own resolution
    resize: str = DEFAULT_RESIZE  # "reference" (the released pipeline's) or "antialias"; see runtime.pipeline.composite

    def __post_init__(self) -> None:
        """A RemoverError for options that cannot make a plan."""
        if self.window < 0 or self.overlap < 0:
            raise RemoverError(f"--window and --overlap must be >= 0, got {self.window} and {self.overlap}")
        if self.window and self.overlap >= self.window:
            raise RemoverError(f"--overlap ({self.overlap}) must be smaller than --window ({self.window})")
        if self.blend not in BLEND_MODES:
            raise RemoverError(f"unknown blend mode {self.blend!r}; choose one of {BLEND_MODES}")
        if self.crop not in CROP_MODES:
            raise RemoverError(f"unknown crop mode {self.crop!r}; choose one of {CROP_MODES}")
        _choice("--resize", self.resize, RESIZE_MODES)
        check_dilation("--dilate", self.dilation)
        check_dilation("--feather", self.feather)
        context = self.context
        if isinstance(context, bool) or not isinstance(context, int | float) or not 0 <= context <= MAX_CONTEXT:
            raise RemoverError(f"--context must be a finite number from 0 to {MAX_CONTEXT:g}, got {context!r}")
        if isinstance(self.min_crop, bool) or not isinstance(self.min_crop, int) or self.min_crop < SIZE_MULTIPLE:
            raise RemoverError(f"--min-crop must be a whole number >= {SIZE_MULTIPLE}, got {self.min_crop!r}")


def check_dilation(name: str, value: object) -> None:
    """A RemoverError unless `value` is a whole number of pixels from 0 to MAX_DILATION (the CLI's
    --dilate and --feather, the API's mask_dilation, batch rows and the app: one bound for all)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DILATION:
        raise RemoverError(f"{name} must be a whole number of pixels from 0 to {MAX_DILATION}, got {value!r}")


@dataclass(frozen=True)
class ModelOptions:
    """Which model and how it runs (the CLI's "model" flags). `weights` None: the bundled demo weights;
    `engine`: an engine bundle folder run by `engine_runtime` (the CLI's --backend) instead of the
    PyTorch modules, which fixes dtype, kernels, attention and compilation. `decoder` "vae" decodes
    with the checkpoint's VAE, "taew2_1" or "lighttaew2_1" with a light TAEHV decoder read from
    `decoder_weights` (a .safetensors file or a hub id; None: the published file)."""

    weights: str | None = None
    vae: str | None = None
    engine: str | None = None
    engine_runtime: str | None = None
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: fp16 on a GPU, fp32 on the CPU
    kernels: str | None = None  # None: $RUNTIME_KERNELS or auto
    attention: str | None = None  # None: $RUNTIME_ATTENTION or auto
    compile: str = "off"
    sampler: str = "unipc"
    decoder: str = VAE_DECODER
    decoder_weights: str | None = None

    def __post_init__(self) -> None:
        _choice("--backend", self.engine_runtime, ENGINE_RUNTIMES)
        _choice("--decoder", self.decoder, DECODER_CHOICES)
        if self.decoder_weights is not None and self.decoder == VAE_DECODER:
            raise RemoverError("--decoder-weights names a light decoder's file: give --decoder taew2_1 or lighttaew2_1")
        if self.engine is not None and self.decoder != VAE_DECODER:
            raise RemoverError(f"--decoder {self.decoder}: not with --engine (the bundle has its own decoder)")
        _choice("--dtype", self.dtype, DTYPE_CHOICES)
        _choice("--kernels", self.kernels, KERNEL_CHOICES)
        _choice("--attention", self.attention, ATTENTION_CHOICES)
        _choice("--compile", self.compile, COMPILE_CHOICES)
        _choice("--sampler", self.sampler, SAMPLER_CHOICES)
        check_device(self.device)
        if self.engine is not None:
            pinned = {"--dtype": self.dtype, "--kernels": self.kernels, "--attention": self.attention}
            given = [flag for flag, value in {**pinned, "--compile": self.compile != "off"}.items() if value]
            if given:
                raise RemoverError(f"{', '.join(given)}: not with --engine (the bundle fixes precision and backends)")
        elif self.engine_runtime is not None:
            raise RemoverError("--backend chooses what runs an --engine bundle; give --engine too")


@dataclass(frozen=True)
class RunOptions:
    """What one run does with the model: sampling `steps`, the noise `seed` (window k uses seed + k),
    compositing into the input (`paste_back`), progress bars."""

    steps: int = 6
    seed: int = 42
    paste_back: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        _whole("--steps", self.steps, 1, MAX_STEPS)
        _whole("--seed", self.seed, 0, MAX_SEED)


@dataclass(frozen=True)
class MaskOptions:
    """How mask files become masks (see runtime/io/masks.py): a pixel is removed where its level is above
    `threshold` (None: the reader's default), or below it with `invert`; `channel` picks luma or alpha."""

    threshold: int | None = None
    invert: bool = False
    channel: str = "auto"

    def __post_init__(self) -> None:
        if self.threshold is not None:
            _whole("--mask-threshold", self.threshold, 0, 255)
        _choice("--mask-channel", self.channel, MASK_CHANNELS)

    def reader_arguments(self) -> dict:
        """The keyword arguments of runtime.io's open_masks."""
        return {"threshold": self.threshold, "invert": self.invert, "channel": self.channel}


@dataclass(frozen=True)
class OutputOptions:
    """How the result is encoded (see runtime/io/writer.py, which checks codec and crf against the
    output's container when the output is checked) and whether an existing output may be replaced."""

    codec: str | None = None
    crf: int | None = None
    lossless: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.crf is not None:
            _whole("--crf", self.crf, 0, 63)

    def writer_arguments(self) -> dict:
        """The keyword arguments of runtime.io's open_writer and check_output."""
        return {"codec": self.codec, "crf": self.crf, "lossless": self.lossless, "overwrite": self.overwrite}
