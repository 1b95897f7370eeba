"""AOTInductor packages: `torch.export` programs compiled ahead of time into `.pt2` files.

A package runs from Python (`torch._inductor.aoti_load_package`) and from C++
(`torch::inductor::AOTIModelPackageLoader`, export/cpp/) with nothing but libtorch. Each package
carries its graph's input and output shapes and the bundle key as metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from runtime.engines.graph_spec import GraphSpec, signature_metadata


def compile_package(program: torch.export.ExportedProgram, spec: GraphSpec, key: dict[str, Any], path: Path) -> None:
    """Compile an exported program into an AOTInductor package at `path`."""
    metadata = {**signature_metadata(spec), "key": json.dumps(key, sort_keys=True)}
    torch._inductor.aoti_compile_and_package(
        program, package_path=str(path), inductor_configs={"aot_inductor.metadata": metadata}
    )
