"""Build the twilio-python REST client, pointed at Twilio or at the local emulator."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

TWILIO_API_BASE_URL = "https://api.twilio.com"


class RebasedHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio ships no type hints
    """A TwilioHttpClient that sends every request to one other origin.

    twilio-python 9.13 builds absolute URLs on `https://api.twilio.com` (or on an
    edge/region host such as `api.dublin.ie1.twilio.com`), and other products use other
    hosts. This client replaces the scheme and host of every URL with `api_base_url` and
    puts that URL's path, if any, in front of the original path, so the REST calls of
    `twilio.rest.Client` reach the emulator.
    """

    def __init__(self, api_base_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._base = urlsplit(api_base_url)

        # Proxy variables must not send emulator traffic to another host.
        if self.session is not None:
            self.session.trust_env = False

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """Send the request to the rebased URL; the arguments are those of the base class."""
        response: Response = super().request(
            method,
            self.rebase(url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        return response

    def rebase(self, url: str) -> str:
        """Return the URL with the scheme and host of the base URL and its path prefix."""
        original = urlsplit(url)
        path = self._base.path.rstrip("/") + original.path

        return urlunsplit((self._base.scheme, self._base.netloc, path, original.query, ""))


def make_rest_client(
    account_sid: str,
    auth_token: str,
    api_base_url: str = TWILIO_API_BASE_URL,
    timeout: float = 30.0,
) -> Client:
    """Build a Twilio REST client whose requests time out after `timeout` seconds.

    With any `api_base_url` other than Twilio's, every request goes to that origin, as
    the emulator's `api_base_url` needs. Raises ValueError for a base URL that is not an
    absolute http(s) URL or a timeout that is not positive.
    """
    if timeout <= 0:
        raise ValueError(f"invalid timeout {timeout}: expected more than 0 seconds")

    base = urlsplit(api_base_url)
    if base.scheme not in ("http", "https") or not base.hostname:
        raise ValueError(f"invalid api_base_url {api_base_url!r}: expected an absolute http(s) URL")

    if api_base_url.rstrip("/") == TWILIO_API_BASE_URL:
        http_client = TwilioHttpClient(timeout=timeout)
    else:
        http_client = RebasedHttpClient(api_base_url, timeout)

    return Client(account_sid, auth_token, http_client=http_client)
