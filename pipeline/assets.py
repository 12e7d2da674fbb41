"""Where the shared media and weights live: `$INFI_ASSETS`, else `../shared/assets` beside the checkout.

Nothing is ever downloaded: a caller that needs a file asks `asset_path`, which names the
path it looked for when the file is absent. Tests turn that into a skip with the reason.
Files tools write for themselves (Ultralytics settings, matplotlib's font cache) go under
`cache_dir()`, not the home directory.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "INFI_ASSETS"
CACHE_ENV_VAR = "INFI_CACHE"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def assets_dir() -> Path:
    """The assets directory: `$INFI_ASSETS` if set, else `<checkout>/../shared/assets`."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured).expanduser().resolve()
    return (_REPO_ROOT.parent / "shared" / "assets").resolve()


def asset_path(relative: str) -> Path:
    """The path of one asset, e.g. ``asset_path("traffic/highway_cctv.avi")``.

    Raises `FileNotFoundError` naming the path and the variable to set when it is absent.
    """
    path = assets_dir() / relative
    if not path.exists():
        raise FileNotFoundError(f"asset {relative!r} not found at {path}; set {ENV_VAR} to the "
                                f"directory holding the shared assets")
    return path


def cache_dir() -> Path:
    """Where tools may write their settings and caches: `$INFI_CACHE`, else `<checkout>/.cache`."""
    return Path(os.environ.get(CACHE_ENV_VAR) or _REPO_ROOT / ".cache")
