"""msgspool - the command line.

SYNOPSIS
    msgspool serve [--config FILE] [--data DIR] [--smtp HOST:PORT] [--http HOST:PORT]
                   [--relay HOST:PORT] [--local-domain DOMAIN]... [-v]
    msgspool sendmail [-t] [-i] [-f SENDER] [-F NAME] [-N DSN] [-R RET] [-V ENVID] [RCPT...]
    msgspool queue list [--json] [--all] [--where SELECTOR]
    msgspool queue show ID [--json]
    msgspool queue flush [ID...] | [--destination HOST] [--transport NAME] [--json]
    msgspool queue hold ID... | release ID... | requeue ID... | delete ID... [--json]
    msgspool queue hold|release|delete|flush|requeue --where SELECTOR [--dry-run] [--json]
    msgspool queue resend ID [--json]
    msgspool queue read [--mdn | --no-mdn] ID... | unread ID... [--json]
    msgspool status [--json]
    msgspool transport offline NAME | online NAME [--json]
    msgspool stop [--abort] [--wait SECONDS]
    msgspool node drain [--owner OWNER] [--wait SECONDS]
    msgspool reload
    msgspool route ADDRESS [--addrtype TYPE] [--json]
    msgspool aliases check [FILE] | expand ADDRESS [--json]
    msgspool suppression list [--json] | add ADDRESS [--reason TEXT] [--days N] | remove ADDRESS
    msgspool token create --scope S [--scope S2]... [--name N] | list [--json] | revoke ID-or-NAME
    msgspool user add NAME [--sender PATTERN]... [--update] | delete NAME | list [--json]
    msgspool mailbox export MAILBOX DIR

DESCRIPTION
    Every command finds the spool the same way: --data, else MSGSPOOL_DATA, else ./msgspool-data
    (and --config FILE, or msgspool.toml inside the data directory). Commands that change the queue
    go through the running daemon when there is one (control socket) and straight to the spool
    when there is none, so they work with the daemon down.

EXIT STATUS
    0 success; 1 an unknown message id or mailbox, or a refused operation (`queue resend` of a message
    none of whose recipients failed); 2 usage or configuration error;
    `aliases check`: 1 when the file has problems (each printed as FILE:LINE: message).
    `queue ACTION --where`: 2 for a bad selector (the message names the term), 1 when recipients
    were in flight; `queue read|unread`: 1 when an id stands for no mailbox message (a submission
    without local copies).
    sendmail uses sendmail's codes (sysexits.h): 64 usage, 65 bad message, 75 temporary failure,
    78 no spool in the data directory (without --create). `node drain`: 0 drained, 1 no such live
    node (or not gone in time), 75 no daemon runs here (without --owner).
    Every command exits 75 (EX_TEMPFAIL) when the spool has no room for what it would write.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from msgspool import config
from msgspool.config import Settings
from msgspool.domain.timefmt import iso
from msgspool.errors import (
    ConfigError,
    MsgspoolError,
    NoSpool,
    NotFound,
    NothingToResend,
    SpoolError,
    StorageFull,
    SubmitError,
    UnableToAbort,
    UnknownTransport,
)
from msgspool.ports import Store
from msgspool.spooler import control
from msgspool.spooler.runtime import Spooler
from msgspool.spooler.wiring import load_store

EX_USAGE, EX_DATAERR, EX_TEMPFAIL, EX_CONFIG = 64, 65, 75, 78
T = TypeVar("T")


class CLIError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # Accepted before and after the command; a subcommand's copy must not reset the top one's value.
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--config", metavar="FILE", default=default, help="TOML configuration file")
    parser.add_argument("--data", metavar="DIR", default=default, help="spool directory (default ./msgspool-data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msgspool", description="store-and-forward message spooler")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    _common(serve)
    serve.add_argument("--smtp", metavar="HOST:PORT", help="SMTP listener (default 127.0.0.1:2525)")
    serve.add_argument("--http", metavar="HOST:PORT", help="HTTP API (default 127.0.0.1:8025)")
    serve.add_argument("--relay", metavar="HOST:PORT",
                       help="smarthost for all non-local mail (smtps://HOST:PORT: implicit TLS)")
    serve.add_argument("--local-domain", metavar="DOMAIN", action="append", dest="local_domains")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every delivery")

    sendmail = sub.add_parser("sendmail", help="submit a message from stdin (sendmail-compatible)")
    _common(sendmail)
    sendmail.add_argument("-t", action="store_true", dest="extract", help="recipients from To/Cc/Bcc")
    sendmail.add_argument("-i", action="store_true", dest="ignore_dots", help="a lone '.' does not end input")
    sendmail.add_argument("-o", action="append", default=[], metavar="OPTION", help="sendmail option (-oi)")
    sendmail.add_argument("-f", metavar="SENDER", dest="sender", help="envelope sender")
    sendmail.add_argument("-F", metavar="NAME", dest="full_name", help="sender's full name for From:")
    sendmail.add_argument("-N", metavar="DSN", dest="notify",
                          help="NEVER, or a list of success,failure,delay (RFC 3461)")
    sendmail.add_argument("-R", metavar="RET", dest="ret", help="full or hdrs: what a report returns (RFC 3461)")
    sendmail.add_argument("-V", metavar="ENVID", dest="envid", help="envelope id quoted in reports (RFC 3461)")
    sendmail.add_argument("--create", action="store_true",
                          help="create the spool when the data directory holds none (else: exit 78)")
    sendmail.add_argument("recipients", nargs="*", metavar="RCPT")

    queue = sub.add_parser("queue", help="look at and change the queue")
    _common(queue)
    qsub = queue.add_subparsers(dest="action", required=True)
    qlist = qsub.add_parser("list", help="messages in the outbox")
    qlist.add_argument("--json", action="store_true", help="one JSON object per message")
    qlist.add_argument("--all", action="store_true", help="include finished (sent) messages")
    qlist.add_argument("--where", metavar="SELECTOR",
                       help="only the messages the selector picks: TERM=VALUE,... with destination, sender,"
                            " recipient, subject, status, transport, older-than, newer-than, folder (F|G, or *"
                            " for any), mailbox (the terms of `queue hold --where`)")
    qlist.add_argument("--newest-first", action="store_true",
                       help="the newest message first (default: the oldest, in submission order)")
    qshow = qsub.add_parser("show", help="one message with every recipient")
    qshow.add_argument("id")
    qshow.add_argument("--json", action="store_true")
    qflush = qsub.add_parser("flush", help="retry now: all deferred, the given messages, or one destination")
    qflush.add_argument("ids", nargs="*", metavar="ID")
    qflush.add_argument("--destination", metavar="HOST",
                        help="only recipients for this destination (a nexthop as `status` lists it)")
    qflush.add_argument("--transport", metavar="NAME", help="only recipients of this transport")
    _bulk_options(qflush)
    qresend = qsub.add_parser("resend", help="a new message, linked to this one, to the recipients that failed")
    qresend.add_argument("id")
    qresend.add_argument("--json", action="store_true")
    for name, text in (("hold", "never send until released"), ("release", "undo hold"),
                       ("requeue", "through the outbound hooks again (postsuper -r)"),
                       ("delete", "remove from the spool")):
        p = qsub.add_parser(name, help=text)
        p.add_argument("ids", nargs="*", metavar="ID")
        _bulk_options(p)
    qread = qsub.add_parser("read", help="mark mailbox messages read, answering their read receipt requests")
    qread.add_argument("ids", nargs="+", metavar="ID")
    qread.add_argument("--mdn", action=argparse.BooleanOptionalAction, default=None,
                       help="the user agrees to (or refuses) a read receipt that needs consent (RFC 8098)")
    qread.add_argument("--json", action="store_true", help="one JSON object with what was done")
    qunread = qsub.add_parser("unread", help="mark mailbox messages unread")
    qunread.add_argument("ids", nargs="+", metavar="ID")
    qunread.add_argument("--json", action="store_true", help="one JSON object with what was done")

    for action_parser in qsub.choices.values():
        _common(action_parser)

    status = sub.add_parser("status", help="the status table: spooler and transports")
    _common(status)
    status.add_argument("--json", action="store_true")
    transport = sub.add_parser("transport", help="put a transport offline (it takes no work) or online again")
    _common(transport)
    xsub = transport.add_subparsers(dest="action", required=True)
    for name, text in (("offline", "the transport takes no work: its recipients wait, deferred"),
                       ("online", "the transport works again: what waited for it is due now")):
        p = xsub.add_parser(name, help=text)
        p.add_argument("name", metavar="NAME", help="a transport as `status` lists it")
        p.add_argument("--json", action="store_true")
        _common(p)
    _token_parser(sub.add_parser("token", help="bearer tokens of the HTTP API"))
    _user_parser(sub.add_parser("user", help="accounts of the submission service (SMTP AUTH)"))
    _suppression_parser(sub.add_parser("suppression", help="the suppression list: addresses mail is not sent to"))
    _common(sub.add_parser("reload", help="the daemon reads its configuration again (as on SIGHUP)"))
    fetch = sub.add_parser("fetch", help="poll the fetch accounts now (all, or the one named)")
    fetch.add_argument("name", nargs="?", metavar="NAME", help="a [[fetch]] account as `status` lists it")
    _common(fetch)
    route = sub.add_parser("route", help="which transport and destination an address gets, and why")
    _common(route)
    route.add_argument("address")
    route.add_argument("--addrtype", default="SMTP", help="the address type (default SMTP)")
    route.add_argument("--json", action="store_true")
    aliases = sub.add_parser("aliases", help="the aliases file (the `aliases` setting)")
    _common(aliases)
    asub = aliases.add_subparsers(dest="action", required=True)
    acheck = asub.add_parser("check", help="parse the aliases file and report its problems with line numbers")
    _common(acheck)
    acheck.add_argument("file", nargs="?", help="the file (default: the `aliases` setting)")
    aexpand = asub.add_parser("expand", help="the recipients an address expands to, and through which aliases")
    _common(aexpand)
    aexpand.add_argument("address")
    aexpand.add_argument("--json", action="store_true")
    db = sub.add_parser("db", help="the spool's database")
    dbsub = db.add_subparsers(dest="action", required=True)
    _common(dbsub.add_parser("upgrade", help="bring the schema to this version's (serve does it too); "
                                             "makes the spool if there is none"))
    stop = sub.add_parser("stop", help="stop the daemon: finish what is in flight (--abort: at once)")
    _common(stop)
    stop.add_argument("--abort", action="store_true", help="cancel transactions in flight (crash-safe)")
    stop.add_argument("--wait", type=float, default=60.0, metavar="SECONDS", help="how long to wait for the exit")
    box = sub.add_parser("mailbox", help="local mailboxes in the store")
    _common(box)
    bsub = box.add_subparsers(dest="action", required=True)
    export = bsub.add_parser("export", help="write a mailbox's mail as a Maildir (folders as Maildir++); "
                                            "again later, only what is not there yet")
    _common(export)
    export.add_argument("mailbox", help="the mailbox, e.g. alice@example.org")
    export.add_argument("directory", metavar="DIR", help="the maildir (made if missing)")
    node = sub.add_parser("node", help="the delivery nodes of the spool")
    _common(node)
    nsub = node.add_subparsers(dest="action", required=True)
    drain = nsub.add_parser("drain", help="a node hands its work back and stops (default: this daemon)")
    _common(drain)
    drain.add_argument("--owner", help="the node (its owner as `status` lists it, or a unique start of it)")
    drain.add_argument("--wait", type=float, default=60.0, metavar="SECONDS", help="how long to wait for it to go")
    return parser


def _bulk_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--where", metavar="SELECTOR",
                        help="the messages a selector picks instead of ids: destination=HOST,sender=ADDR,"
                             "recipient=ADDR,status=S,transport=T,older-than=DURATION (1h, 2d); ADDR may be @DOMAIN")
    parser.add_argument("--dry-run", action="store_true", help="with --where: only count (and, with --json, list)"
                                                                " what would be changed")
    parser.add_argument("--json", action="store_true", help="one JSON object with what was done")


def _token_parser(token: argparse.ArgumentParser) -> None:
    _common(token)
    tsub = token.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="a new token; its secret is printed once")
    create.add_argument("--scope", action="append", required=True, metavar="SCOPE", dest="scopes",
                        help="submit, read, admin (implies the others), metrics (GET /metrics only); repeatable")
    create.add_argument("--name", help="a name for logs and history (default: the token's id)")
    tlist = tsub.add_parser("list", help="the tokens (never their secrets)")
    tlist.add_argument("--json", action="store_true", help="one JSON object per token")
    tsub.add_parser("revoke", help="delete a token: it stops working at once").add_argument(
        "token", metavar="ID-or-NAME")
    for action_parser in tsub.choices.values():
        _common(action_parser)


def _user_parser(user: argparse.ArgumentParser) -> None:
    _common(user)
    usub = user.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add", help="a new account; its password from stdin, or asked twice on a terminal")
    add.add_argument("name", help="the login name, usually the user's address")
    add.add_argument("--sender", action="append", default=[], metavar="PATTERN", dest="senders",
                     help="an envelope sender it may use: ADDRESS, @DOMAIN or *; repeatable"
                          " (default: its own address and domain)")
    add.add_argument("--update", action="store_true", help="replace the password (and senders) of an existing user")
    usub.add_parser("delete", help="delete an account: it cannot log in any more").add_argument("name")
    ulist = usub.add_parser("list", help="the accounts (never their passwords)")
    ulist.add_argument("--json", action="store_true", help="one JSON object per user")
    for action_parser in usub.choices.values():
        _common(action_parser)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.command == "serve":
        overrides = {"smtp_listen": args.smtp, "http_listen": args.http, "relay": args.relay,
                     "local_domains": args.local_domains}
    return config.load(args.config, args.data, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
        handler: Callable[[argparse.Namespace, Settings], int] = COMMANDS[args.command]
        return handler(args, settings)
    except CLIError as err:
        print(f"msgspool: {err}", file=sys.stderr)
        return err.code
    except ConfigError as err:
        print(f"msgspool: {err}", file=sys.stderr)
        return 2
    except StorageFull as err:  # nothing changed; the same command works once there is room
        print(f"msgspool: {err}", file=sys.stderr)
        return EX_TEMPFAIL
    except (SpoolError, MsgspoolError) as err:
        print(f"msgspool: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


# -- serve ----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from msgspool.daemon import run
    from msgspool.logs import configure

    configure(settings.log_format, logging.INFO if args.verbose else logging.WARNING, sys.stderr)
    logging.getLogger("msgspool").setLevel(logging.INFO)
    if not args.verbose:
        logging.getLogger("msgspool.delivery").setLevel(logging.WARNING)
    run(settings, reload=lambda: settings_from(args))
    return 0


# -- sendmail -------------------------------------------------------------------------------


def read_message(stream: Any, ignore_dots: bool) -> bytes:
    """Read stdin as sendmail does: a line with a single '.' ends it unless -i; lines get CRLF."""
    lines = []
    for raw in stream:
        line = raw.rstrip(b"\r\n")
        if not ignore_dots and line == b".":
            break
        lines.append(line)
    return b"".join(line + b"\r\n" for line in lines)


def cmd_sendmail(args: argparse.Namespace, settings: Settings) -> int:
    from msgspool.compose import complete_headers, header_recipients, strip_bcc

    ignore_dots = args.ignore_dots or "i" in args.o
    content = read_message(sys.stdin.buffer, ignore_dots)
    sender = args.sender if args.sender is not None else f"{getpass.getuser()}@{settings.local_domains[0]}"
    recipients = list(args.recipients)
    if args.extract:
        recipients += header_recipients(content)
        content = strip_bcc(content)
    if not recipients:
        print("msgspool sendmail: no recipients", file=sys.stderr)
        return EX_USAGE
    content = complete_headers(content, sender, args.full_name, settings.host_name)
    try:
        sub = _submission(sender, recipients, content, args)
    except ValueError as err:
        print(f"msgspool sendmail: {err}", file=sys.stderr)
        return EX_USAGE
    try:
        # Without --create, a mistyped --data would otherwise make a spool that no daemon ever
        # delivers from (10.8): the store is opened only if it exists.
        message_id = _run(settings, lambda s: s.submit(sub), create=args.create)
    except NoSpool:
        print(f"msgspool sendmail: no spool at {settings.spool_path} (a daemon's data directory; --create makes"
              " a new spool)", file=sys.stderr)
        return EX_CONFIG
    except SubmitError as err:
        print(f"msgspool sendmail: {err.reply.line()}", file=sys.stderr)
        return EX_DATAERR if err.reply.permanent else EX_TEMPFAIL
    except StorageFull as err:
        print(f"msgspool sendmail: {err}", file=sys.stderr)
        return EX_TEMPFAIL
    except OSError as err:
        print(f"msgspool sendmail: cannot write to the spool: {err}", file=sys.stderr)
        return EX_TEMPFAIL
    if sys.stdout.isatty():
        print(message_id)
    return 0


def _submission(sender: str, recipients: list[str], content: bytes, args: argparse.Namespace) -> Any:
    """The submission, with sendmail's DSN options (-N, -R, -V) as RFC 3461 requests; ValueError on
    a bad option."""
    from msgspool.domain.dsn import MessageDSN, RecipientDSN, parse_notify, parse_ret
    from msgspool.spooler.intake import Submission

    notify = RecipientDSN(parse_notify(args.notify)) if args.notify else None
    dsn = None
    if args.ret or args.envid:
        if args.envid is not None and not (0 < len(args.envid) <= 100 and args.envid.isprintable()
                                           and args.envid.isascii()):
            raise ValueError("bad -V envelope id: 1 to 100 printable ASCII characters")
        dsn = MessageDSN(parse_ret(args.ret) if args.ret else None, args.envid)
    return Submission(sender=sender, recipients=recipients, content=content, origin="sendmail", dsn=dsn,
                      recipient_dsn=[notify] * len(recipients) if notify else None)


# -- queue ----------------------------------------------------------------------------------


def _no_spool(settings: Settings) -> CLIError:
    return CLIError(f"no spool at {settings.spool_path} (use --data DIR or MSGSPOOL_DATA)")


def _with_store(settings: Settings, operation: Callable[[Store], Awaitable[T]], *, create: bool = False) -> T:
    """Run one operation on the configured store, opened around it (`load_store`: whichever store
    the settings name), so every command works on any store; without `create`, a spool that was
    never made is the "no spool" error and is not made."""

    async def go() -> T:
        store = load_store(settings)
        try:
            await store.open(create=create)
        except NoSpool as err:  # a shared store names its database, not this machine's directory
            raise (CLIError(str(err)) if store.shared else _no_spool(settings)) from err
        try:
            return await operation(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _run(settings: Settings, operation: Callable[[Spooler], Any], create: bool = False) -> Any:
    """Run an operation on the spool directly (no daemon involved); NoSpool when there is none
    and `create` is not given."""

    async def go() -> Any:
        spooler = Spooler(settings)
        await spooler.start(deliver=False, create=create)
        try:
            return await operation(spooler)
        finally:
            await spooler.stop()

    return asyncio.run(go())


def _operate(settings: Settings, op: str, ids: list[str] | None, **options: Any) -> dict[str, Any]:
    """Through the daemon when it runs, else on the spool itself (which must exist: no daemon
    listens on a spool that was never made)."""
    answer = control.request(settings.spool_path, {"op": op, "ids": ids, **options})
    if answer is not None:
        if not answer.get("ok"):
            if answer.get("kind") == "UnknownTransport":
                raise CLIError(str(answer.get("error")))
            if answer.get("kind") == "NotFound":
                raise CLIError(f"no message {answer.get('error')}")
            if answer.get("kind") == "UnableToAbort":
                raise UnableToAbort(str(answer["error"]).removeprefix("unable to ").removesuffix(": in flight"),
                                    answer["ids"], answer["in_flight"], answer["cancelled"])
            if answer.get("kind") == "StorageFull":  # the daemon's spool has no room: 75, as without a daemon
                raise CLIError(str(answer.get("error")), EX_TEMPFAIL)
            raise CLIError(str(answer.get("error")))
        return answer
    try:
        if op == "flush":
            return {"ok": True, "flushed": _run(settings, lambda s: s.flush(
                ids, transport=options.get("transport"), destination=options.get("destination")))}
        if op in ("read", "unread"):
            async def read(s: Spooler) -> dict[str, Any]:
                targets = await s.read_targets(ids or [])
                sent = await s.mark_read(ids or [], op == "read", mdn=options.get("mdn"))
                return {"ok": True, "ids": ids, "targets": targets, "mdn": sent}

            done: dict[str, Any] = _run(settings, read)
            return done
        return {"ok": True, "ids": _run(settings, lambda s: getattr(s, op)(ids))}
    except NoSpool as err:
        raise _no_spool(settings) from err
    except UnknownTransport as err:
        raise CLIError(str(err)) from err
    except NotFound as err:
        raise CLIError(f"no message {err}") from err


def cmd_queue(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        return queue_list(settings, args.json, args.all, args.where, args.newest_first)
    if args.action == "show":
        return queue_show(settings, args.id, args.json)
    if getattr(args, "where", None) is not None or getattr(args, "dry_run", False):
        return queue_bulk(args, settings)
    if args.action == "resend":
        return queue_resend(settings, args.id, args.json)
    if args.action == "flush":
        if args.ids and (args.destination or args.transport):
            raise CLIError("give message ids or --destination/--transport, not both", 2)
        route = {k: v for k, v in (("transport", args.transport), ("destination", args.destination)) if v}
        answer = _operate(settings, "flush", args.ids or None, **route)
        if args.json:
            print(json.dumps({"action": "flush", "ids": args.ids or None, **route, "flushed": answer["flushed"]}))
        else:
            print(f"{answer['flushed']} recipients due now")
        return 0
    if not args.ids:
        raise CLIError(f"queue {args.action}: give message ids, or --where SELECTOR", 2)
    options = {"mdn": args.mdn} if args.action == "read" else {}
    past = {"hold": "held", "release": "released", "requeue": "requeued", "delete": "deleted", "read": "read",
            "unread": "unread"}
    try:
        answer = _operate(settings, args.action, args.ids, **options)
    except UnableToAbort as err:  # MAPI_E_UNABLE_TO_ABORT: say what was done and what was not
        if args.json:
            print(json.dumps({"action": args.action, "ids": err.done, "in_flight": err.in_flight,
                              "cancelled": err.cancelled, "error": str(err)}))
            return 1
        for message_id in err.done:
            print(f"{message_id}: {past[args.action]}")
        for message_id, addresses in err.in_flight.items():
            done = err.cancelled.get(message_id, [])
            print(f"{message_id}: {err}: {', '.join(f'<{a}>' for a in addresses)} in a transaction"
                  + (f"; {past[args.action] if args.action == 'hold' else 'cancelled'}:"
                     f" {', '.join(f'<{a}>' for a in done)}" if done else ""))
        return 1
    if args.action in ("read", "unread"):
        return _said_read(args, answer)
    if args.json:
        print(json.dumps({"action": args.action, "ids": answer["ids"], "in_flight": {}}))
        return 0
    for message_id in answer["ids"]:
        print(f"{message_id}: {past[args.action]}")
    for mdn_id in answer.get("mdn", []):
        print(f"{mdn_id}: read receipt (MDN) submitted")
    return 0


def _said_read(args: argparse.Namespace, answer: dict[str, Any]) -> int:
    """What `queue read|unread` did for each id it was given: the message itself, or — for a
    submission's queue id — each copy filed for its local recipients (issue 13.2); exit 1 when
    an id stands for no mailbox message at all (a submission with only remote recipients)."""
    targets: dict[str, list[dict[str, str]]] = answer.get("targets") or {}
    empty = [i for i in answer["ids"] if not targets.get(i)]
    if args.json:
        print(json.dumps({"action": args.action, "ids": answer["ids"], "targets": targets,
                          "mdn": answer.get("mdn", []), "nothing_for": empty}))
        return 1 if empty else 0
    for message_id in answer["ids"]:
        for target in targets.get(message_id, []):
            if target["id"] == message_id:
                print(f"{message_id}: {args.action}")
            else:
                print(f"{message_id}: copy {target['id']} in {target['mailbox']}: {args.action}")
    for message_id in empty:
        print(f"{message_id}: no copy of it was filed in a local mailbox: nothing marked {args.action}")
    for mdn_id in answer.get("mdn", []):
        print(f"{mdn_id}: read receipt (MDN) submitted")
    return 1 if empty else 0


BULK_PAST = {"hold": "held", "release": "released", "requeue": "requeued", "delete": "deleted", "flush": "flushed"}


def queue_bulk(args: argparse.Namespace, settings: Settings) -> int:
    """`queue ACTION --where SELECTOR [--dry-run]`: select, then act a chunk at a time
    (spooler/bulk.py) — through the daemon when one runs, else on the spool — with a progress
    bar on stderr when it is a terminal."""
    from msgspool.domain.selector import SelectorError, parse_selector

    if args.where is None:
        raise CLIError("--dry-run goes with --where SELECTOR", 2)
    if args.ids or getattr(args, "destination", None) or getattr(args, "transport", None):
        raise CLIError("give message ids (or --destination/--transport) or --where, not both", 2)
    try:
        where = parse_selector(args.where)
    except SelectorError as err:
        raise CLIError(f"--where: {err}", 2) from err
    if not where.in_outbox_only():
        raise CLIError(f"--where: queue {args.action} works on the outbox: no folder or mailbox term"
                       " (but folder=outbox)", 2)
    progress = ProgressBar(BULK_PAST[args.action]) if sys.stderr.isatty() and not args.dry_run else None
    try:
        result = _bulk_run(settings, args.action, where, args.dry_run, progress)
    except NoSpool as err:
        raise _no_spool(settings) from err
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(result.to_json()))
    elif args.dry_run:
        print(f"{len(result.selected)} messages match {where.text} (dry run: nothing changed;"
              f" `queue {args.action} --where ...` without --dry-run would {args.action} them)")
    else:
        flushed = f", {result.flushed} recipients due now" if args.action == "flush" else ""
        print(f"{len(result.done)} of {len(result.selected)} messages matching {where.text}"
              f" {BULK_PAST[args.action]}{flushed}")
        for message_id, addresses in result.in_flight.items():
            print(f"{message_id}: {', '.join(f'<{a}>' for a in addresses)} in a transaction: they go on")
    return 1 if result.in_flight else 0


def _bulk_run(settings: Settings, action: str, where: Any, dry_run: bool, progress: Any) -> Any:
    from msgspool.spooler import bulk

    probe = None if dry_run else control.request(settings.spool_path, {"op": "bulk", "action": action, "ids": []})
    if dry_run or probe is not None:  # selecting is a read: straight from the store, as `queue list`

        async def through_daemon(spooler_store: Store) -> Any:
            async def apply(act: str, ids: list[str]) -> dict[str, Any]:
                answer = await asyncio.to_thread(control.request, settings.spool_path,
                                                 {"op": "bulk", "action": act, "ids": ids})
                if answer is None:
                    raise CLIError("the daemon went away during the run: run the command again")
                if not answer.get("ok"):
                    raise CLIError(str(answer.get("error")))
                return answer

            return await bulk.run(spooler_store, apply, action, where, dry_run=dry_run, progress=progress)

        if probe is not None and not probe.get("ok"):
            raise CLIError(str(probe.get("error")))
        return _with_store(settings, through_daemon)
    return _run(settings, lambda s: bulk.run(s.store, lambda act, ids: bulk.apply_chunk(s, act, ids), action,
                                             where, progress=progress))


class ProgressBar:
    """`[#####.....] 1500/3000 messages held` on stderr, redrawn in place (only on a terminal)."""

    WIDTH = 30

    def __init__(self, verb: str) -> None:
        self.verb, self.drawn = verb, False

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // total if total else self.WIDTH
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} messages {self.verb}")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def queue_resend(settings: Settings, message_id: str, as_json: bool) -> int:
    """MAPI MSGFLAG_RESEND: through the daemon when one runs (it routes and hooks the resend at
    once), else into the spool, for the daemon to route when it starts."""
    answer = control.request(settings.spool_path, {"op": "resend", "ids": [message_id]})
    if answer is not None and not answer.get("ok"):
        kind = answer.get("kind")
        raise CLIError(f"no message {answer.get('error')}" if kind == "NotFound" else str(answer.get("error")))
    if answer is None:
        try:
            answer = _run(settings, lambda s: s.resend(message_id))
        except NoSpool as err:
            raise _no_spool(settings) from err
        except NotFound as err:
            raise CLIError(f"no message {err}") from err
        except NothingToResend as err:
            raise CLIError(str(err)) from err
    answer.pop("ok", None)
    if as_json:
        print(json.dumps(answer))
    else:
        print(f"{message_id}: resent as {answer['id']} to {', '.join(f'<{a}>' for a in answer['recipients'])}")
        if answer.get("skipped"):
            print(f"not resent (only the aliases file may name them): {', '.join(answer['skipped'])}")
    return 0


LIST_PAGE = 500  # messages `queue list` reads at a time: a million cost pages, not memory


def queue_list(settings: Settings, as_json: bool, include_sent: bool, where_text: str | None = None,
               newest_first: bool = False) -> int:
    from msgspool.domain.selector import Selector, SelectorError, parse_selector
    from msgspool.views import message_json, message_line

    folders = ("outbox", "sent") if include_sent else ("outbox",)
    out = sys.stdout
    where = None
    if where_text is not None:
        try:
            where = parse_selector(where_text)
        except SelectorError as err:
            raise CLIError(f"--where: {err}", 2) from err
    if newest_first and where is None:  # the search reads its range backwards; a listing cannot
        where = Selector()
    if where is not None and include_sent and where.folders is None:
        where = dataclasses.replace(where, folders=folders)

    def write(info: Any) -> None:
        out.write((json.dumps(message_json(info)) if as_json else message_line(info)) + "\n")

    async def write_pages(store: Store) -> int:
        count = 0
        after: tuple[float, str] | None = None
        while page := await store.list_messages(folders, "", LIST_PAGE, after=after):
            for info in page:
                count += 1
                write(info)
                if count % 100 == 0:
                    out.flush()
            after = (page[-1].submitted_at, page[-1].id)
        return count

    async def write_search(store: Store) -> int:
        assert where is not None
        count, now = 0, time.time()
        cursor: str | None = ""
        while cursor is not None:  # a sparse search's page may be short or empty: go on to the end
            page, cursor = await store.search(where, now, after=cursor, limit=LIST_PAGE, newest_first=newest_first)
            for info in page:
                write(info)
            count += len(page)
            out.flush()
        return count

    count = _with_store(settings, write_pages if where is None else write_search)
    if not as_json:
        asked = where.text if where is not None else ""  # "": none asked (or only --newest-first)
        out.write(("Mail queue is empty\n" if not asked else f"No message matches {asked}\n")
                  if count == 0 else f"-- {count} messages\n")
    return 0


def queue_show(settings: Settings, message_id: str, as_json: bool) -> int:
    from msgspool.views import message_json, message_line

    info = _with_store(settings, lambda store: store.get(message_id))
    if info is None:
        raise CLIError(f"no message {message_id}")
    if as_json:
        print(json.dumps(message_json(info), indent=2))
        return 0
    print(message_line(info))
    for r in message_json(info)["recipients"]:
        print(f"      {r['address']}: transport={r['transport']} destination={r['destination']}"
              f" attempts={r['attempts']} next={r['next_attempt_at']} relay={r['relay']}")
    return 0


# -- status ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from msgspool.domain.status import stopped
    from msgspool.listeners import configured
    from msgspool.spooler.runtime import add_backlog

    async def read(store: Store) -> tuple[dict[str, int], list[dict[str, Any]], dict[str, float],
                                          list[tuple[str, str, str, int]]]:
        return (await store.counts(), await store.nodes(time.time()), await store.offline_transports(),
                await store.destination_counts())

    counts, nodes, offline, backlog = _with_store(settings, read)
    answer = control.request(settings.spool_path, {"op": "status"})
    if answer is not None and answer.get("ok"):
        table = answer["status"]
    else:  # the daemon is down: nothing runs, whatever the configuration says (issue 10.8)
        table = Spooler(settings).status()
        for row in table["transports"]:  # an operator's offline holds across restarts: say so
            if row["name"] in offline:
                row.update(offline=True, offline_since=iso(offline[row["name"]]),
                           reason=f"transport {row['name']} is offline (since {iso(offline[row['name']])})")
        for row in (table["spooler"], *table["transports"]):
            stopped(row)
        table["listeners"] = configured(settings)
        table["fetch"] = [stopped({"name": a.name, "kind": "fetch", "protocol": a.protocol, "source": a.source,
                                   "mailbox": a.mailbox, "status": "stopped", "fetched": 0, "last_poll_at": None,
                                   "reason": None, "inbound": {"enabled": True, "active": False}})
                          for a in settings.fetch_accounts]
        table["nodes"] = nodes
        add_backlog(table["transports"], backlog)
    table["queue"] = counts
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"spooler    {table['spooler']['status']:<8} {_directions(table['spooler'])}"
          f" active={table['spooler']['active']} subscribers={table['spooler'].get('event_subscribers', 0)}  "
          + " ".join(f"{k}={v}" for k, v in counts.items() if v))
    for row in table["transports"]:
        print(f"transport  {row['name']:<10} {row['status']:<8} {_directions(row)}"
              f" addrtypes={','.join(row['addrtypes'])}  ({row.get('status_string') or row.get('reason')})")
        for dest in row["destinations"]:
            error = f"  ({dest['last_error']})" if dest["last_error"] else ""
            waiting = dest.get("backlog", {}).get("total", 0)
            print(f"    {dest['name']:<30} {dest['status']:<5} connections={dest['connections']}"
                  f" queued={dest['queued']} delivered={dest['delivered']} deferred={dest.get('deferred', 0)}"
                  f" failed={dest.get('failed', 0)} backlog={waiting}{error}")
    for row in table.get("listeners", []):
        print(f"listener   {row['name']:<10} {row['status']:<8} {_directions(row)} {row['address']}"
              f"  ({row['status_string']})")
    now = time.time()
    for row in table.get("fetch", []):
        polled = f" polled {now - row['last_poll_at']:.0f}s ago" if row["last_poll_at"] else ""
        reason = f"  ({row['reason']})" if row["reason"] else ""
        print(f"fetch      {row['name']:<10} {row['status']:<8} {row['source']} -> {row['mailbox']}"
              f" fetched={row['fetched']}{polled}{reason}")
    for node in table.get("nodes", []):
        beat = f"{now - node['heartbeat_at']:.1f}s ago" if node["heartbeat_at"] is not None else "never"
        print(f"node       {node['owner']} {'alive' if node['alive'] else 'dead':<5} host={node['host']}"
              f" pid={node['pid']} heartbeat={beat} leases={node['leases']}{' draining' if node['draining'] else ''}")
    return 0


def _directions(row: dict[str, Any]) -> str:
    """in=on/active out=off: a row's inbound and outbound, as `status` prints them."""
    def one(d: dict[str, bool] | None) -> str:
        return "off" if not d or not d.get("enabled") else "active" if d.get("active") else "on"
    return f"in={one(row.get('inbound'))} out={one(row.get('outbound'))}"


