"""Every path a caller can take: the shipped flow walked branch by branch, and random callers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from callcenter.emulator import TwilioEmulator
from callcenter.walk import tone_wav, walk
from storage.models import Call, Case, Recording
from tests.fixtures.services import ACCOUNT_SID, AUTH_TOKEN, LiveServer, Ports

pytestmark = pytest.mark.slow

SPEECH = tone_wav()


def test_walk_covers_every_branch() -> None:
    results = walk("complaints.toml")
    failures = [
        f"{result.script.describe()}: {'; '.join(result.problems)}"
        for result in results
        if not result.ok
    ]
    assert len(results) > 60
    assert failures == []


def test_walk_reaches_every_node() -> None:
    from ivr_flows.loader import load_flow
    from ivr_flows.walk import plan

    flow = load_flow("complaints.toml")
    visited = {step.node for script in plan(flow) for step in script.steps}
    silent_nodes = {
        node.id for node in flow.nodes.values() if node.kind.value in ("message", "hangup", "agent")
    }
    assert set(flow.nodes) - silent_nodes <= visited


@pytest.fixture
def emulator(live_server: LiveServer, ports: Ports) -> Iterator[TwilioEmulator]:
    with TwilioEmulator(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        voice_url=f"{live_server.url}/voice/incoming",
        status_callback_url=f"{live_server.url}/voice/status",
        media_port=ports.media,
        status_callback_delay=0.0,
    ) as running:
        yield running


KEYS = st.one_of(st.none(), st.sampled_from(list("0123456789*#")), st.just("1234567890"))
RECORDINGS = st.one_of(st.none(), st.just("hangup"), st.just(SPEECH))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    digits=st.lists(KEYS, max_size=14),
    recordings=st.lists(RECORDINGS, max_size=3),
    hang_up_after=st.one_of(st.none(), st.integers(min_value=1, max_value=20)),
)
def test_random_callers_never_break(
    emulator: TwilioEmulator,
    live_server: LiveServer,
    digits: list[str | None],
    recordings: list[bytes | str | None],
    hang_up_after: int | None,
) -> None:
    result = emulator.call(digits=digits, recordings=recordings, hang_up_after=hang_up_after)

    server_errors = [
        log.url for log in result.requests if log.status_code is not None and log.status_code >= 500
    ]
    assert server_errors == []
    assert result.errors == []
    assert result.status == "completed"

    runtime = live_server.app.extensions["callcenter_runtime"]
    with runtime.session() as session:
        call = session.scalar(select(Call).where(Call.call_sid == result.call_sid))
        stored = set(
            session.scalars(
                select(Recording.recording_sid).where(Recording.call_sid == result.call_sid)
            )
        )
        case = (
            session.get(Case, call.case_id)
            if call is not None and call.case_id is not None
            else None
        )

    assert call is not None
    assert call.ended_at is not None
    assert stored == set(result.recording_sids)
    assert (case is not None) == bool(result.recording_sids)
