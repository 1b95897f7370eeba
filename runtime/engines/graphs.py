"""Running one exported graph: ONNX Runtime sessions, TensorRT engines and AOTInductor packages.

Each backend is a `Graph`: opened from a file, checked against the bundle manifest's inputs and
outputs (names and shapes), then called with fp32 tensors in manifest order, returning fp32 tensors
in manifest order. Backend packages are imported only when a graph of theirs is opened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from runtime.engines.graph_spec import GraphSpec, format_shape
from runtime.errors import RemoverError


class Graph(ABC):
    """One exported graph, callable with fp32 tensors in the manifest's input order."""

    def __init__(self, name: str, spec: GraphSpec, device: torch.device) -> None:
        self.name = name
        self.spec = spec
        self.device = device

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        if len(inputs) != len(self.spec.inputs):
            raise RemoverError(f"{self.name}: expected {len(self.spec.inputs)} inputs, got {len(inputs)}")
        for tensor, expected in zip(inputs, self.spec.inputs):
            if not expected.matches(tuple(tensor.shape)):
                raise RemoverError(
                    f"{self.name}: input {expected.name} must be {format_shape(expected.shape)}, "
                    f"got {format_shape(tuple(tensor.shape))}"
                )
        return self.run(list(inputs))

    @abstractmethod
    def run(self, inputs: list[Tensor]) -> list[Tensor]:
        """Run on checked inputs (fp32, contiguous, on the device)."""

    def _check_signature(self, path: Path, actual_inputs: list[tuple], actual_outputs: list[tuple]) -> None:
        """Compare (name, shape) pairs read from the artifact with the manifest; a mismatch means the
        file was exported for other shapes or another model."""
        expected_inputs = [(t.name, tuple(t.shape)) for t in self.spec.inputs]
        expected_outputs = [(t.name, tuple(t.shape)) for t in self.spec.outputs]
        if (actual_inputs, actual_outputs) != (expected_inputs, expected_outputs):
            raise RemoverError(
                f"{path} does not match the bundle manifest (built for other shapes or another model): "
                f"it takes {_describe(actual_inputs)} -> {_describe(actual_outputs)}, the manifest says "
                f"{_describe(expected_inputs)} -> {_describe(expected_outputs)}"
            )


def _describe(signature: list[tuple]) -> str:
    shown = ", ".join(f"{name} {format_shape(shape)}" for name, shape in signature[:3])
    return f"[{shown}{', ...' if len(signature) > 3 else ''}]"