# -- transport offline / online ---------------------------------------------------------------


def cmd_transport(args: argparse.Namespace, settings: Settings) -> int:
    """MAPI's work offline, per transport; through the daemon when one runs, else in the spool
    (which every node of a shared spool and the next start read)."""
    offline = args.action == "offline"
    answer = control.request(settings.spool_path, {"op": args.action, "transport": args.name})
    if answer is not None and not answer.get("ok"):
        raise CLIError(str(answer.get("error")))
    if answer is None:
        try:
            answer = _run(settings, lambda s: s.set_offline(args.name, offline))
        except NoSpool as err:
            raise _no_spool(settings) from err
        except UnknownTransport as err:
            raise CLIError(str(err)) from err
    answer.pop("ok", None)
    if args.json:
        print(json.dumps(answer))
    elif not answer["changed"]:
        print(f"transport {args.name} was {answer['status']} already")
    else:
        released = f"; {answer['released']} waiting recipients due now" if not offline else ""
        print(f"transport {args.name} is {answer['status']}{released}")
    return 0


# -- reload ---------------------------------------------------------------------------------


def cmd_reload(args: argparse.Namespace, settings: Settings) -> int:
    answer = control.request(settings.spool_path, {"op": "reload"})
    if answer is None:
        raise CLIError(f"no daemon runs on {settings.spool_path}")
    if not answer.get("ok"):
        raise CLIError(str(answer.get("error")))
    print("configuration reloaded")
    return 0


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    """Wake the daemon's fetch accounts (fetchmail's wake-up of a running daemon): they poll now."""
    answer = control.request(settings.spool_path, {"op": "fetch", "name": args.name})
    if answer is None:
        raise CLIError(f"no daemon runs on {settings.spool_path}")
    if not answer.get("ok"):
        raise CLIError(str(answer.get("error")))
    print(f"{answer['accounts']} fetch account(s) polling now")
    return 0


