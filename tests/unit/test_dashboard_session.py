"""The dashboard's session helpers: where a login may send the browser back to (a path of this
site only: no open redirect), and the CSRF token a cookie-signed request must carry."""

from __future__ import annotations

import pytest

from msgspool.web.access import csrf_token
from msgspool.web.dashboard import safe_next


@pytest.mark.parametrize("given, expected", [
    ("/", "/"), ("/?status=deferred", "/?status=deferred"), ("/messages/01ABC", "/messages/01ABC"),
    (None, "/"), ("", "/"), ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("evil.example", "/"),
    ("/\\evil.example", "/"), ("\\\\evil.example", "/"), ("javascript:alert(1)", "/"),
])
def test_a_login_goes_back_only_to_a_path_of_this_site(given: object, expected: str) -> None:
    assert safe_next(given) == expected


def test_the_csrf_token_is_the_sessions_own_and_not_its_secret() -> None:
    a, b = "msgspool_0123456789ab_" + "a" * 43, "msgspool_0123456789ab_" + "b" * 43
    assert csrf_token(a) == csrf_token(a) and csrf_token(a) != csrf_token(b)
    assert a not in csrf_token(a) and len(csrf_token(a)) == 64