class OnnxRuntimeGraph(Graph):
    """An ONNX graph in an onnxruntime session (CUDA execution provider on a GPU device, else CPU)."""

    def __init__(self, path: Path, name: str, spec: GraphSpec, device: torch.device) -> None:
        super().__init__(name, spec, device)
        try:
            import onnxruntime
        except ImportError:
            raise RemoverError("onnxruntime is not installed: pip install '.[export]'") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise RemoverError("this onnxruntime has no CUDA execution provider: install onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable or unsupported graphs
            raise RemoverError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None

        def signature(values: list) -> list[tuple]:
            return [(v.name, tuple(d if isinstance(d, int) else str(d) for d in v.shape)) for v in values]

        self._check_signature(path, signature(self.session.get_inputs()), signature(self.session.get_outputs()))

    def run(self, inputs: list[Tensor]) -> list[Tensor]:
        feeds = {spec.name: x.cpu().numpy() for spec, x in zip(self.spec.inputs, inputs)}
        outputs = self.session.run([t.name for t in self.spec.outputs], feeds)
        return [torch.from_numpy(y).to(self.device) for y in outputs]


class AOTIGraph(Graph):
    """An AOTInductor package (.pt2) loaded with torch._inductor.aoti_load_package."""

    def __init__(self, path: Path, name: str, spec: GraphSpec, device: torch.device) -> None:
        super().__init__(name, spec, device)
        try:
            self.model = torch._inductor.aoti_load_package(str(path))
        except RuntimeError as exc:
            raise RemoverError(f"cannot load the AOTInductor package {path}: {str(exc).splitlines()[0]}") from None
        metadata = self.model.get_metadata()

        def parse(text: str) -> list[tuple]:
            pairs = [item.split(":") for item in text.split(";") if item]
            return [(n, tuple(int(s) if s.isdigit() else s for s in shape.split("x"))) for n, shape in pairs]

        self._check_signature(path, parse(metadata.get("inputs", "")), parse(metadata.get("outputs", "")))

    def run(self, inputs: list[Tensor]) -> list[Tensor]:
        outputs = self.model(*inputs)  # a graph with one output returns the tensor itself
        return [outputs] if isinstance(outputs, Tensor) else list(outputs)


class TensorRTGraph(Graph):
    """A serialized TensorRT engine (.plan), run on the current CUDA stream with fp32 I/O.

    Written against the TensorRT 10 Python API; unverified here (no GPU, no TensorRT).
    """

    def __init__(self, path: Path, name: str, spec: GraphSpec, device: torch.device) -> None:
        super().__init__(name, spec, device)
        trt = import_tensorrt()
        require_cuda(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RemoverError(f"TensorRT cannot deserialize {path} (built with another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        dynamic = {t.name: t.shape for t in (*spec.inputs, *spec.outputs)}

        def signature(selected: list[str]) -> list[tuple]:
            # TensorRT reports a dynamic axis as -1; put the manifest's axis name there to compare
            return [
                (
                    n,
                    tuple(
                        d if d >= 0 else dynamic.get(n, ())[i] for i, d in enumerate(self.engine.get_tensor_shape(n))
                    ),
                )
                for n in selected
            ]

        self._check_signature(
            path, signature([n for n in names if is_input[n]]), signature([n for n in names if not is_input[n]])
        )

    def run(self, inputs: list[Tensor]) -> list[Tensor]:
        for spec, x in zip(self.spec.inputs, inputs):
            self.context.set_input_shape(spec.name, tuple(x.shape))
            self.context.set_tensor_address(spec.name, x.data_ptr())
        outputs = []
        for spec in self.spec.outputs:
            y = torch.empty(tuple(self.context.get_tensor_shape(spec.name)), device=self.device)
            self.context.set_tensor_address(spec.name, y.data_ptr())
            outputs.append(y)
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RemoverError(f"TensorRT failed to run {self.name}")
        return outputs


def import_tensorrt():  # -> the tensorrt module
    """The tensorrt module, or a one-line RemoverError when it is not installed."""
    try:
        import tensorrt
    except ImportError:
        raise RemoverError(
            "TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)"
        ) from None
    return tensorrt


def require_cuda(device: torch.device) -> None:
    """A RemoverError unless `device` is a CUDA device that exists."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RemoverError("TensorRT needs a CUDA GPU, and this machine has none (or --device is not cuda)")


def tensorrt_key(device: torch.device) -> tuple[str, str]:
    """(TensorRT version, GPU architecture) that engines must have been built with."""
    trt = import_tensorrt()
    require_cuda(device)
    major, minor = torch.cuda.get_device_capability(device)
    return f"tensorrt {trt.__version__}", f"sm_{major}{minor}"


@dataclass(frozen=True)
class Backend:
    """How a backend's artifacts are stored (the manifest's artifact kind), keyed and opened."""

    artifact: str
    key: Callable[[torch.device], tuple[str, str]]  # device -> (tool version, device) artifacts must match
    open: Callable[[Path, str, GraphSpec, torch.device], Graph]


BACKENDS = {
    # ONNX graphs are portable: any onnxruntime that reads their opset runs them on any device
    "onnxruntime": Backend("onnx", lambda device: ("onnx", "any"), OnnxRuntimeGraph),
    "aoti": Backend("aoti", lambda device: (f"torch {torch.__version__}", device.type), AOTIGraph),
    "tensorrt": Backend("tensorrt", tensorrt_key, TensorRTGraph),
}


def open_graph(backend: str, path: Path, name: str, spec: GraphSpec, device: torch.device) -> Graph:
    """Open one graph file of a bundle with `backend`."""
    if not path.is_file():
        raise RemoverError(f"missing bundle file {path}")
    return BACKENDS[backend].open(path, name, spec, device)
