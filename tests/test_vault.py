"""Vault: sealed objects stored, recorded and opened on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.blobs import BlobStore
from storage.db import make_engine, make_session_factory
from storage.errors import BlobNotFoundError, SealingError, TamperedError
from storage.keys import KeyStore
from storage.models import Base, Case, KeyWrap, ObjectKind, SealedObject
from storage.sealing import (
    ALG_X25519,
    ROLE_CASE_OFFICE,
    ROLE_IDENTITY_CUSTODIAN,
    ROLE_TRANSCRIPTION,
    PrivateKey,
    PublicKey,
    generate_key_pair,
)
from storage.vault import erase_sealed, open_sealed, store_sealed

AUDIO = b"RIFF....WAVEfmt " + bytes(range(256)) * 400
PASSPHRASE = b"transcription passphrase"

KeyPair = tuple[PublicKey, PrivateKey]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as session:
        yield session


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture(scope="module")
def transcription() -> KeyPair:
    return generate_key_pair(ROLE_TRANSCRIPTION)


@pytest.fixture(scope="module")
def case_office() -> KeyPair:
    return generate_key_pair(ROLE_CASE_OFFICE, ALG_X25519)


@pytest.fixture
def case_id(session: Session) -> int:
    return add_case(session, "100000001")


def add_case(session: Session, reference: str) -> int:
    case = Case(reference=reference, language="ar")
    session.add(case)
    session.commit()
    return case.id


def store_recording(
    session: Session, blobs: BlobStore, case_id: int | None, *recipients: PublicKey
) -> SealedObject:
    obj = store_sealed(
        session,
        blobs,
        data=AUDIO,
        kind=ObjectKind.RECORDING,
        case_id=case_id,
        recipients=list(recipients),
    )
    session.commit()
    return obj


def reload(engine: Engine, object_id: str) -> tuple[Session, SealedObject]:
    session = make_session_factory(engine)()
    return session, session.get_one(SealedObject, object_id)


def test_round_trip(
    engine: Engine, session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    stored = store_recording(session, blobs, case_id, transcription[0])
    other_session, obj = reload(engine, stored.id)
    with other_session:
        opened = open_sealed(other_session, blobs, obj, transcription[1])

    assert opened == AUDIO


def test_second_recipient_opens(
    session: Session,
    blobs: BlobStore,
    case_id: int,
    transcription: KeyPair,
    case_office: KeyPair,
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0], case_office[0])

    assert open_sealed(session, blobs, obj, case_office[1]) == AUDIO


def test_object_without_case(session: Session, blobs: BlobStore, transcription: KeyPair) -> None:
    obj = store_recording(session, blobs, None, transcription[0])

    assert open_sealed(session, blobs, obj, transcription[1]) == AUDIO


def test_one_wrap_per_recipient(
    session: Session,
    blobs: BlobStore,
    case_id: int,
    transcription: KeyPair,
    case_office: KeyPair,
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0], case_office[0])
    count = session.scalar(select(func.count()).where(KeyWrap.object_id == obj.id))

    assert count == 2


def test_wrap_rows_record_roles(
    session: Session,
    blobs: BlobStore,
    case_id: int,
    transcription: KeyPair,
    case_office: KeyPair,
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0], case_office[0])

    assert sorted(wrap.role for wrap in obj.wraps) == [ROLE_CASE_OFFICE, ROLE_TRANSCRIPTION]


def test_metadata_recorded(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])

    assert (obj.kind, obj.plaintext_size, obj.format_version) == ("recording", len(AUDIO), 1)


def test_ciphertext_size_recorded(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])

    assert obj.ciphertext_size == len(blobs.get(obj.blob_key))


def test_blob_holds_no_plaintext(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])

    assert b"RIFF" not in blobs.get(obj.blob_key)


def test_role_without_wrap_rejected(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])
    _public, custodian = generate_key_pair(ROLE_IDENTITY_CUSTODIAN, ALG_X25519)

    with pytest.raises(SealingError, match=obj.id):
        open_sealed(session, blobs, obj, custodian)


def test_no_recipient_rejected(session: Session, blobs: BlobStore, case_id: int) -> None:
    with pytest.raises(SealingError, match="recipient"):
        store_recording(session, blobs, case_id)


def test_moved_to_other_case(
    engine: Engine, session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    stored = store_recording(session, blobs, case_id, transcription[0])
    other_case = add_case(session, "100000002")
    session.execute(
        update(SealedObject).where(SealedObject.id == stored.id).values(case_id=other_case)
    )
    session.commit()
    other_session, obj = reload(engine, stored.id)

    with other_session, pytest.raises(TamperedError):
        open_sealed(other_session, blobs, obj, transcription[1])


def test_kind_changed(
    engine: Engine, session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    stored = store_recording(session, blobs, case_id, transcription[0])
    session.execute(
        update(SealedObject).where(SealedObject.id == stored.id).values(kind="transcript")
    )
    session.commit()
    other_session, obj = reload(engine, stored.id)

    with other_session, pytest.raises(TamperedError):
        open_sealed(other_session, blobs, obj, transcription[1])


def test_missing_blob(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])
    blobs.delete(obj.blob_key)

    with pytest.raises(BlobNotFoundError):
        open_sealed(session, blobs, obj, transcription[1])


def test_failed_flush_deletes_blob(
    session: Session, blobs: BlobStore, transcription: KeyPair
) -> None:
    # No case 999999 exists, so the foreign key fails the flush after the blob write.
    with pytest.raises(IntegrityError):
        store_recording(session, blobs, 999_999, transcription[0])
    session.rollback()

    assert [path for path in blobs.root.rglob("*") if path.is_file()] == []


def test_erased_cannot_open(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])
    erase_sealed(session, blobs, obj)
    session.commit()

    with pytest.raises(SealingError, match="erased"):
        open_sealed(session, blobs, obj, transcription[1])


def test_erase_deletes_wraps(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])
    erase_sealed(session, blobs, obj)
    session.commit()
    count = session.scalar(select(func.count()).where(KeyWrap.object_id == obj.id))

    assert count == 0


def test_erase_deletes_blob(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])
    erase_sealed(session, blobs, obj)
    session.commit()

    assert not blobs.exists(obj.blob_key)


def test_erase_twice_is_quiet(
    session: Session, blobs: BlobStore, case_id: int, transcription: KeyPair
) -> None:
    obj = store_recording(session, blobs, case_id, transcription[0])
    erase_sealed(session, blobs, obj)
    erased_at = obj.erased_at
    erase_sealed(session, blobs, obj)

    assert obj.erased_at == erased_at


def test_public_only_writer(
    engine: Engine, session: Session, blobs: BlobStore, case_id: int, tmp_path: Path
) -> None:
    # The intake machine has only public key files; the transcription machine opens.
    transcription_keys = KeyStore(tmp_path / "transcription-keys")
    transcription_keys.init_role(ROLE_TRANSCRIPTION, PASSPHRASE)
    intake_keys = KeyStore(tmp_path / "intake-keys")
    intake_keys.directory.mkdir()
    shutil.copy(transcription_keys.directory / "transcription.public.json", intake_keys.directory)

    stored = store_recording(session, blobs, case_id, intake_keys.load_public(ROLE_TRANSCRIPTION))
    private_key = transcription_keys.load_private(ROLE_TRANSCRIPTION, PASSPHRASE)
    other_session, obj = reload(engine, stored.id)
    with other_session:
        opened = open_sealed(other_session, blobs, obj, private_key)

    assert not intake_keys.has_private(ROLE_TRANSCRIPTION)
    assert opened == AUDIO
