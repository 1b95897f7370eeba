"""The inputs and outputs of an exported graph: what a bundle's manifest records for each graph and
what every backend checks its graph files against (runtime/engines/bundle.py, runtime/engines/graphs.py, export/)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, shape (a str names a dynamic axis) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "fp32"

    def matches(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits (a dynamic axis fits any size)."""
        return len(shape) == len(self.shape) and all(isinstance(s, str) or s == n for s, n in zip(self.shape, shape))


@dataclass(frozen=True)
class GraphSpec:
    """A graph's inputs and outputs, in call order, and what each cache tensor belongs to."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cache_layers: tuple[str, ...] = ()


def format_shape(shape: tuple[int | str, ...]) -> str:
    """'2x3x1x64x96' (a dynamic axis by its name)."""
    return "x".join(str(s) for s in shape)


def signature_metadata(spec: GraphSpec) -> dict[str, str]:
    """A graph's inputs and outputs as flat strings ("name:2x3x1x64x96;..."), for files that carry
    string metadata (AOTInductor packages; the C++ host reads shapes from there)."""
    return {
        "inputs": ";".join(f"{t.name}:{format_shape(t.shape)}" for t in spec.inputs),
        "outputs": ";".join(f"{t.name}:{format_shape(t.shape)}" for t in spec.outputs),
    }
