"""The per-window pipeline: preprocess, encode, denoise (samplers over stages), decode, composite."""


def __getattr__(name: str):
    # `runtime.pipeline` was the module of Remover before it became this package
    if name == "Remover":
        import warnings

        from runtime.pipeline.remover import Remover

        warnings.warn(
            "runtime.pipeline.Remover moved: use `from runtime import Remover`", DeprecationWarning, stacklevel=2
        )
        return Remover
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
