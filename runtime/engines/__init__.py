"""Engine bundles: exported graphs (ONNX Runtime, TensorRT, AOTInductor) loaded and run as pipeline stages.

`graphs.py` opens one exported graph in its engine; `bundle.py` is a folder of them with its manifest,
run as the pipeline's stages; `graph_spec.py` names each graph's inputs and outputs."""
