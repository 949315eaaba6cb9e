"""The hook model (domain/hooks.py) and the built-in header and rewrite hooks, without I/O."""

from __future__ import annotations

import pytest

from msgspool.config import Settings
from msgspool.domain.hooks import (
    Draft,
    DraftRecipient,
    Hold,
    HookError,
    HookScope,
    Preprocessed,
    Reject,
    describe,
    judge,
)
from msgspool.errors import ConfigError
from msgspool.hooks.headers import CompleteHeaders, HeaderChecks, header_fields
from msgspool.hooks.rewrite import Rewrite, canonical_lookup, rewrite_fields
from msgspool.spooler.hooks import LoadedHook, Preprocessor

CONTENT = b"From: Alice <a@old.example>\r\nTo: b@example.com,\r\n c@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def draft(*addresses: str, content: bytes = CONTENT) -> Draft:
    return Draft("Q1", "a@old.example", [DraftRecipient(a, index=i) for i, a in enumerate(addresses)], content)


def test_none_means_the_draft_as_the_hook_left_it() -> None:
    before = draft("b@example.com")
    assert judge(None, before) == [before]


def test_verdicts_pass_through() -> None:
    assert judge(Hold("later"), draft("b@x.org")) == Hold("later")
    assert isinstance(judge(Reject.because("no"), draft("b@x.org")), Reject)


class Answers:
    """A coroutine hook that answers `answer` (raises it when it is an exception)."""

    def __init__(self, name: str, answer: object) -> None:
        self.name, self.answer = name, answer

    async def preprocess(self, draft: Draft) -> object:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def preprocess(*answers: object) -> Preprocessed:
    pipeline = Preprocessor([LoadedHook(Answers(f"h{i}", a), HookScope(), 1.0) for i, a in enumerate(answers)])
    try:
        return await pipeline.run(draft("b@example.com"))
    finally:
        pipeline.close()


async def test_a_hooks_hold_lets_the_hooks_after_it_run_and_keeps_their_drafts() -> None:
    changed = draft("b@example.com", content=b"Subject: signed\r\n\r\nbody\r\n")
    result = await preprocess(Hold("look"), changed, Hold("again"))
    assert (result.verdict, result.hold) == (None, Hold("look"))  # the first reason
    assert result.drafts == [changed]
    assert [h.outcome for h in result.history] == ["held", "changed", "held"]


@pytest.mark.parametrize(("later", "verdict"), [
    (Reject.because("no"), Reject.because("no")),
    (RuntimeError("bug"), Hold("hook h1 failed: RuntimeError: bug")),  # not done: release runs the hooks again
])
async def test_a_reject_or_a_failure_after_a_hooks_hold_stops_the_hooks(later: object, verdict: object) -> None:
    result = await preprocess(Hold("look"), later)
    assert result.verdict == verdict


@pytest.mark.parametrize("answer", [42, "text", [], [1, 2], {"a": 1}])
def test_anything_else_is_garbage(answer: object) -> None:
    with pytest.raises(HookError):
        judge(answer, draft("b@example.com"))


def test_a_recipient_may_not_go_into_two_parts_of_a_split() -> None:
    before = draft("b@example.com")
    with pytest.raises(HookError, match="twice"):
        judge([before.copy(), before.copy()], before)


def test_describe_names_what_changed() -> None:
    before = draft("b@example.com")
    after = before.copy()
    after.sender = "x@new.example"
    after.content += b"more\r\n"
    record = describe(before, [after])
    assert record is not None and (record.outcome, record.detail) == ("changed", "sender, content")
    assert describe(before, [before.copy()]) is None


def test_scope_matches_address_type_and_domain() -> None:
    scope = HookScope(frozenset({"SMTP"}), (".example.com",))
    assert scope.applies([DraftRecipient("b@mx.example.com")])
    assert not scope.applies([DraftRecipient("b@example.org")])
    assert not scope.applies([DraftRecipient("https://x.example.com/", "HTTP")])
    assert HookScope().applies([DraftRecipient("anything", "HTTP")])


def test_header_fields_are_unfolded() -> None:
    assert header_fields(CONTENT)[1] == "To: b@example.com, c@example.com"


def test_header_checks_reject_hold_and_pass() -> None:
    hook = HeaderChecks("c", Settings(), {"rules": [
        {"pattern": "^Subject: hi$", "action": "hold", "text": "look at it"},
        {"pattern": "^To:.*c@example", "text": "not c"}]})
    assert hook.preprocess(draft("b@example.com")) == Reject.because("not c")  # the first field that matches
    calm = HeaderChecks("c", Settings(), {"rules": [{"pattern": "^Subject: hi$", "action": "hold"}]})
    assert isinstance(calm.preprocess(draft("b@example.com")), Hold)
    assert calm.preprocess(draft("b@example.com", content=b"Subject: no\r\n\r\n")) is None


@pytest.mark.parametrize("rule", [{"action": "reject"}, {"pattern": "(", "action": "reject"},
                                  {"pattern": "x", "action": "bounce"}])
def test_a_bad_header_check_rule_is_a_configuration_error(rule: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        HeaderChecks("c", Settings(), {"rules": [rule]})


def test_complete_headers_adds_only_what_is_missing() -> None:
    hook = CompleteHeaders("h", Settings(hostname="mx.test"), {})
    done = hook.preprocess(draft("b@example.com"))
    assert done is not None
    names = [f.split(":")[0] for f in header_fields(done.content)]
    assert names[:2] == ["Date", "Message-ID"]
    assert hook.preprocess(done) is None


def test_canonical_lookup_tries_the_address_then_the_domain() -> None:
    table = {"a@old.example": "alice@new.example", "@old.example": "@new.example", "@gone.example": "x@y.example"}
    assert canonical_lookup(table, "A@old.example") == "alice@new.example"
    assert canonical_lookup(table, "b@old.example") == "b@new.example"
    assert canonical_lookup(table, "b@gone.example") == "x@y.example"
    assert canonical_lookup(table, "b@other.example") == "b@other.example"


def test_rewrite_fields_keeps_unmapped_fields_byte_for_byte() -> None:
    out = rewrite_fields(CONTENT, frozenset({"to", "cc"}), lambda a: "z@example.net" if a == "c@example.com" else a)
    assert out.startswith(b"From: Alice <a@old.example>\r\nTo: b@example.com, z@example.net\r\nSubject: hi\r\n\r\n")


def test_rewrite_maps_envelope_and_headers() -> None:
    hook = Rewrite("r", Settings(), {"sender": {"@old.example": "@new.example"},
                                     "recipient": {"b@example.com": "bob@example.com"}})
    out = hook.preprocess(draft("b@example.com"))
    assert out.sender == "a@new.example"
    assert [r.address for r in out.recipients] == ["bob@example.com"]
    assert b"From: Alice <a@new.example>\r\n" in out.content and b"To: bob@example.com, c@example.com" in out.content


def test_rewrite_refuses_unknown_options() -> None:
    with pytest.raises(ConfigError, match="unknown options"):
        Rewrite("r", Settings(), {"sendr": {}})