# -- route ----------------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    """The route the configuration gives an address (the daemon's, read from the same files)."""
    from msgspool.spooler.wiring import build_router, load_transports

    route, why = build_router(settings, load_transports(settings)).explain(args.address, args.addrtype)
    if args.json:
        print(json.dumps({"address": args.address, "addrtype": args.addrtype.upper(),
                          "transport": route.transport if route else None,
                          "destination": route.nexthop if route else None, "why": why}))
    elif route is None:
        print(f"{args.address}: no route ({why})")
    else:
        print(f"{args.address}: transport {route.transport}, destination {route.nexthop} ({why})")
    return 0 if route is not None else 1


# -- aliases --------------------------------------------------------------------------------


def cmd_aliases(args: argparse.Namespace, settings: Settings) -> int:
    """`aliases check`: every problem of the file, FILE:LINE first (as postalias reports them);
    `aliases expand`: what an address is expanded to at submission, as the daemon would."""
    from msgspool.spooler.aliases import Trust, check_aliases, configured_aliases
    from msgspool.spooler.wiring import build_router, load_transports

    if args.action == "check":
        path = args.file or settings.aliases
        if not path:
            raise CLIError("no aliases file: give one, or set `aliases`", 2)
        table, problems = check_aliases(path, Trust.of(settings))
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 1
        print(f"{path}: {len(table)} aliases, no problems")
        return 0
    router = build_router(settings, load_transports(settings))
    expanded = configured_aliases(settings).expand(args.address, router.is_local)
    rows: list[dict[str, Any]] = [{"address": e.address, "addrtype": e.addrtype, "via": list(e.chain),
                                   "where": e.where, "sender": e.owner,
                                   "refused": e.refusal.line() if e.refusal else None} for e in expanded or []]
    if args.json:
        print(json.dumps({"address": args.address, "alias": expanded is not None, "recipients": rows}))
    elif expanded is None:
        print(f"{args.address}: not an alias")
    for row in [] if args.json else rows:
        extra = f", sender {row['sender']}" if row["sender"] else ""
        refused = f" REFUSED {row['refused']}" if row["refused"] else ""
        print(f"{row['address']}: via {' -> '.join(row['via'])} ({row['where']}{extra}){refused}")
    return 0


