"""The pipe transport runs real commands: small Python scripts written by each test (they record what
they were given into a file), `cat`, `false`, `sleep`, `id`. Through the transport directly, and
through the spooler with a [[transports]] table as an operator writes it."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from msgspool.config import Settings
from msgspool.domain.dsn import Handoff, OriginalRecipient, RecipientDSN
from msgspool.domain.message import Message, Recipient
from msgspool.errors import ConfigError, DestinationUnavailable
from msgspool.transports.pipe import PipeTransport
from tests.conftest import SpoolerFactory
from tests.integration.test_relay import submission, wait_status

CONTENT = b"From: a@example.org\r\nSubject: hi\r\n\r\nHello.\r\nFrom the start\r\n.dot\r\n"
ME = pwd.getpwuid(os.geteuid()).pw_name

RECORDER = """\
import json, os, sys
data = sys.stdin.buffer.read()
record = {"argv": sys.argv[1:], "stdin": data.decode(), "cwd": os.getcwd(), "pgid": os.getpgid(0),
          "pid": os.getpid(), "env": {k: v for k, v in os.environ.items()}}
with open(os.environ["RECORD_TO"], "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.stdout.write(os.environ.get("SAY", ""))
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


def runs(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def make(tmp_path: Path, argv: list[str], **options: Any) -> PipeTransport:
    options.setdefault("user", ME)
    environment = {"RECORD_TO": str(tmp_path / "record.jsonl"), **options.pop("environment", {})}
    return PipeTransport("pipe", Settings(data_dir=str(tmp_path)), {"argv": argv, "environment": environment,
                                                                    **options})


def message(*addresses: str, sender: str = "a@example.org", orcpt: str = "") -> Message:
    dsn = RecipientDSN(orcpt=OriginalRecipient("rfc822", orcpt)) if orcpt else None
    recipients = [Recipient(address, index=i, dsn=dsn) for i, address in enumerate(addresses)]
    return Message("m1", sender, CONTENT, recipients, time.time())


async def deliver(transport: PipeTransport, msg: Message) -> list[Any]:
    conn = await transport.connect(transport.nexthop(msg.recipients[0].address))
    try:
        return await conn.send(msg, msg.recipients)
    finally:
        await conn.close()


async def test_argv_is_expanded_per_message_and_the_envelope_is_in_the_environment(tmp_path: Path) -> None:
    recorder = script(tmp_path, "rec.py", RECORDER)
    transport = make(tmp_path, [recorder, "-f", "${sender}", "--", "${recipient}", "${user}/${extension}",
                                "${nexthop}", "${queue_id}", "${size}"])
    msg = message("Bob+Fax@Pipe.Example", orcpt="bob@alias.example")
    [reply] = await deliver(transport, msg)
    assert reply.code == 250 and reply.dsn == "2.0.0"
    [run] = runs(tmp_path / "record.jsonl")
    assert run["argv"] == ["-f", "a@example.org", "--", "Bob+Fax@Pipe.Example", "Bob/Fax", "pipe.example", "m1",
                           str(len(CONTENT))]
    env = run["env"]
    assert (env["SENDER"], env["RECIPIENT"], env["ORIGINAL_RECIPIENT"]) == (
        "a@example.org", "Bob+Fax@Pipe.Example", "bob@alias.example")
    assert (env["LOCAL"], env["EXTENSION"], env["DOMAIN"], env["NEXTHOP"]) == ("Bob+Fax", "Fax", "pipe.example",
                                                                                "pipe.example")
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and env["USER"] == ME
    assert "PYTEST_CURRENT_TEST" not in env  # a clean environment, not msgspool's own
    # The message on stdin with Unix line ends, untouched without flags; its own process group.
    assert run["stdin"] == CONTENT.decode().replace("\r\n", "\n")
    assert run["pgid"] == run["pid"] and run["cwd"] == "/"


async def test_flags_prepend_envelope_headers_and_quote_lines(tmp_path: Path) -> None:
    recorder = script(tmp_path, "rec.py", RECORDER)
    transport = make(tmp_path, [recorder], flags="FRODB>.hu", directory=str(tmp_path))
    [reply] = await deliver(transport, message("Bob@Pipe.EXAMPLE", orcpt="Orig@Alias.EXAMPLE"))
    assert reply.ok
    [run] = runs(tmp_path / "record.jsonl")
    lines = run["stdin"].split("\n")
    assert lines[0].startswith("From a@example.org  ")  # mbox From_ line: sender, two spaces, asctime
    assert lines[1:4] == ["Return-Path: <a@example.org>", "X-Original-To: orig@alias.example",
                          "Delivered-To: bob@pipe.example"]
    assert lines[4] == "From: a@example.org"  # a header, not a From_ line: left alone
    assert ">From the start" in lines and "..dot" in lines
    assert run["stdin"].endswith("..dot\n\n")  # B: a blank line after the message
    assert run["cwd"] == str(tmp_path)


async def test_one_run_per_recipient_by_default_and_one_per_message_with_max_recipients(tmp_path: Path) -> None:
    recorder = script(tmp_path, "rec.py", RECORDER)
    record = tmp_path / "record.jsonl"
    replies = await deliver(make(tmp_path, [recorder, "${recipient}"]), message("a@x.example", "b@x.example"))
    assert [r.ok for r in replies] == [True, True]
    assert [run["argv"] for run in runs(record)] == [["a@x.example"], ["b@x.example"]]
    record.unlink()
    # Only the argument that holds the macro is repeated, as in pipe(8).
    transport = make(tmp_path, [recorder, "-r", "${recipient}", "${sender}"], max_recipients=2)
    replies = await deliver(transport, message("a@x.example", "b@x.example", "c@x.example"))
    assert [r.ok for r in replies] == [True, True, True]
    assert [run["argv"] for run in runs(record)] == [["-r", "a@x.example", "b@x.example", "a@example.org"],
                                                     ["-r", "c@x.example", "a@example.org"]]
    assert runs(record)[0]["env"]["RECIPIENT"] == "a@x.example b@x.example"


@pytest.mark.parametrize(("code", "reply_code", "dsn"), [
    (75, 451, "4.3.0"),  # EX_TEMPFAIL: deferred
    (71, 451, "4.3.0"),  # EX_OSERR: Postfix's other temporary one
    (67, 550, "5.1.1"),  # EX_NOUSER
    (78, 550, "5.3.5"),  # EX_CONFIG
    (1, 550, "5.3.0"),  # not a sysexits code: failed
])
async def test_exit_status_maps_by_sysexits(tmp_path: Path, code: int, reply_code: int, dsn: str) -> None:
    recorder = script(tmp_path, "rec.py", RECORDER)
    transport = make(tmp_path, [recorder], environment={"EXIT": str(code), "SAY": "mailbox\tis\nbusy"})
    [reply] = await deliver(transport, message("b@x.example"))
    assert (reply.code, reply.dsn) == (reply_code, dsn)
    assert f"exit {code}" in reply.text and "output: mailbox is busy" in reply.text


async def test_a_status_the_command_prints_wins_over_its_exit_code(tmp_path: Path) -> None:
    recorder = script(tmp_path, "rec.py", RECORDER)
    transport = make(tmp_path, [recorder], environment={"EXIT": "1", "SAY": "4.2.2 mailbox full"})
    [reply] = await deliver(transport, message("b@x.example"))
    assert (reply.code, reply.dsn) == (451, "4.2.2") and reply.text.startswith("mailbox full")


async def test_false_fails_and_cat_delivers_with_its_output_in_the_reply(tmp_path: Path) -> None:
    [failed] = await deliver(make(tmp_path, ["false"]), message("b@x.example"))
    assert failed.permanent and failed.dsn == "5.3.0" and "exit 1" in failed.text
    [delivered] = await deliver(make(tmp_path, ["cat"]), message("b@x.example"))
    assert delivered.ok and "output: From: a@example.org Subject: hi" in delivered.text


async def test_a_command_killed_by_a_signal_is_deferred(tmp_path: Path) -> None:
    suicide = script(tmp_path, "kill.py", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    [reply] = await deliver(make(tmp_path, [suicide]), message("b@x.example"))
    assert reply.temporary and reply.dsn == "4.3.0" and "signal 9" in reply.text


async def test_a_timeout_kills_the_whole_process_group_and_defers(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    spawner = script(tmp_path, "spawn.py", f"""\
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
open({str(pidfile)!r}, "w").write(str(child.pid))
print("started", flush=True)
time.sleep(60)
""")
    started = time.monotonic()
    [reply] = await deliver(make(tmp_path, [spawner], timeout=1.0), message("b@x.example"))
    assert time.monotonic() - started < 10
    assert reply.temporary and "time limit of 1 s" in reply.text and "output: started" in reply.text
    grandchild = int(pidfile.read_text())
    for _ in range(100):  # killed with its group; reaped by init soon after
        if not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the command's child outlived the timeout")


async def test_sleep_within_its_time_limit_is_delivered(tmp_path: Path) -> None:
    [reply] = await deliver(make(tmp_path, ["sleep", "0.2"], timeout=5), message("b@x.example"))
    assert reply.ok


async def test_output_is_bounded_and_a_chatty_command_never_blocks(tmp_path: Path) -> None:
    chatty = script(tmp_path, "chatty.py", "import sys\nsys.stdout.write('x' * 5_000_000)\nsys.exit(1)\n")
    [reply] = await deliver(make(tmp_path, [chatty], output_limit=100, timeout=20), message("b@x.example"))
    assert reply.permanent and reply.text.endswith("x" * 100) and "x" * 101 not in reply.text


async def test_a_command_that_reads_nothing_is_judged_by_its_exit_status(tmp_path: Path) -> None:
    big = message("b@x.example")
    big.content = CONTENT + b"y" * 4_000_000 + b"\r\n"
    [reply] = await deliver(make(tmp_path, ["true"]), big)
    assert reply.ok


async def test_no_shell_sees_the_arguments(tmp_path: Path) -> None:
    recorder = script(tmp_path, "rec.py", RECORDER)
    marker = tmp_path / "pwned"
    sender = f"$(touch {marker})`touch {marker}`;touch {marker}@example.org"
    [reply] = await deliver(make(tmp_path, [recorder, "${sender}"]), message("b@x.example", sender=sender))
    assert reply.ok and not marker.exists()
    assert runs(tmp_path / "record.jsonl")[0]["argv"] == [sender]


async def test_the_null_sender_is_mailer_daemon(tmp_path: Path) -> None:
    recorder = script(tmp_path, "rec.py", RECORDER)
    [reply] = await deliver(make(tmp_path, [recorder, "${sender}"], flags="R"), message("b@x.example", sender=""))
    [run] = runs(tmp_path / "record.jsonl")
    assert reply.ok and run["argv"] == ["MAILER-DAEMON"] and run["stdin"].startswith("Return-Path: <>\n")


async def test_a_missing_command_is_a_destination_that_is_down(tmp_path: Path) -> None:
    transport = make(tmp_path, [str(tmp_path / "no-such-command")])
    with pytest.raises(DestinationUnavailable) as caught:
        await transport.connect("x.example")
    assert caught.value.reply.temporary and "not an executable file" in caught.value.reply.text


async def test_a_message_over_the_size_limit_fails(tmp_path: Path) -> None:
    [reply] = await deliver(make(tmp_path, ["cat"], size_limit=10), message("b@x.example"))
    assert (reply.code, reply.dsn) == (552, "5.2.3")


async def test_flag_x_makes_a_success_final(tmp_path: Path) -> None:
    plain = await make(tmp_path, ["true"]).connect("x.example")
    final = await make(tmp_path, ["true"], flags="X").connect("x.example")
    assert (plain.handoff, final.handoff) == (Handoff.RELAY, Handoff.FINAL)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another account needs root")
async def test_as_root_the_command_runs_as_the_configured_user(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    [reply] = await deliver(make(tmp_path, ["id", "-u"], user="nobody"), message("b@x.example"))
    assert reply.ok and reply.text.endswith(f"output: {nobody.pw_uid}")
    with pytest.raises(ConfigError, match="needs a `user`"):
        PipeTransport("pipe", Settings(), {"argv": ["cat"]})


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another account needs root")
def test_as_root_under_uvloop_the_daemons_loop_the_command_runs_as_the_configured_user(tmp_path: Path) -> None:
    import uvloop  # the daemon's loop takes no user/group arguments for a child: it drops them itself

    nobody = pwd.getpwnam("nobody")
    argv = ["/bin/sh", "-c", "echo $(id -u) $(id -g) $(id -G)"]  # the test's own command: no address in it
    [reply] = uvloop.run(deliver(make(tmp_path, argv, user="nobody"), message("b@x.example")))
    gid = nobody.pw_gid
    assert reply.ok and reply.text.endswith(f"output: {nobody.pw_uid} {gid} {gid}"), reply  # root's groups dropped


async def test_the_aliases_transport_runs_each_recipients_command_line_without_a_shell(tmp_path: Path) -> None:
    recorder = script(tmp_path, "rec.py", RECORDER)
    transport = PipeTransport("aliases", Settings(data_dir=str(tmp_path)), {
        "command_from_recipient": True, "user": ME, "flags": "DRX", "nexthop": "aliases",
        "environment": {"RECORD_TO": str(tmp_path / "record.jsonl")}})
    msg = message(f"{recorder} 'two words' $HOME;id", orcpt="list@localhost")
    [reply] = await deliver(transport, msg)
    assert reply.ok, reply
    [run] = runs(tmp_path / "record.jsonl")
    assert run["argv"] == ["two words", "$HOME;id"]  # split as sh would, but nothing expanded or run
    assert run["env"]["RECIPIENT"] == "list@localhost" and run["env"]["ORIGINAL_RECIPIENT"] == "list@localhost"
    assert run["stdin"].startswith("Delivered-To: list@localhost\nReturn-Path: <a@example.org>\n") or \
        run["stdin"].startswith("Return-Path: <a@example.org>\nDelivered-To: list@localhost\n")


@pytest.mark.parametrize(("options", "error"), [
    ({"argv": "/usr/bin/cmd -f ${sender}"}, "list of strings"),
    ({"argv": ["cat", "${client_address}"]}, "unknown macro"),
    ({"argv": ["cat"], "flags": "Z"}, "unknown pipe flag"),
    ({"argv": ["cat"], "flags": "D", "max_recipients": 5}, "max_recipients = 1"),
    ({"argv": ["cat"], "user": "no-such-user-here"}, "no such user"),
])
def test_configuration_mistakes_are_refused_when_loaded(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        PipeTransport("pipe", Settings(), {"user": ME, **options})


async def test_through_the_spooler_exit_codes_decide_delivered_deferred_failed(
        spooler_factory: SpoolerFactory, tmp_path: Path) -> None:
    recorder = script(tmp_path, "rec.py", """\
import os, sys
rcpt = sys.argv[1]
open(os.environ["RECORD_TO"], "a").write(rcpt + "\\n")
sys.exit({"ok": 0, "busy": 75, "nouser": 67}[rcpt.split("@")[0]])
""")
    transport = {"name": "fax", "type": "pipe", "domains": ["pipe.test"], "argv": [recorder, "${recipient}"],
                 "user": ME, "environment": {"RECORD_TO": str(tmp_path / "record.txt")}}
    async with spooler_factory(transports=[transport]) as spooler:
        message_id = await spooler.submit(submission("ok@pipe.test", "busy@pipe.test", "nouser@pipe.test"))
        info = await wait_status(spooler, message_id, {"delivered", "deferred", "failed"})
    by_address = {r["address"]: r for r in info["recipients"]}
    assert {a: (r["transport"], r["status"]) for a, r in by_address.items()} == {
        "ok@pipe.test": ("fax", "delivered"), "busy@pipe.test": ("fax", "deferred"),
        "nouser@pipe.test": ("fax", "failed")}
    assert by_address["busy@pipe.test"]["last_reply"].startswith("451 4.3.0")
    assert by_address["nouser@pipe.test"]["last_reply"].startswith("550 5.1.1")
    assert sorted((tmp_path / "record.txt").read_text().split()) == ["busy@pipe.test", "nouser@pipe.test",
                                                                     "ok@pipe.test"]


def test_commands_run_on_uvloop_too(tmp_path: Path) -> None:
    """The daemon runs on uvloop when it is installed, whose subprocesses know no user or group."""
    uvloop = pytest.importorskip("uvloop")

    async def both() -> tuple[Any, Any]:
        [ok] = await deliver(make(tmp_path, ["id", "-u"]), message("b@x.example"))
        [slow] = await deliver(make(tmp_path, ["sleep", "30"], timeout=0.5), message("b@x.example"))
        return ok, slow

    loop = uvloop.new_event_loop()
    try:
        ok, slow = loop.run_until_complete(both())
    finally:
        loop.close()
    assert ok.ok and ok.text.endswith(f"output: {os.geteuid()}")
    assert slow.temporary and "time limit" in slow.text


def test_on_uvloop_a_command_that_exits_before_reading_is_judged_by_its_exit(tmp_path: Path) -> None:
    """uvloop closes the stdin pipe of a command that is gone before the message is written."""
    uvloop = pytest.importorskip("uvloop")

    async def quick() -> list[Any]:
        big = message("b@x.example")
        big.content = CONTENT + b"y" * 1_000_000 + b"\r\n"
        transport = make(tmp_path, ["true"])
        replies = []
        for _ in range(20):
            conn = await transport.connect("x.example")
            await asyncio.sleep(0)
            replies += await conn.send(big, big.recipients)
        return replies

    loop = uvloop.new_event_loop()
    try:
        replies = loop.run_until_complete(quick())
    finally:
        loop.close()
    assert all(r.ok for r in replies)
