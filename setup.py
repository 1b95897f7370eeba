"""MiniMax-Remover: an optimized inference runtime and the training code that makes its weights."""

from setuptools import find_packages, setup

# onnxscript: torch.onnx's exporter and its constant folding; onnx-ir: the graph passes export/onnx.py runs
EXPORT = ["onnx", "onnx-ir", "onnxruntime", "onnxscript"]
# the web app's page: Gradio 6 (its API changed at each major version)
APP = ["gradio>=6,<7"]

setup(
    name="minimax-remover-runtime",
    version="0.1.0",
    description="Fast, lean video object removal with MiniMax-Remover (Wan2.1 DiT, 6 steps, no CFG)",
    packages=find_packages(include=["runtime*", "kernels*", "export*", "training*", "bench*"]),
    package_data={
        "runtime": ["demo/*.mp4", "demo/weights/*/*.json", "demo/weights/*/*.safetensors"],
        "training": ["configs/*.json"],
    },
    python_requires=">=3.11",  # PyAV 18 (below) needs 3.11; 3.10 reached its end of life in October 2026
    # av 18.0: runtime/io decodes BT.2020 clips with Colorspace.BT2020 (new in 18.0), and 17.x's reformat
    # raises on frames tagged with reserved primaries/transfer (VP9 output among them; fixed in 18.0).
    # 18.0 needs Python 3.11.
    # torch 2.13 is the only release this project is tested on (CPU here; its CUDA wheels pin a Triton with
    # triton.knobs); older ones lack APIs it uses (torch.OutOfMemoryError, aoti_load_package, ...), so the
    # floor is what is tested rather than a guess
    install_requires=["torch>=2.13", "numpy", "safetensors", "av>=18.0", "tqdm", "pillow"],
    extras_require={
        # diffusers at the version the released checkpoint was written with: an independent oracle
        # triton: the fused kernels (tests run them in its CPU interpreter); Linux wheels; 3.5+ for triton.knobs
        # opencv: the Telea baseline the training tests evaluate against; EXPORT: the export tests run the bundles
        # accelerate, matplotlib: the tests load the benchmark's reference (diffusers' from_pretrained) and
        # render its report's chart; ray: the batch runner's tests start a local Ray instance; APP and
        # playwright: the web app's tests drive it in Debian's Chromium (make test installs it);
        # scikit-image: the independent SSIM that runtime.evaluate's is checked against (tests only)
        "test": [
            "pytest",
            "pytest-xdist",  # make test: a worker a core
            "ruff",
            "diffusers==0.33.1",
            "accelerate",
            "matplotlib",
            "triton>=3.5; platform_system == 'Linux'",
            "opencv-python-headless",
            "ray",
            "huggingface_hub",
            "scikit-image",
            *EXPORT,
            *APP,
            "playwright",
        ],
        # python -m runtime.evaluate: OpenCV's optical flow and Gaussian filter, matplotlib's --plot.
        # LPIPS also needs `pip install --no-deps lpips` (its heads; its torchvision would pull another torch)
        "evaluate": ["opencv-python-headless", "matplotlib"],
        "export": EXPORT,
        # python -m runtime.app: the web app
        "app": APP,
        # python -m runtime.batch --address: workers as Ray actors (local mode needs nothing more)
        "ray": ["ray"],
        # the benchmark's reference loads through diffusers' from_pretrained, which needs accelerate
        "bench": ["pytest", "pytest-benchmark", "matplotlib", "diffusers==0.33.1", "accelerate"],
        "gpu": ["flash-attn", "nvidia-ml-py", "triton>=3.5"],
        "tensorrt": ["tensorrt"],
        "train": ["opencv-python-headless"],
        # python -m runtime.evaluate --tc-model: open_clip checkpoints by hub id (read from the cache). The CLIP
        # vision tower is defined in runtime/evaluate/clip.py: open_clip itself imports torchvision
        "clip": ["huggingface_hub"],
        # python -m runtime.segment and runtime.run's prompts: SAM 2 itself installs apart, without its
        # declared torchvision (which pulls another torch) and its CUDA extension: see the Makefile and
        # docs/segment.md. hydra-core and iopath are what its video predictor imports; huggingface_hub
        # resolves hub ids (runtime/hub.py); scipy fills holes in and grows the masks
        "segment": ["hydra-core", "iopath", "huggingface_hub", "scipy"],
    },
    entry_points={"console_scripts": ["minimax-remover=runtime.run:command"]},
)