# -- stop -----------------------------------------------------------------------------------


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    """Ask the daemon to stop (orderly, or --abort) and wait until it has exited: its control
    socket is gone and the serve lock is free."""

    answer = control.request(settings.spool_path, {"op": "stop", "abort": args.abort})
    if answer is None:
        raise CLIError(f"no daemon runs on {settings.spool_path}")
    _wait_exited(settings, answer.get("pid"), args.wait)
    print(f"msgspool daemon (pid {answer.get('pid')}) stopped")
    return 0


def _wait_exited(settings: Settings, pid: object, wait: float) -> None:
    """Until the daemon's control socket is gone and the serve lock is free."""
    deadline = time.monotonic() + wait
    while control.socket_path(settings.spool_path).exists() or not _serve_lock_free(settings):
        if time.monotonic() > deadline:
            raise CLIError(f"the daemon (pid {pid}) has not exited after {wait:.0f} s")
        time.sleep(0.05)


# -- node -----------------------------------------------------------------------------------


def cmd_node(args: argparse.Namespace, settings: Settings) -> int:
    """`node drain`: without --owner, this spool's daemon stops in order (as SIGTERM: its node
    hands back its work and retires); with --owner, any live node of the (shared) spool is asked
    through the store, sees it at its next heartbeat, and does the same. Waits until it is gone."""
    if args.owner is None:
        answer = control.request(settings.spool_path, {"op": "stop", "abort": False})
        if answer is None:
            raise CLIError(f"no daemon runs on {settings.spool_path}", EX_TEMPFAIL)
        _wait_exited(settings, answer.get("pid"), args.wait)
        print(f"msgspool daemon (pid {answer.get('pid')}) drained and stopped")
        return 0
    owner = _with_store(settings, lambda store: _drain_node(store, args.owner, args.wait))
    print(f"node {owner} drained and stopped")
    return 0


