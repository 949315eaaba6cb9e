"""Recipient expansion (MAPI ExpandRecips): the aliases(5) parser with its line numbers, and the
expansion at submission: nested, loops failed, duplicates once, the original recipient kept as
ORCPT, owner-NAME as the envelope sender of a list's members, the history written."""

from __future__ import annotations

import pytest

from msgspool.domain.address import domain_of
from msgspool.domain.aliases import ALIAS_COMMAND, ALIAS_FILE, AliasTable, MemberKind, parse_aliases, parse_include
from msgspool.domain.dsn import Action, Handoff, Notify, RecipientDSN, report_action
from msgspool.domain.message import Recipient
from msgspool.domain.recipient import Status
from msgspool.domain.routing import LOCAL, Router, TransportRoute
from msgspool.errors import SubmitError
from msgspool.spooler.intake import Intake, Submission

NOW = 1_700_000_000.0
CONTENT = b"Subject: hi\r\n\r\nhello\r\n"

ALIASES = """\
# the team
team: alice, bob@localhost,
    carol@example.org
  # a comment inside an entry
"Odd Name": alice
root: postmaster
postmaster: ops@example.org
everyone: team, dave, alice
owner-team: lead
owner-lead-list: boss@example.org
lead-list: lead, team
a: b
b: c, a
self: self, self@example.org
"""


def table(text: str = ALIASES) -> AliasTable:
    aliases, problems = parse_aliases(text, "aliases")
    assert problems == []
    return AliasTable.of(aliases)


def local(address: str) -> bool:
    return domain_of(address) == "localhost"


def addresses(text: str, address: str) -> list[str]:
    return [e.address for e in table(text).expand(address, local) or []]


def test_parse_reads_names_members_continuations_quotes_and_comments_with_their_lines() -> None:
    aliases, problems = parse_aliases(ALIASES, "aliases")
    assert problems == []
    by_name = {a.name: a for a in aliases}
    assert [m.value for m in by_name["team"].members] == ["alice", "bob@localhost", "carol@example.org"]
    assert by_name["team"].line == 2 and by_name["odd name"].line == 5
    assert by_name["team"].members[2].line == 2  # a continuation belongs to its entry's first line


def test_parse_reports_each_problem_with_its_line_and_keeps_the_good_entries() -> None:
    text = "ok: alice\nbroken alice\n  cont: x\n\"unclosed: x\nempty:\nok: bob\nbad@name: x\nsp: \"a, b\n"
    aliases, problems = parse_aliases(text, "f")
    assert [a.name for a in aliases] == ["ok"]
    assert [(p.line, p.message.split()[0]) for p in problems] == [
        (2, "bad"), (4, "unterminated"), (5, "alias"), (6, "alias"), (7, "bad"), (8, "unterminated")]
    assert "'broken alice cont'" in problems[0].message  # the continuation line joined its entry
    assert str(problems[0]).startswith("f:2: ")


def test_parse_knows_commands_files_and_includes() -> None:
    aliases, problems = parse_aliases('x: "|/usr/bin/handler --a, b", /var/mail/x/, :include:/etc/list\n', "f")
    assert problems == []
    assert [(m.kind, m.value) for m in aliases[0].members] == [
        (MemberKind.COMMAND, "/usr/bin/handler --a, b"), (MemberKind.FILE, "/var/mail/x/"),
        (MemberKind.INCLUDE, "/etc/list")]
    members, problems = parse_include("# members\nann, ben\ncat@example.org\n", "/etc/list")
    assert problems == [] and [(m.value, m.line) for m in members] == [("ann", 2), ("ben", 2), ("cat@example.org", 3)]


def test_an_address_that_is_no_alias_or_not_local_does_not_expand() -> None:
    t = table()
    assert t.expand("nobody@localhost", local) is None
    assert t.expand("team@example.org", local) is None


def test_expansion_is_nested_in_order_with_duplicates_removed() -> None:
    assert addresses(ALIASES, "everyone@localhost") == [
        "alice@localhost", "bob@localhost", "carol@example.org", "dave@localhost"]
    assert addresses(ALIASES, "Odd Name@localhost") == ["alice@localhost"]
    assert addresses(ALIASES, "ROOT@localhost") == ["ops@example.org"]


def test_an_alias_reached_again_down_its_chain_is_a_loop_and_fails_that_member() -> None:
    expanded = table().expand("a@localhost", local) or []
    assert [(e.address, e.refusal is not None) for e in expanded] == [("c@localhost", False), ("a@localhost", True)]
    loop = expanded[1].refusal
    assert loop is not None and (loop.code, loop.enhanced) == (554, "5.4.6")
    assert "a@localhost -> b@localhost -> a@localhost" in loop.text


