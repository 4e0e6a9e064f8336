"""Getting a model folder from a hub without ever leaving half of it in place: each source downloads into a hidden
temporary folder beside the target, which is checked and then renamed into place (``os.replace``, atomic on one file
system); a failed source is logged and the next one tried. Offline (``HF_HUB_OFFLINE`` / ``AESTHETE_OFFLINE`` set,
or the endpoint not answering within seconds) a source fails at once instead of after a minute of retries.

Each hub is probed at the endpoint its own library will download from: Hugging Face's ``HF_ENDPOINT`` (a mirror),
ModelScope's ``MODELSCOPE_ENDPOINT`` / ``MODELSCOPE_DOMAIN`` (through the environment's proxy, as they connect). Both are
fetched file by file (``fetch_huggingface_files``, ``fetch_modelscope_files``): a missing name is told before any
download, a failed file is named, the user's cancel is taken between files. Progress counts bytes: the bytes written
under the temporary folder (both libraries write their partial files there) against the sizes the hub lists."""

from __future__ import annotations

import contextvars
import glob
import inspect
import logging
import os
import shutil
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("aesthete")

# (done, total, what) -> None; called as bytes (or files) arrive
DownloadProgress = Callable[[int, int, str], None]
# (temporary destination folder, progress) -> None; raises when it cannot fetch
Fetcher = Callable[[Path, DownloadProgress], None]

PROGRESS_EVERY_S = 0.25  # how often the bytes written are counted while a download runs


class DownloadFailed(RuntimeError):
    """Every source failed; ``reasons`` holds one "source: why" line per source."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons) or "no source to download from")
        self.reasons = reasons


def first_hop(url: str) -> tuple[str, int] | None:
    """The host and port a connection to ``url`` (http or https; a bare host is https) goes to first: the proxy the
    environment sets for its scheme (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``; not for a ``NO_PROXY`` host),
    as the hub libraries connect, else the endpoint itself. None when ``url`` names no host."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    if not parts.hostname:
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        hop = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if hop.hostname:
            default = 1080 if hop.scheme.startswith("socks") else 443 if hop.scheme == "https" else 80
            return hop.hostname, hop.port or default
    return parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)


def endpoint_reachable(url: str, timeout: float = 3.0) -> bool:
    """A quick TCP probe of where a connection to ``url`` goes first (``first_hop``), so that an offline machine
    fails in seconds, not after a minute of download retries."""
    try:
        hop = first_hop(url)
        if hop is None:
            return False
        with socket.create_connection(hop, timeout=timeout):
            return True
    except (OSError, ValueError):  # ValueError: a port out of range
        return False


def offline_forced() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("AESTHETE_OFFLINE", "HF_HUB_OFFLINE"))