async def _drain_node(store: Store, name: str, wait: float) -> str:
    nodes = await store.nodes(time.time())
    found = [n for n in nodes if n["owner"] == name] or [n for n in nodes if n["owner"].startswith(name)]
    if len(found) > 1:
        raise CLIError(f"{len(found)} nodes start with {name!r}: {', '.join(n['owner'] for n in found)}")
    if not found or not await store.drain_node(found[0]["owner"], time.time()):
        raise CLIError(f"no live node {name!r} (msgspool status lists the nodes)")
    owner = str(found[0]["owner"])
    deadline = time.monotonic() + wait
    while any(n["owner"] == owner for n in await store.nodes(time.time())):  # a drained node retires: its row goes
        if time.monotonic() > deadline:
            raise CLIError(f"node {owner} was asked to drain but has not stopped after {wait:.0f} s")
        await asyncio.sleep(0.2)
    return owner


def _serve_lock_free(settings: Settings) -> bool:
    import fcntl

    from msgspool.spooler.runtime import SERVE_LOCK_NAME

    try:
        with (settings.spool_path / SERVE_LOCK_NAME).open("r") as handle:  # never made here: serve makes it 0600
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


# -- token ----------------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from msgspool.domain.tokens import mint, parse_scopes
    from msgspool.views import token_json, token_line

    if args.action == "create":
        try:
            new = mint(parse_scopes(args.scopes), args.name, time.time())
        except ValueError as err:
            raise CLIError(str(err), 2) from err
        try:
            _with_store(settings, lambda store: store.create_token(new), create=True)
        except ValueError as err:
            raise CLIError(str(err)) from err
        print(f"token {new.token.id} ({new.token.name}) created with scopes {' '.join(sorted(new.token.scopes))};"
              " the secret below is shown only now:", file=sys.stderr)
        print(new.secret)
        return 0
    if args.action == "list":
        for token in _with_store(settings, lambda store: store.tokens()):
            print(json.dumps(token_json(token)) if args.json else token_line(token))
        return 0
    revoked = _with_store(settings, lambda store: store.revoke_token(args.token))
    if revoked is None:
        raise CLIError(f"no token {args.token}")
    print(f"{revoked.id}: revoked ({revoked.name})")
    return 0