def test_an_alias_naming_itself_delivers_to_its_own_mailbox() -> None:
    assert addresses(ALIASES, "self@localhost") == ["self@localhost", "self@example.org"]


def test_owner_name_is_the_sender_of_the_members_and_the_innermost_owner_wins() -> None:
    t = table()
    assert {e.owner for e in t.expand("team@localhost", local) or []} == {"owner-team@localhost"}
    by_address = {e.address: e.owner for e in t.expand("lead-list@localhost", local) or []}
    assert by_address["lead@localhost"] == "owner-lead-list@localhost"
    assert by_address["alice@localhost"] == "owner-team@localhost"  # through team, which has its own owner
    assert addresses(ALIASES, "team-request@localhost") == ["lead@localhost"]  # NAME-request -> owner-NAME


def router() -> Router:
    return Router(["localhost"], [TransportRoute("smtp", frozenset({"SMTP"}), domain_of)])


def intake(text: str = ALIASES, mailboxes: tuple[str, ...] = ()) -> Intake:
    i = Intake(router(), mailboxes=mailboxes, clock=lambda: NOW)
    i.aliases = table(text)
    return i


def test_submission_to_an_alias_gets_its_members_with_the_original_as_orcpt_and_in_the_history() -> None:
    message, copies = intake().build(Submission("app@example.org", ["root@localhost", "ops@example.org"], CONTENT))
    [ops] = message.recipients  # ops@example.org once: expanded from root, then given again
    assert (ops.address, ops.transport, ops.status) == ("ops@example.org", "smtp", Status.QUEUED)
    assert ops.dsn is not None and ops.dsn.orcpt is not None and ops.dsn.orcpt.address == "root@localhost"
    [record] = message.history
    assert (record.hook, record.outcome) == ("aliases", "expanded")
    assert record.detail == "ops@example.org: expanded from root@localhost -> postmaster@localhost (aliases:7)"
    assert copies == []


def test_local_members_are_filed_at_once_and_a_loop_member_fails_with_554() -> None:
    message, copies = intake().build(Submission("", ["a@localhost"], CONTENT))
    assert [(r.address, r.status, r.transport) for r in message.recipients] == [
        ("c@localhost", Status.DELIVERED, LOCAL), ("a@localhost", Status.FAILED, None)]
    assert [c.mailbox for c in copies] == ["c@localhost"]
    failed = message.recipients[1]
    assert failed.last_reply is not None and failed.last_reply.code == 554 and failed.report_owed == "failed"


def test_members_of_a_list_with_an_owner_go_as_a_part_with_that_sender() -> None:
    message, copies = intake().build(Submission("app@example.org", ["team@localhost", "zed@example.org"], CONTENT))
    assert [r.address for r in message.recipients] == ["zed@example.org"]
    [(part, part_copies)] = message.parts
    assert part.sender == "owner-team@localhost" and part.id != message.id
    assert [(r.address, r.status, r.index) for r in part.recipients] == [
        ("alice@localhost", Status.DELIVERED, 0), ("bob@localhost", Status.DELIVERED, 1),
        ("carol@example.org", Status.QUEUED, 2)]
    assert [c.full_content().split(b"\r\n")[0] for c in part_copies] == [b"Return-Path: <owner-team@localhost>"] * 2
    assert copies == []
    assert any(f"message {part.id}" in h.detail for h in message.history)
    assert [h.detail.split(":")[0] for h in part.history if h.outcome == "expanded"] == [
        "alice@localhost", "bob@localhost", "carol@example.org"]
    assert [h.detail.split(":")[0] for h in message.history if h.outcome == "expanded"] == [
        "alice@localhost", "bob@localhost", "carol@example.org"]


def test_a_bounce_to_a_list_keeps_the_null_sender() -> None:
    message, _copies = intake().build(Submission("", ["team@localhost"], CONTENT))
    assert message.parts == () and len(message.recipients) == 3


def test_an_alias_is_a_known_recipient_at_rcpt_time_when_mailboxes_are_listed() -> None:
    i = intake(mailboxes=("alice@localhost",))
    assert i.check_recipient("team@localhost") is None
    assert i.check_recipient("team-request@localhost") is None
    refusal = i.check_recipient("nobody@localhost")
    assert refusal is not None and refusal.code == 550