def huggingface_endpoint() -> str:
    """Where huggingface_hub downloads from: ``HF_ENDPOINT`` (a mirror) or its default, read when called."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def modelscope_endpoint() -> str:
    """Where the installed modelscope downloads from: its own answer (``MODELSCOPE_ENDPOINT``, the older
    ``MODELSCOPE_DOMAIN``, or its default)."""
    from modelscope.hub.api import HubApi

    return HubApi().endpoint


def require_reachable(source: str, endpoint: Callable[[], str]) -> None:
    """Raises ConnectionError naming ``source`` and its endpoint when offline is forced or the endpoint does not
    answer (``endpoint`` is only asked when online: reading it may import the hub's library)."""
    if offline_forced():
        raise ConnectionError(f"{source} is not reachable (offline: AESTHETE_OFFLINE or HF_HUB_OFFLINE is set)")
    url = endpoint()
    if not endpoint_reachable(url):
        raise ConnectionError(f"{source} is not reachable ({url} does not answer)")


def require_huggingface() -> None:
    require_reachable("Hugging Face", huggingface_endpoint)


def require_modelscope() -> None:
    require_reachable("ModelScope", modelscope_endpoint)


def bytes_under(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # renamed or removed meanwhile
                pass
    return total


class _Cancelled(BaseException):
    """The user's cancel on its way out of a hub library's download loop. A BaseException, so that the library's
    handlers of ``Exception`` (its retries, its per-file error wrapping, ours) do not take it for a network error;
    ``progress_in_bytes`` turns it back into the cancel itself."""


# check(inside_library=False): raises the user's cancel, if one came; inside a hub library's loop (its progress
# hook) as a _Cancelled, so that the library lets it through
CancelCheck = Callable[..., None]


@contextmanager
def progress_in_bytes(folder: Path, total: int | None, progress: DownloadProgress,
                      what: str) -> Iterator[CancelCheck]:
    """While the body downloads into ``folder``, ``progress(bytes written, total, what)`` every PROGRESS_EVERY_S
    seconds from a small thread (rising only, at most ``total``), then ``(total, total)`` when the body succeeds.
    Without a total (the hub listed no sizes) it reports (0, 1) and (1, 1). The thread runs in the caller's context
    (ComfyUI finds the node there); an exception the progress callback raises there (the user's cancel) is raised
    here once the body returns (in place of any error the body raised meanwhile), or sooner where the body calls the
    ``check`` it is given: between files, and inside a file where the hub library's progress hook calls
    ``check(inside_library=True)`` (``huggingface_cancel_hook``, ``modelscope_cancel_hook``)."""
    if not total:
        progress(0, 1, what)
        yield lambda inside_library=False: None
        progress(1, 1, what)
        return
    folder = Path(folder)
    start = bytes_under(folder)
    stop = threading.Event()
    raised: list[BaseException] = []
    shown = [0]  # the last count sent

    def watch() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            done = min(max(bytes_under(folder) - start, 0), total)
            if done > shown[0]:
                shown[0] = done
                try:
                    progress(done, total, what)
                except BaseException as e:  # noqa: BLE001 - handed to the downloading thread
                    raised.append(e)
                    return

    progress(0, total, what)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(watch,), daemon=True,
                              name="aesthete-download-progress")
    thread.start()

    def check(inside_library: bool = False) -> None:
        if raised:
            if inside_library:
                raise _Cancelled
            raise raised[0]

    try:
        yield check
    except BaseException:
        if not raised:  # not the user's cancel (a _Cancelled, or a file failing as the cancel came): raised below
            raise
    finally:
        stop.set()
        thread.join()
    if raised:
        raise raised[0]
    if shown[0] < total:
        progress(total, total, what)


def huggingface_cancel_hook(download: Callable, check: CancelCheck) -> dict:
    """``hf_hub_download``'s keyword for a progress bar that calls ``check`` on every piece written, so the user's
    cancel stops a file mid-way; none where this huggingface_hub takes no ``tqdm_class`` (then between files)."""
    if "tqdm_class" not in inspect.signature(download).parameters:
        return {}
    from huggingface_hub.utils import tqdm

    class CancellableBar(tqdm):
        def update(self, n=1):
            check(inside_library=True)
            return super().update(n)

    return {"tqdm_class": CancellableBar}


def modelscope_cancel_hook(download: Callable, check: CancelCheck) -> dict:
    """The same for modelscope's ``snapshot_download``: a progress callback, where this modelscope takes them."""
    if "progress_callbacks" not in inspect.signature(download).parameters:
        return {}
    from modelscope.hub.callback import ProgressCallback

    class CancellableCallback(ProgressCallback):
        def update(self, size: int) -> None:
            check(inside_library=True)

    return {"progress_callbacks": [CancellableCallback]}


def fetch_huggingface_files(repo: str, names: Iterable[str], dest: Path, progress: DownloadProgress) -> None:
    """``names`` of the Hugging Face repository ``repo`` into ``dest`` (their paths kept), one at a time, the
    progress in bytes against the sizes the hub reports for them. A file that fails is named in the error."""
    require_huggingface()
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    names = list(names)
    if not names:
        raise FileNotFoundError(f"Hugging Face {repo} lists none of the files needed")

    def named(name: str, call: Callable[[], object]):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - named: the library's message may show only a cut URL
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OSError(f"{name} of {repo}: {why}") from e

    sizes = [named(name, lambda n=name: get_hf_file_metadata(hf_hub_url(repo, n)).size) for name in names]
    with progress_in_bytes(dest, None if None in sizes else sum(sizes), progress, f"Hugging Face {repo}") as check:
        hook = huggingface_cancel_hook(hf_hub_download, check)
        for name in names:
            check()
            named(name, lambda n=name: hf_hub_download(repo, n, local_dir=str(dest), **hook))


def modelscope_files(repo: str) -> dict[str, int | None]:
    """Every file of the ModelScope repository ``repo`` with its size in bytes (None where none is listed). The hub
    lists folders too; modelscope 1.40 no longer says which entries they are (``Type``), so a path under which
    another is listed is a folder."""
    from modelscope.hub.api import HubApi

    listed = [f for f in HubApi().get_model_files(repo, recursive=True) if f.get("Type") != "tree"]
    folders = {p.rsplit("/", 1)[0] for p in (f["Path"] for f in listed) if "/" in p}
    folders |= {"/".join(f.split("/")[:i]) for f in list(folders) for i in range(1, f.count("/") + 1)}
    return {f["Path"]: (int(f["Size"]) if f.get("Size") is not None else None)
            for f in listed if f["Path"] not in folders}


def total_size(sizes: dict[str, int | None], names: Iterable[str]) -> int | None:
    """The sum of the sizes of ``names``, or None when one is not listed."""
    listed = [sizes.get(n) for n in names]
    return None if None in listed else sum(listed)


def _modelscope_failure(name: str, repo: str, e: Exception) -> OSError:
    """The error of one file: modelscope's own says how many files of the repository failed, not which, nor why; the
    reason is in its ``failed_files``."""
    cause = getattr(e, "failed_files", None) or {}
    cause = cause.get(name, e) if isinstance(cause, dict) else e
    why = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return OSError(f"{name} of {repo}: {why}")


def fetch_modelscope_files(repo: str, names: Iterable[str], dest: Path, progress: DownloadProgress) -> None:
    """``names`` of the ModelScope repository ``repo`` into ``dest`` (their paths kept), one at a time, the progress
    in bytes against the sizes the hub lists for them. A name the hub does not list is named before any download;
    a file that fails (modelscope checks each against the size and sha256 the hub lists) is named in the error.

    Each file is one ``snapshot_download`` limited to it: unlike ``model_file_download`` that checks the file against
    the hub's listing, and unlike one snapshot of every file the user's cancel is taken between files."""
    require_modelscope()
    from modelscope import snapshot_download

    names = list(names)
    if not names:
        raise FileNotFoundError(f"ModelScope {repo} lists none of the files needed")
    sizes = modelscope_files(repo)
    absent = [n for n in names if n not in sizes]
    if absent:
        raise FileNotFoundError(f"ModelScope {repo} does not list {', '.join(absent)}")
    with progress_in_bytes(dest, total_size(sizes, names), progress, f"ModelScope {repo}") as check:
        hook = modelscope_cancel_hook(snapshot_download, check)
        for name in names:
            check()
            try:
                snapshot_download(repo, allow_file_pattern=[glob.escape(name)], local_dir=str(dest), **hook)
            except Exception as e:  # noqa: BLE001 - named: the library names neither the file nor the cause
                raise _modelscope_failure(name, repo, e) from e
            if not (Path(dest) / name).is_file():
                raise FileNotFoundError(f"{name} of {repo}: not downloaded")


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