# -- user -----------------------------------------------------------------------------------


def read_password(prompt: str = "Password: ") -> str:
    """The new password: asked twice on a terminal (echo off), else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise CLIError("the passwords differ", 2)
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _suppression_parser(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    ssub = parser.add_subparsers(dest="action", required=True)
    slist = ssub.add_parser("list", help="the addresses on the list now, with why and until when")
    _common(slist)
    slist.add_argument("--json", action="store_true", help="one JSON object per entry")
    add = ssub.add_parser("add", help="suppress an address: new mail to it fails at once (550 5.1.1)")
    _common(add)
    add.add_argument("address")
    add.add_argument("--reason", default="", help="why (shown in the reply); default: added by the operator")
    add.add_argument("--days", type=float, help="for how long (0: until removed; default: suppression_time)")
    add.add_argument("--json", action="store_true")
    remove = ssub.add_parser("remove", help="take an address off the list: mail to it goes again at once")
    _common(remove)
    remove.add_argument("address")


def cmd_suppression(args: argparse.Namespace, settings: Settings) -> int:
    """The suppression list, straight in the store (a running daemon's SMTP listener sees a change
    within a second; the store checks every submission itself)."""
    import time

    from msgspool.domain.address import domain_of, valid_smtp
    from msgspool.domain.suppression import OPERATOR, Suppression, suppression_key
    from msgspool.views import suppression_json, suppression_line

    if args.action == "list":
        for entry in _with_store(settings, lambda store: store.suppressions(time.time())):
            print(json.dumps(suppression_json(entry)) if args.json else suppression_line(entry))
        return 0
    if args.action == "add":
        if not valid_smtp(args.address) or not args.address:
            raise CLIError(f"not an email address: {args.address!r}", 2)
        if domain_of(args.address) in {d.lower() for d in settings.local_domains}:
            raise CLIError(f"{args.address} is in a local domain: the list is for mail that leaves (refuse a local"
                           " mailbox with `mailboxes`)", 2)
        days = args.days if args.days is not None else settings.suppression_time / 86400
        if days < 0:
            raise CLIError("--days must be 0 (until removed) or more", 2)
        now = time.time()
        entry = Suppression(suppression_key(args.address), args.reason or "added by the operator", now,
                            now + days * 86400 if days else None, OPERATOR)
        _with_store(settings, lambda store: store.suppress(entry), create=True)
        print(json.dumps(suppression_json(entry)) if args.json else f"suppressed {suppression_line(entry)}")
        return 0
    if not _with_store(settings, lambda store: store.unsuppress(args.address)):
        raise CLIError(f"{args.address} is not on the suppression list")
    print(f"{suppression_key(args.address)} removed from the suppression list")
    return 0


def cmd_user(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from msgspool.domain.users import User, check_name, check_password, check_senders, hash_password
    from msgspool.views import user_json, user_line

    if args.action == "add":
        try:
            user = User(check_name(args.name), check_senders(args.senders), time.time())
            hashed = hash_password(check_password(read_password()))
        except ValueError as err:
            raise CLIError(str(err), 2) from err
        try:
            replaced = _with_store(settings, lambda store: store.add_user(user, hashed, replace=args.update),
                                   create=True)
        except ValueError as err:
            raise CLIError(str(err)) from err
        print(f"user {user.name} {'updated' if replaced else 'added'}", file=sys.stderr)
        return 0
    if args.action == "list":
        for user in _with_store(settings, lambda store: store.users()):
            print(json.dumps(user_json(user)) if args.json else user_line(user))
        return 0
    deleted = _with_store(settings, lambda store: store.delete_user(args.name))
    if not deleted:
        raise CLIError(f"no user {args.name}")
    print(f"user {args.name} deleted")
    return 0


def cmd_mailbox(args: argparse.Namespace, settings: Settings) -> int:
    """`mailbox export`: straight from the store (a read: the daemon may run meanwhile)."""
    from pathlib import Path

    from msgspool.maildir_export import UnknownMailbox, export_mailbox

    try:
        result = _with_store(settings, lambda store: export_mailbox(store, args.mailbox, Path(args.directory),
                                                                     settings.host_name))
    except UnknownMailbox as err:
        raise CLIError(f"no mailbox {err} in the spool") from err
    except OSError as err:  # a full disk: what was written stays; the next export goes on from there
        raise CLIError(f"export stopped: {err}", EX_TEMPFAIL) from err
    folders = ", ".join(f"{name} {count}" for name, count in result.written.items())
    print(f"{result.total} messages exported to {args.directory} ({folders or 'no folders'});"
          f" {result.skipped} there already")
    return 0


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    """`db upgrade`: the migrations this version has and the spool lacks, applied (on PostgreSQL in
    one transaction under a lock, so nodes that start meanwhile wait rather than race)."""
    store = load_store(settings)
    applied = asyncio.run(store.upgrade())
    print("\n".join(f"applied {step}" for step in applied) if applied else "the schema is current")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "serve": cmd_serve, "sendmail": cmd_sendmail, "queue": cmd_queue, "status": cmd_status, "token": cmd_token,
    "transport": cmd_transport,
    "stop": cmd_stop, "route": cmd_route, "reload": cmd_reload, "fetch": cmd_fetch, "user": cmd_user, "db": cmd_db,
    "node": cmd_node, "aliases": cmd_aliases, "mailbox": cmd_mailbox, "suppression": cmd_suppression,
}

if __name__ == "__main__":
    sys.exit(main())
