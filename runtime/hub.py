"""Weights named by a local path or a Hugging Face hub id ("owner/name"), resolved through the hub's cache.

`resolve(id_or_path, filename, what)`: an existing local path is returned as it is; "owner/name" is
fetched into (or found in) the hub cache with `huggingface_hub`: one file when `filename` is given,
else the whole repository (a folder). The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
~/.cache/huggingface/hub, read when `resolve` is called; `HF_HUB_OFFLINE=1` uses the cache only. A
download shows huggingface_hub's progress bars. Anything that fails (offline and not cached, no such
repository or file, no network) is one RemoverError line naming what was asked for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from runtime.errors import RemoverError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".json", ".yaml")  # a file, not a repository
TRUE = ("1", "on", "yes", "true")


def is_hub_id(value: str) -> bool:
    """Whether `value` reads as a hub id "owner/name" (and not as a local path: existing, or a file name)."""
    path = Path(value)
    return HUB_ID.fullmatch(value) is not None and path.suffix.lower() not in WEIGHT_SUFFIXES and not path.exists()


def hub_cache() -> Path:
    """The hub cache folder the environment names now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def resolve(id_or_path: str, filename: str | None, what: str, local_only: bool = False) -> Path:
    """A local path as it is, or the cached file (`filename`) or snapshot folder of a hub id, downloaded
    when missing and online (never with `local_only`: the cache only, as with HF_HUB_OFFLINE). `what`
    names the weights in error lines ("the remover's weights")."""
    path = Path(id_or_path).expanduser()
    if path.exists():
        return path
    if not is_hub_id(id_or_path):
        raise RemoverError(f"{what} not found: {id_or_path} is neither a local path nor a hub id owner/name")
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        raise RemoverError(
            f"{what}: {id_or_path} is a hub id and huggingface_hub is not installed (pip install huggingface_hub)"
        ) from None
    local_only = local_only or offline()
    cache = hub_cache()
    target = f"{id_or_path}/{filename}" if filename else id_or_path
    try:
        if filename:
            found = hf_hub_download(id_or_path, filename, cache_dir=cache, local_files_only=local_only)
        else:
            found = snapshot_download(id_or_path, cache_dir=cache, local_files_only=local_only)
    except Exception as exc:  # huggingface_hub raises many types (HTTP, offline, validation, OS)
        if local_only:
            raise RemoverError(
                f"{what}: {target} is not in the hub cache {cache}"
                f"{' and HF_HUB_OFFLINE is set' if offline() else ', which is read without downloading'} "
                "(download it once online, or set HF_HOME to the cache that holds it)"
            ) from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RemoverError(f"{what}: cannot fetch {target} from the hub ({reason})") from None
    return Path(found)
