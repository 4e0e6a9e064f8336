"""Getting a model folder from a hub without ever leaving half of it in place: each source downloads into a hidden
temporary folder beside the target, which is checked and then renamed into place (``os.replace``, atomic on one file
system); a failed source is logged and the next one tried. Offline (``HF_HUB_OFFLINE`` / ``AESTHETE_OFFLINE`` set,
or the host not answering within seconds) a source fails at once instead of after a minute of retries."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("aesthete")

# (done, total, what) -> None; called as files arrive
DownloadProgress = Callable[[int, int, str], None]
# (temporary destination folder, progress) -> None; raises when it cannot fetch
Fetcher = Callable[[Path, DownloadProgress], None]


class DownloadFailed(RuntimeError):
    """Every source failed; ``reasons`` holds one "source: why" line per source."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons) or "no source to download from")
        self.reasons = reasons


def host_reachable(host: str, timeout: float = 3.0) -> bool:
    """A quick TCP probe so that an offline machine fails in seconds, not after a minute of download retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline_forced() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("AESTHETE_OFFLINE", "HF_HUB_OFFLINE"))


def download_into_place(folder: Path, fetchers: list[tuple[str, Fetcher]], check: Callable[[Path], None],
                        progress: DownloadProgress | None = None) -> Path:
    """Try each (label, fetcher) in order until one gives a folder that ``check`` accepts (it raises otherwise);
    that folder replaces ``folder`` whole. Raises DownloadFailed with every source's reason. An exception raised by
    ``progress`` itself (ComfyUI's progress bar raises the user's cancel, an ``Exception`` in some ComfyUI versions)
    ends the download as it is: it is not a source's failure, so the next source is not tried."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda done, total, what: None)
    stopped: list[BaseException] = []

    def progress(done: int, total: int, what: str) -> None:
        try:
            report(done, total, what)
        except BaseException as e:
            stopped.append(e)
            raise

    reasons = []
    for label, fetch in fetchers:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
        try:
            log.info("downloading %s from %s", folder, label)
            fetch(tmp, progress)
            check(tmp)
            if folder.exists():  # an incomplete folder from before: replace it whole
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            return folder
        except Exception as e:  # noqa: BLE001 - every failure falls through to the next source
            if stopped:
                raise
            log.warning("%s: %s failed: %s", folder, label, e)
            reasons.append(f"{label}: {e}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    raise DownloadFailed(reasons)
