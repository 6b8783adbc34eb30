"""Key store: files, modes, passphrases, and machines that hold public keys only."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.errors import KeyExistsError, KeyNotFoundError, SealingError, WrongPassphraseError
from storage.keys import KDF_SCRYPT, KeyStore
from storage.sealing import ALG_HYBRID, ALG_X25519, SealContext, seal, unseal

PASSPHRASE = b"correct horse battery staple"
ROLE = "transcription"
CONTEXT = SealContext(case_id=1, object_id="ab" * 16, kind="recording")


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys")


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    yield
    os.umask(previous)


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def edit_json(path: Path, **changes: object) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def test_init_returns_loadable_public(store: KeyStore) -> None:
    created = store.init_role(ROLE, PASSPHRASE)

    assert store.load_public(ROLE) == created


def test_private_matches_public(store: KeyStore) -> None:
    created = store.init_role(ROLE, PASSPHRASE)

    assert store.load_private(ROLE, PASSPHRASE).key_id == created.key_id


def test_loaded_keys_round_trip(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)
    sealed = seal(b"audio", CONTEXT, [store.load_public(ROLE)])
    private_key = store.load_private(ROLE, PASSPHRASE)

    assert unseal(sealed.ciphertext, CONTEXT, sealed.wraps[0], private_key) == b"audio"


def test_default_algorithm_is_hybrid(store: KeyStore) -> None:
    assert store.init_role(ROLE, PASSPHRASE).algorithm == ALG_HYBRID


def test_x25519_keys(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE, ALG_X25519)

    assert store.load_private(ROLE, PASSPHRASE).algorithm == ALG_X25519


def test_scrypt_kdf(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, kdf=KDF_SCRYPT)
    created = store.init_role(ROLE, PASSPHRASE)

    assert store.load_private(ROLE, PASSPHRASE).key_id == created.key_id


def test_scrypt_recorded_in_file(tmp_path: Path) -> None:
    KeyStore(tmp_path, kdf=KDF_SCRYPT).init_role(ROLE, PASSPHRASE)
    document = json.loads((tmp_path / f"{ROLE}.private.json").read_text())

    assert document["kdf"]["name"] == "scrypt"


def test_argon2id_is_default(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)
    document = json.loads((store.directory / f"{ROLE}.private.json").read_text())

    assert document["kdf"]["name"] == "argon2id"


def test_wrong_passphrase(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)

    with pytest.raises(WrongPassphraseError):
        store.load_private(ROLE, b"wrong passphrase")


def test_wrong_passphrase_names_variable(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)

    with pytest.raises(WrongPassphraseError, match="CALLCENTER_TRANSCRIPTION_PASSPHRASE"):
        store.load_private(ROLE, b"wrong passphrase")


def test_wrong_passphrase_not_in_message(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)

    with pytest.raises(WrongPassphraseError) as caught:
        store.load_private(ROLE, b"wrong passphrase")

    assert "wrong passphrase" not in str(caught.value)


def test_private_file_mode(store: KeyStore, permissive_umask: None) -> None:
    store.init_role(ROLE, PASSPHRASE)

    assert file_mode(store.directory / f"{ROLE}.private.json") == 0o600


def test_public_file_mode(store: KeyStore, permissive_umask: None) -> None:
    store.init_role(ROLE, PASSPHRASE)

    assert file_mode(store.directory / f"{ROLE}.public.json") == 0o644


def test_no_temporary_files_left(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)
    names = sorted(path.name for path in store.directory.iterdir())

    assert names == [f"{ROLE}.private.json", f"{ROLE}.public.json"]


@pytest.mark.parametrize(
    "encode",
    [
        lambda value: value,
        lambda value: value.hex().encode(),
        lambda value: base64.b64encode(value),
    ],
    ids=["raw", "hex", "base64"],
)
def test_passphrase_not_in_files(store: KeyStore, encode: Callable[[bytes], bytes]) -> None:
    store.init_role(ROLE, PASSPHRASE)
    encoded = encode(PASSPHRASE)

    for path in store.directory.iterdir():
        assert encoded not in path.read_bytes(), path.name


def test_private_parts_not_in_file(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)
    raw = store.load_private(ROLE, PASSPHRASE).raw
    content = (store.directory / f"{ROLE}.private.json").read_bytes()

    assert base64.b64encode(raw[:48]) not in content


def test_public_only_directory_loads_public(store: KeyStore, tmp_path: Path) -> None:
    created = store.init_role(ROLE, PASSPHRASE)
    shipped = tmp_path / "intake-keys"
    shipped.mkdir()
    for path in store.directory.glob("*.public.json"):
        shutil.copy(path, shipped)

    assert KeyStore(shipped).load_public(ROLE) == created


def test_public_only_directory_has_no_private(store: KeyStore, tmp_path: Path) -> None:
    store.init_role(ROLE, PASSPHRASE)
    (store.directory / f"{ROLE}.private.json").unlink()

    assert not store.has_private(ROLE)


def test_missing_private_raises(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)
    (store.directory / f"{ROLE}.private.json").unlink()

    with pytest.raises(KeyNotFoundError, match="callcenter keys init"):
        store.load_private(ROLE, PASSPHRASE)


def test_missing_key_names_directory(store: KeyStore) -> None:
    with pytest.raises(KeyNotFoundError) as caught:
        store.load_public(ROLE)

    assert str(store.directory) in str(caught.value)


def test_missing_key_names_role(store: KeyStore) -> None:
    with pytest.raises(KeyNotFoundError, match=ROLE):
        store.load_public(ROLE)


def test_has_private_after_init(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)

    assert store.has_private(ROLE)


def test_roles_listed(store: KeyStore) -> None:
    store.init_role("transcription", PASSPHRASE, ALG_X25519)
    store.init_role("case_office", PASSPHRASE, ALG_X25519)

    assert store.roles() == ["case_office", "transcription"]


def test_roles_of_missing_directory(tmp_path: Path) -> None:
    assert KeyStore(tmp_path / "absent").roles() == []


def test_existing_key_not_overwritten(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE)

    with pytest.raises(KeyExistsError):
        store.init_role(ROLE, b"another passphrase")


def test_existing_key_kept_after_refusal(store: KeyStore) -> None:
    created = store.init_role(ROLE, PASSPHRASE)
    with pytest.raises(KeyExistsError):
        store.init_role(ROLE, b"another passphrase")

    assert store.load_private(ROLE, PASSPHRASE).key_id == created.key_id


def test_replace_creates_new_key(store: KeyStore) -> None:
    old = store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    new = store.init_role(ROLE, b"new passphrase", ALG_X25519, replace=True)

    assert new.key_id != old.key_id


def test_replace_retires_old_files(store: KeyStore) -> None:
    old = store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    store.init_role(ROLE, b"new passphrase", ALG_X25519, replace=True)

    assert (store.directory / f"{ROLE}.{old.key_id}.private.json").exists()


def test_retired_files_not_listed(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    store.init_role(ROLE, b"new passphrase", ALG_X25519, replace=True)

    assert store.roles() == [ROLE]


def test_empty_passphrase_rejected(store: KeyStore) -> None:
    with pytest.raises(SealingError, match="empty"):
        store.init_role(ROLE, b"")


@pytest.mark.parametrize("role", ["../escape", "a/b", "UPPER", ""])
def test_unsafe_role_rejected(store: KeyStore, role: str) -> None:
    with pytest.raises(SealingError, match="role name"):
        store.load_public(role)


def test_edited_salt_fails_like_passphrase(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    path = store.directory / f"{ROLE}.private.json"
    kdf = json.loads(path.read_text())["kdf"]
    kdf["salt"] = base64.b64encode(b"\x00" * 16).decode()
    edit_json(path, kdf=kdf)

    with pytest.raises(WrongPassphraseError):
        store.load_private(ROLE, PASSPHRASE)


def test_edited_key_id_rejected(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    edit_json(store.directory / f"{ROLE}.private.json", key_id="0" * 32)

    with pytest.raises(WrongPassphraseError):
        store.load_private(ROLE, PASSPHRASE)


def test_edited_public_key_id_rejected(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    edit_json(store.directory / f"{ROLE}.public.json", key_id="0" * 32)

    with pytest.raises(SealingError, match="key id"):
        store.load_public(ROLE)


def test_huge_kdf_cost_rejected(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    path = store.directory / f"{ROLE}.private.json"
    kdf = json.loads(path.read_text())["kdf"]
    kdf["memory_cost"] = 2**40
    edit_json(path, kdf=kdf)

    with pytest.raises(SealingError, match="memory_cost"):
        store.load_private(ROLE, PASSPHRASE)


def test_mismatched_public_file_rejected(store: KeyStore, tmp_path: Path) -> None:
    store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    other = KeyStore(tmp_path / "other")
    other.init_role(ROLE, PASSPHRASE, ALG_X25519)
    shutil.copy(other.directory / f"{ROLE}.public.json", store.directory)

    with pytest.raises(SealingError, match="different keys"):
        store.load_private(ROLE, PASSPHRASE)


def test_file_of_other_role_rejected(store: KeyStore) -> None:
    store.init_role(ROLE, PASSPHRASE, ALG_X25519)
    source = store.directory / f"{ROLE}.public.json"
    shutil.copy(source, store.directory / "case_office.public.json")

    with pytest.raises(SealingError, match="belongs to role"):
        store.load_public("case_office")


def test_invalid_json_rejected(store: KeyStore) -> None:
    store.directory.mkdir()
    (store.directory / f"{ROLE}.public.json").write_text("{not json")

    with pytest.raises(SealingError, match="not valid JSON"):
        store.load_public(ROLE)
