"""Old module names (before the folders of issue 16) still import, with a DeprecationWarning naming the new one."""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "runtime.composite": "runtime.pipeline.composite",
    "runtime.preprocess": "runtime.pipeline.preprocess",
    "runtime.scheduler": "runtime.pipeline.samplers",
    "runtime.stages": "runtime.pipeline.stages",
    "runtime.weights": "runtime.models.weights",
    "runtime.backends": "runtime.execution.choices",
    "runtime.attention": "runtime.execution.attention",
    "runtime.cost_model": "runtime.execution.cost_model",
    "runtime.bundle": "runtime.engines.bundle",
    "runtime.graph_spec": "runtime.engines.graph_spec",
    "runtime.plan": "runtime.clips.plan",
    "runtime.stream": "runtime.clips.stream",
    "runtime.job": "runtime.clips.job",
    "runtime.preview": "runtime.clips.preview",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name as the module at its new place (the same module object, not a copy)."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}", DeprecationWarning, stacklevel=3)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


def install() -> None:
    """Put the alias finder first on sys.meta_path (once)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