def test_an_unrouted_submission_leaves_expansion_to_the_delivering_process() -> None:
    i = intake()
    message, copies = i.build(Submission("app@example.org", ["team@localhost"], CONTENT,
                                         recipient_dsn=[RecipientDSN(frozenset({Notify.SUCCESS}))]), route=False)
    [team] = message.recipients
    assert (team.address, team.status, team.transport, copies) == ("team@localhost", Status.QUEUED, None, [])
    outcome = i.expand_later(message, team, NOW)  # what the delivering process does when it claims it
    assert outcome is not None and outcome.status is Status.DELIVERED and outcome.handoff is Handoff.EXPANDED
    [members] = outcome.spawn
    assert outcome.reply is not None and members.id in outcome.reply.text
    assert members.recipients == [] and members.origin == "aliases"  # all of team's: the owner's part
    [(part, part_copies)] = members.parts
    assert part.sender == "owner-team@localhost" and part_copies == ()
    assert [(r.address, r.status, r.transport) for r in part.recipients] == [
        ("alice@localhost", Status.QUEUED, None), ("bob@localhost", Status.QUEUED, None),
        ("carol@example.org", Status.QUEUED, None)]
    assert part.origin == "aliases" and i.expand_later(part, part.recipients[0], NOW) is None  # never twice
    assert report_action(outcome.status, team.dsn or RecipientDSN(), handoff=outcome.handoff) is Action.EXPANDED
    assert i.expand_later(message, Recipient("nobody@localhost"), NOW) is None


def test_a_command_member_expands_to_the_aliases_pipe_address_type_once() -> None:
    aliases, problems = parse_aliases('hook: "|/usr/bin/handler --x", alice\nboth: hook, "|/usr/bin/handler --x"\n')
    assert problems == []
    expanded = AliasTable.of(aliases).expand("both@localhost", local) or []
    assert [(e.address, e.addrtype) for e in expanded] == [
        ("/usr/bin/handler --x", ALIAS_COMMAND), ("alice@localhost", "SMTP")]
    assert AliasTable.of(aliases).has_commands and not table().has_commands


def test_intake_gives_a_command_member_its_address_type_and_refuses_that_type_from_submitters() -> None:
    i = intake('hook: "|/usr/bin/handler"\n')
    message, _copies = i.build(Submission("app@example.org", ["hook@localhost"], CONTENT))
    [command] = message.recipients
    assert (command.address, command.addrtype, command.transport) == ("/usr/bin/handler", ALIAS_COMMAND, None)
    assert command.status is Status.FAILED  # this router has no transport for it: no route
    with pytest.raises(SubmitError) as refused:
        i.build(Submission("app@example.org", ["/bin/sh -c id"], CONTENT, addrtypes=[ALIAS_COMMAND]))
    assert refused.value.reply.code == 550


def test_file_members_get_the_file_address_type_with_the_alias_as_orcpt_and_submitters_may_not_use_it() -> None:
    i = intake("archive: /var/mail/Archive/, /var/mail/archive.mbox, alice\n")
    message, _copies = i.build(Submission("app@example.org", ["archive@localhost", "alice@localhost"], CONTENT))
    assert [(r.address, r.addrtype) for r in message.recipients] == [
        ("/var/mail/Archive/", ALIAS_FILE), ("/var/mail/archive.mbox", ALIAS_FILE), ("alice@localhost", "SMTP")]
    orcpt = message.recipients[0].dsn.orcpt if message.recipients[0].dsn else None
    assert orcpt is not None and orcpt.address == "archive@localhost"
    assert "/var/mail/Archive/: expanded from archive@localhost (aliases:1)" in [h.detail for h in message.history]
    for addrtype in (ALIAS_FILE, "alias-file"):
        with pytest.raises(SubmitError) as refused:
            i.build(Submission("app@example.org", ["/etc/passwd"], CONTENT, addrtypes=[addrtype]))
        assert (refused.value.reply.code, refused.value.reply.enhanced) == (550, "5.7.1")


def test_a_sender_asking_for_success_gets_expanded_for_the_alias_and_its_members_are_not_asked_again() -> None:
    success_failure = RecipientDSN(frozenset({Notify.SUCCESS, Notify.FAILURE}))
    message, _copies = intake().build(Submission("", ["root@localhost"], CONTENT, recipient_dsn=[success_failure]))
    [alias, ops] = message.recipients
    assert (alias.address, alias.status, alias.next_attempt_at, alias.report_owed) == (
        "root@localhost", Status.DELIVERED, None, Action.EXPANDED)
    assert ops.address == "ops@example.org" and ops.dsn is not None
    assert ops.dsn.notify == frozenset({Notify.FAILURE}) and ops.dsn.orcpt is not None  # RFC 3461 6.2.7.3
    only_success = RecipientDSN(frozenset({Notify.SUCCESS}))
    message, _copies = intake().build(Submission("", ["root@localhost"], CONTENT, recipient_dsn=[only_success]))
    assert message.recipients[1].dsn is not None and message.recipients[1].dsn.never  # SUCCESS alone: NEVER
    message, _copies = intake().build(Submission("", ["root@localhost"], CONTENT))  # nothing asked: no row
    assert [r.address for r in message.recipients] == ["ops@example.org"]
