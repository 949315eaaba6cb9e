"""The hook model (domain/hooks.py), the pipelines that run hooks (spooler/hooks.py) and the
built-in header and rewrite hooks, without I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from msgspool.config import Settings
from msgspool.domain.hooks import (
    AutoReply,
    Delivery,
    Draft,
    DraftRecipient,
    File,
    Forward,
    Hold,
    HookError,
    HookScope,
    Postprocessed,
    Preprocessed,
    Reject,
    describe,
    judge,
    judge_inbound,
)
from msgspool.errors import ConfigError
from msgspool.hooks.headers import CompleteHeaders, HeaderChecks, header_fields
from msgspool.hooks.rewrite import Rewrite, canonical_lookup, rewrite_fields
from msgspool.spooler.hooks import LoadedHook, Postprocessor, Preprocessor

CONTENT = b"From: Alice <a@old.example>\r\nTo: b@example.com,\r\n c@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def draft(*addresses: str, content: bytes = CONTENT) -> Draft:
    return Draft("Q1", "a@old.example", [DraftRecipient(a, index=i) for i, a in enumerate(addresses)], content)


def test_none_means_the_draft_as_the_hook_left_it() -> None:
    before = draft("b@example.com")
    assert judge(None, before) == [before]
    given = before.copy()
    given.content += b"signed\r\n"
    assert judge(None, before, given) == [given]


def test_an_edit_in_place_cannot_make_up_a_stored_recipient() -> None:
    before = draft("b@example.com")
    given = before.copy()
    given.recipients[0].index = 7  # not one of the message's recipients
    with pytest.raises(HookError, match="#7"):
        judge(None, before, given)


def mixed() -> Draft:
    """A draft with an SMTP and a FAX recipient."""
    d = draft("b@example.com", "x-fax:+1 555 0100")
    d.recipients[1].addrtype = "FAX"
    return d


def _broken(change: Callable[[Draft], object]) -> Draft:
    answer = mixed()
    change(answer)
    return answer


@pytest.mark.parametrize(("change", "error"), [
    (lambda d: setattr(d.recipients[0], "addrtype", None), "address type"),
    (lambda d: setattr(d.recipients[0], "addrtype", ""), "address type"),
    (lambda d: setattr(d.recipients[0], "addrtype", "SM\r\nTP"), "address type"),
    (lambda d: setattr(d.recipients[0], "address", "bob"), "bad recipient"),
    (lambda d: setattr(d.recipients[0], "address", "b@example.com\r\nRCPT TO:<x@y.example>"), "bad recipient"),
    (lambda d: setattr(d.recipients[1], "address", "x-fax:+1\n555"), "bad recipient"),
    (lambda d: setattr(d.recipients[0], "index", "0"), "index"),
    (lambda d: setattr(d.recipients[0], "index", True), "index"),
    (lambda d: setattr(d, "recipients", None), "recipients"),
    (lambda d: setattr(d, "recipients", (DraftRecipient("b@example.com", index=0),)), "recipients"),
    (lambda d: setattr(d, "sender", "a@old.example\r\nRCPT TO:<x@y.example>"), "bad sender"),
    (lambda d: setattr(d, "sender", "not an address"), "bad sender"),
    (lambda d: setattr(d, "sender", None), "sender"),
    (lambda d: setattr(d, "content", "text"), "content"),
])
def test_a_malformed_draft_is_garbage(change: Callable[[Draft], object], error: str) -> None:
    with pytest.raises(HookError, match=error):
        judge(_broken(change), mixed())


def test_a_draft_may_have_the_null_sender_and_non_smtp_recipients() -> None:
    answer = _broken(lambda d: setattr(d, "sender", ""))
    assert judge(answer, mixed()) == [answer]


def delivery(content: bytes = CONTENT) -> Delivery:
    return Delivery("Q1", "you@localhost", "you@localhost", "a@old.example", content)


@pytest.mark.parametrize("actions", [
    [AutoReply("a@old.example", "not bytes")],  # type: ignore[arg-type]
    [AutoReply(None, b"Subject: away\r\n\r\n")],  # type: ignore[arg-type]
    [AutoReply("nobody", b"Subject: away\r\n\r\n")],
    [Forward("c@example.com\r\nRCPT TO:<x@y.example>")],
    [Forward(42)],  # type: ignore[arg-type]
    [File(folder=3)],  # type: ignore[arg-type]
    [File(folder="Reports\r\n")],
    [File(flags="\\Seen")],  # type: ignore[arg-type]
    [File(flags=("\\Seen \\Flagged",))],
    [File(flags=(None,))],  # type: ignore[arg-type]
])
def test_inbound_actions_with_malformed_contents_are_garbage(actions: list[Any]) -> None:
    with pytest.raises(HookError):
        judge_inbound(actions, delivery())


def test_inbound_hook_that_breaks_its_delivery_in_place_answered_garbage() -> None:
    given = delivery()
    given.added_headers = None  # type: ignore[assignment]
    with pytest.raises(HookError, match="added_headers"):
        judge_inbound(None, given)
    given = delivery()
    given.actions = [File(), "keep"]  # type: ignore[list-item]
    with pytest.raises(HookError):
        judge_inbound(None, given)


def test_well_formed_inbound_actions_pass() -> None:
    actions = [File("Reports", ("\\Seen",)), File(), Forward("c@example.com"),
               AutoReply("a@old.example", b"Subject: away\r\n\r\nGone.\r\n")]
    assert judge_inbound(tuple(actions), delivery()) == actions


def test_verdicts_pass_through() -> None:
    assert judge(Hold("later"), draft("b@x.org")) == Hold("later")
    assert isinstance(judge(Reject.because("no"), draft("b@x.org")), Reject)


class Answering:
    """A coroutine hook that answers `answer` (raises it when it is an exception)."""

    def __init__(self, name: str, answer: object) -> None:
        self.name, self.answer = name, answer

    async def preprocess(self, draft: Draft) -> object:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def run_answers(*answers: object) -> Preprocessed:
    pipeline = Preprocessor([LoadedHook(Answering(f"h{i}", a), HookScope(), 1.0) for i, a in enumerate(answers)])
    try:
        return await pipeline.run(draft("b@example.com"))
    finally:
        pipeline.close()


async def test_a_hooks_hold_lets_the_hooks_after_it_run_and_keeps_their_drafts() -> None:
    changed = draft("b@example.com", content=b"Subject: signed\r\n\r\nbody\r\n")
    result = await run_answers(Hold("look"), changed, Hold("again"))
    assert (result.verdict, result.hold) == (None, Hold("look"))  # the first reason
    assert result.drafts == [changed]
    assert [h.outcome for h in result.history] == ["held", "changed", "held"]


@pytest.mark.parametrize(("later", "verdict"), [
    (Reject.because("no"), Reject.because("no")),
    (RuntimeError("bug"), Hold("hook h1 failed: RuntimeError: bug")),  # not done: release runs the hooks again
])
async def test_a_reject_or_a_failure_after_a_hooks_hold_stops_the_hooks(later: object, verdict: object) -> None:
    result = await run_answers(Hold("look"), later)
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


def test_a_delivery_shows_the_header_lines_added_so_far_above_its_content() -> None:
    delivery = Delivery("Q1", "you@localhost", "you@localhost", "a@old.example", CONTENT)
    assert delivery.with_added_headers() == CONTENT
    delivery.added_headers += ["Authentication-Results: mx.test; dkim=fail", "X-Spam: yes\r\n folded"]
    assert delivery.with_added_headers() == (b"Authentication-Results: mx.test; dkim=fail\r\nX-Spam: yes\r\n"
                                             b" folded\r\n" + CONTENT)
    assert delivery.content == CONTENT


def test_scope_matches_address_type_and_domain() -> None:
    scope = HookScope(frozenset({"SMTP"}), (".example.com",))
    assert scope.applies([DraftRecipient("b@mx.example.com")])
    assert not scope.applies([DraftRecipient("b@example.org")])
    assert not scope.applies([DraftRecipient("https://x.example.com/", "HTTP")])
    assert HookScope().applies([DraftRecipient("anything", "HTTP")])


async def preprocess(hook: object, given: Draft) -> Preprocessed:
    pipeline = Preprocessor([LoadedHook(hook, HookScope(), 5.0)])
    try:
        return await pipeline.run(given)
    finally:
        pipeline.close()


async def postprocess(hook: object, given: Delivery) -> Postprocessed:
    pipeline = Postprocessor([LoadedHook(hook, HookScope(), 5.0)])
    try:
        return await pipeline.run(given)
    finally:
        pipeline.close()


def edit(d: Draft) -> None:
    d.content = b"X-Edited: yes\r\n" + d.content
    d.recipients[0].address = "bob@example.net"


class Editor:
    """Changes the draft it is given and answers None, as third-party hooks often do."""

    name = "editor"

    def preprocess(self, d: Draft) -> None:
        edit(d)


class AsyncEditor:
    name = "editor"

    async def preprocess(self, d: Draft) -> None:
        edit(d)


@pytest.mark.parametrize("hook", [Editor(), AsyncEditor()])
async def test_a_hook_that_edits_its_draft_in_place_and_answers_none_sends_the_edited_draft(hook: object) -> None:
    result = await preprocess(hook, draft("b@example.com"))
    assert result.verdict is None
    [sent] = result.drafts
    assert sent.content.startswith(b"X-Edited: yes\r\n") and sent.recipients[0].address == "bob@example.net"
    assert [(h.hook, h.outcome, h.detail) for h in result.history] == [("editor", "changed", "recipients, content")]


class Answers:
    """Answers what it is told to, or raises it."""

    name = "answers"

    def __init__(self, answer: Callable[[Any], object]) -> None:
        self.answer = answer

    def preprocess(self, d: Draft) -> object:
        return self.answer(d)

    def postprocess(self, d: Delivery) -> object:
        return self.answer(d)


class AsyncAnswers(Answers):
    async def preprocess(self, d: Draft) -> object:  # type: ignore[override]
        return self.answer(d)

    async def postprocess(self, d: Delivery) -> object:  # type: ignore[override]
        return self.answer(d)


def _without_addrtype(d: Draft) -> Draft:
    d.recipients[0].addrtype = None  # type: ignore[assignment]
    return d


async def test_a_hook_that_answers_a_malformed_draft_holds_its_message_with_the_error() -> None:
    result = await preprocess(Answers(_without_addrtype), draft("b@example.com"))
    assert isinstance(result.verdict, Hold) and "address type" in result.verdict.reason
    assert result.history[-1].outcome == "error" and "address type" in result.history[-1].detail


def _raise(err: BaseException) -> Callable[[Any], object]:
    def answer(_: object) -> object:
        raise err
    return answer


@pytest.mark.parametrize("kind", [Answers, AsyncAnswers])
@pytest.mark.parametrize("err", [SystemExit(3), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"])
async def test_a_hook_that_exits_or_is_interrupted_holds_its_message_and_the_daemon_runs_on(
        kind: type[Answers], err: BaseException) -> None:
    outbound = await preprocess(kind(_raise(err)), draft("b@example.com"))
    inbound = await postprocess(kind(_raise(err)), delivery())
    for result in (outbound, inbound):
        assert isinstance(result.verdict, Hold) and type(err).__name__ in result.verdict.reason
        assert result.history[-1].outcome == "error"


@pytest.mark.parametrize("kind", [Answers, AsyncAnswers])
async def test_a_hook_raising_cancelled_error_cancels_the_pipeline(kind: type[Answers]) -> None:
    with pytest.raises(asyncio.CancelledError):
        await preprocess(kind(_raise(asyncio.CancelledError())), draft("b@example.com"))


async def test_stopping_while_a_hook_runs_cancels_the_pipeline() -> None:
    started = asyncio.Event()

    class Waits:
        name = "waits"

        async def preprocess(self, d: Draft) -> None:
            started.set()
            await asyncio.sleep(30)

    task = asyncio.ensure_future(preprocess(Waits(), draft("b@example.com")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


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
    assert out.startswith(b"From: Alice <a@old.example>\r\nTo: b@example.com,\r\n z@example.net\r\nSubject: hi\r\n\r\n")


def new_domain(address: str) -> str:
    return address.replace("@old.example", "@new.example")


@pytest.mark.parametrize(("field", "rewritten"), [
    # an encoded comma stays encoded: decoded, "Doe, John" would read as two mailboxes
    (b"From: =?us-ascii?q?Doe=2C_John?= <a@old.example>", b"From: =?us-ascii?q?Doe=2C_John?= <a@new.example>"),
    # a non-ASCII "Last, First", encoded (RFC 2047) or in UTF-8 (RFC 6532): the name is not re-encoded
    (b"From: =?iso-8859-1?q?M=FCller=2C_Hans?= <a@old.example>",
     b"From: =?iso-8859-1?q?M=FCller=2C_Hans?= <a@new.example>"),
    ('From: "Müller, Hans" <a@old.example>'.encode(), 'From: "Müller, Hans" <a@new.example>'.encode()),
    # a group keeps its name and its end, and the empty group stays
    (b"To: Team: a@old.example, Bob <b@old.example>;, undisclosed:;",
     b"To: Team: a@new.example, Bob <b@new.example>;, undisclosed:;"),
    # folding, comments and quoted names stay where they were
    (b'To: "Doe, Jane" <a@old.example> (work),\r\n\tb@old.example,\r\n c@other.example',
     b'To: "Doe, Jane" <a@new.example> (work),\r\n\tb@new.example,\r\n c@other.example'),
])
def test_rewrite_fields_changes_only_the_addresses_in_a_field(field: bytes, rewritten: bytes) -> None:
    out = rewrite_fields(field + b"\r\nSubject: x\r\n\r\nbody\r\n", frozenset({"from", "to"}), new_domain)
    assert out == rewritten + b"\r\nSubject: x\r\n\r\nbody\r\n"


@pytest.mark.parametrize("field", ["To: Müller, Hans <a@old.example>", "To: Bob <a@old.example",
                                   'To: "Bob <a@old.example>', "To: John Doe@old.example"])
def test_rewrite_fields_leaves_a_field_that_is_not_an_address_list_alone(field: str) -> None:
    content = f"{field}\r\n\r\nbody\r\n".encode()
    assert rewrite_fields(content, frozenset({"to"}), new_domain) == content


def test_rewrite_hook_maps_a_non_ascii_last_first_name_instead_of_holding_the_message() -> None:
    content = b"From: =?utf-8?q?M=C3=BCller=2C_Hans?= <a@old.example>\r\nTo: b@example.com\r\n\r\nhi\r\n"
    hook = Rewrite("r", Settings(), {"sender": {"@old.example": "@new.example"}})
    out = hook.preprocess(draft("b@example.com", content=content))
    assert out.content.startswith(b"From: =?utf-8?q?M=C3=BCller=2C_Hans?= <a@new.example>\r\nTo: b@example.com\r\n")


def test_rewrite_maps_envelope_and_headers() -> None:
    hook = Rewrite("r", Settings(), {"sender": {"@old.example": "@new.example"},
                                     "recipient": {"b@example.com": "bob@example.com"}})
    out = hook.preprocess(draft("b@example.com"))
    assert out.sender == "a@new.example"
    assert [r.address for r in out.recipients] == ["bob@example.com"]
    assert b"From: Alice <a@new.example>\r\n" in out.content
    assert b"To: bob@example.com,\r\n c@example.com" in out.content


def test_rewrite_refuses_unknown_options() -> None:
    with pytest.raises(ConfigError, match="unknown options"):
        Rewrite("r", Settings(), {"sendr": {}})
