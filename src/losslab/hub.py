"""Whether the Hugging Face hub can be reached, decided once and fast, for every loader that may download.

Loading a model or weights by hub name while offline would otherwise retry for about a minute before failing;
:func:`hub_offline` answers in at most a few seconds so callers can read the local cache only and fail at once::

    if hub_offline():
        ...  # from the cache only (HF_HUB_OFFLINE), a miss is one clear error
"""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from urllib.parse import urlparse

#: Seconds a TCP probe of the hub's host may take before the hub counts as unreachable.
HUB_PROBE_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set or the hub's host cannot be reached within a few seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    from huggingface_hub import constants

    return not reachable(urlparse(constants.ENDPOINT).hostname or "huggingface.co")


@lru_cache(maxsize=8)
def reachable(host: str, port: int = 443, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` s (DNS included; proxies: assume yes)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; a direct probe would say nothing
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)  # getaddrinfo ignores the socket timeout: bound the wait here
    return bool(ok)
