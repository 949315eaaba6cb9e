"""The pipe transport: delivers by running a command with the message on its stdin (Postfix pipe(8)).

Address type "SMTP", usually with domain routes (``domains = ["fax.example"]``). The command is an
argument vector, run directly (never through a shell), once per recipient — or once per up to
`max_recipients` recipients of a message — with its macros expanded, the envelope in its
environment, in a process group of its own. domain/pipe.py holds the rules (macros, flags, what an
exit status means); this module runs the command.

    [[transports]]
    name = "fax"
    type = "pipe"
    domains = ["fax.example"]
    argv = ["/usr/local/bin/sendfax", "-f", "${sender}", "--", "${user}"]

Options: argv (required, a list), flags ("" ; see domain/pipe.py), max_recipients (1), timeout
(1000 s, Postfix's command_time_limit; the whole process group is killed), user and group (the
account to run as; required when msgspool runs as root), directory ("/"), null_sender
("MAILER-DAEMON"), recipient_delimiter ("+"), size_limit (0: none), eol ("\\n"), output_limit
(2000 octets of stdout+stderr kept for the reply), nexthop (default the recipient's domain),
export_environment (["TZ", "LANG"]: kept from msgspool's own environment), environment (a table of
fixed variables).

A command that cannot be found or executed is a destination that is down (its mail waits, probed
with backoff, until the operator fixes it), not a failure of the mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import logging
import os
import pwd
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from msgspool.domain.address import SMTP, domain_of
from msgspool.domain.dsn import Handoff
from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply
from msgspool.domain.pipe import (
    MACROS,
    Envelope,
    command_input,
    environment,
    exit_reply,
    expand_argv,
    macros_in,
    parse_flags,
    printable,
    recipient_parts,
)
from msgspool.errors import ConfigError, DestinationUnavailable

log = logging.getLogger("msgspool.pipe")

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"  # pipe_command.c resets PATH too (_PATH_DEFPATH)


class Account:
    """Who the command runs as: a switch of user and group when msgspool is root, else nobody else."""

    def __init__(self, transport: str, user: str, group: str) -> None:
        self.switch = os.geteuid() == 0
        try:
            entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.geteuid())
        except KeyError:
            raise ConfigError(f"transport {transport}: no such user {user!r}") from None
        if self.switch and not user:
            raise ConfigError(f"transport {transport}: msgspool runs as root, so the transport needs a `user`"
                              " to run as (user = \"root\" only if you mean it)")
        if not self.switch and entry.pw_uid != os.geteuid():
            raise ConfigError(f"transport {transport}: user {user!r} needs msgspool to run as root")
        try:
            self.gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
        except KeyError:
            raise ConfigError(f"transport {transport}: no such group {group!r}") from None
        if self.switch and entry.pw_uid == 0:
            log.warning("transport %s runs its command as root", transport)
        self.uid, self.name, self.home, self.shell = entry.pw_uid, entry.pw_name, entry.pw_dir, entry.pw_shell

    def environment(self) -> dict[str, str]:
        return {"USER": self.name, "LOGNAME": self.name, "HOME": self.home, "SHELL": self.shell or "/bin/sh"}

    def process_options(self) -> dict[str, Any]:
        """create_subprocess_exec's: user, group and no supplementary groups of root's."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []} if self.switch else {}


class PipeConnection:
    """Runs the command for one destination; 'connected' means only that the command is executable."""

    def __init__(self, transport: PipeTransport, nexthop: str) -> None:
        self.transport, self.nexthop = transport, nexthop
        self.remote = f"{transport.name}[{transport.argv[0] if transport.argv else 'aliases'}]"

    @property
    def usable(self) -> bool:
        return True

    @property
    def handoff(self) -> Handoff:
        """Flag X: the command is the end of the line (a `delivered` report); otherwise `relayed`."""
        return Handoff.FINAL if "X" in self.transport.flags else Handoff.RELAY

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        step, replies = self.transport.max_recipients, []
        for start in range(0, len(recipients), step):
            group = recipients[start:start + step]
            replies.extend([await self.transport.run(message, group, self.nexthop)] * len(group))
        return replies

    async def close(self) -> None:
        return None


class PipeTransport:
    addrtypes = frozenset({SMTP})

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        self.domains: tuple[str, ...] = tuple(options.get("domains", ()))
        # The aliases' own transport (spooler/aliases.py): each recipient's address is its command line.
        self.command_from_recipient = bool(options.get("command_from_recipient", False))
        argv: Any = options.get("argv", [] if self.command_from_recipient else None)
        if not isinstance(argv, list) or not (argv or self.command_from_recipient) or not all(
                isinstance(a, str) for a in argv):
            raise ConfigError(f"transport {name}: argv must be a non-empty list of strings (it is never given"
                              " to a shell)")
        unknown = macros_in(argv) - MACROS
        if unknown:
            raise ConfigError(f"transport {name}: unknown macro(s) {', '.join(sorted(unknown))} in argv"
                              f" (known: {', '.join(sorted(MACROS))})")
        self.argv: list[str] = argv
        try:
            self.flags = parse_flags(str(options.get("flags", "")))
        except ValueError as err:
            raise ConfigError(f"transport {name}: {err}") from None
        self.max_recipients = 1 if self.command_from_recipient else int(options.get("max_recipients", 1))
        if self.max_recipients < 1:
            raise ConfigError(f"transport {name}: max_recipients must be at least 1")
        if self.max_recipients > 1 and self.flags & {"D", "O"}:
            raise ConfigError(f"transport {name}: flags D and O prepend one recipient's header, so they need"
                              " max_recipients = 1")
        self.timeout = float(options.get("timeout", 1000.0))
        self.account = Account(name, str(options.get("user", "")), str(options.get("group", "")))
        self.directory = str(options.get("directory", "/"))
        self.null_sender = str(options.get("null_sender", "MAILER-DAEMON"))
        self.delimiter = str(options.get("recipient_delimiter", "+"))
        self.size_limit = int(options.get("size_limit", 0))
        self.eol = str(options.get("eol", "\n")).encode()
        self.output_limit = int(options.get("output_limit", 2000))
        self.fixed_nexthop = str(options.get("nexthop", ""))
        exported = options.get("export_environment", ["TZ", "LANG"])
        self.base_environment = {"PATH": DEFAULT_PATH, **{k: os.environ[k] for k in exported if k in os.environ},
                                 **self.account.environment(),
                                 **{str(k): str(v) for k, v in dict(options.get("environment", {})).items()}}

    def nexthop(self, address: str) -> str:
        return self.fixed_nexthop or domain_of(address)

    async def connect(self, nexthop: str) -> PipeConnection:
        if self.command_from_recipient:  # each command is checked when it runs
            return PipeConnection(self, nexthop)
        command = self.argv[0]
        found = shutil.which(command, path=self.base_environment["PATH"]) if "/" not in command else command
        if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
            raise DestinationUnavailable(Reply(451, "4.3.5", f"command {command} is not an executable file"))
        return PipeConnection(self, nexthop)

    def envelope(self, message: Message, recipients: Sequence[Recipient], nexthop: str) -> Envelope:
        parts = tuple(recipient_parts(r.address, r.dsn.orcpt.address if r.dsn and r.dsn.orcpt else "",
                                      self.delimiter, self.flags) for r in recipients)
        return Envelope(message.sender or self.null_sender, parts, nexthop, message.id, message.size)

    async def run(self, message: Message, recipients: Sequence[Recipient], nexthop: str) -> Reply:
        """One run of the command for these recipients of the message; its outcome as a reply."""
        if self.size_limit and message.size > self.size_limit:
            return Reply(552, "5.2.3", f"message of {message.size} octets exceeds the size limit"
                                       f" ({self.size_limit}) of transport {self.name}")
        if self.command_from_recipient:
            # An alias's |command: its line split as sh would (never given to one); the envelope names
            # the address the mail was for, the alias (the ORCPT expansion set), as local(8)'s does.
            argv = shlex.split(recipients[0].address)
            recipients = [dataclasses.replace(r, address=r.dsn.orcpt.address if r.dsn and r.dsn.orcpt else r.address)
                          for r in recipients]
        envelope = self.envelope(message, recipients, nexthop)
        data = command_input(message.full_content(), envelope, self.flags, return_path=message.sender,
                             eol=self.eol)
        if not self.command_from_recipient:
            argv = expand_argv(self.argv, envelope)
        try:
            command = await Command.start(argv, env={**self.base_environment, **environment(envelope)},
                                          cwd=self.directory, account=self.account.process_options())
        except OSError as err:  # vanished since connect, or not executable by the account
            return Reply(451, "4.3.0", f"cannot run command {argv[0]}: {err.strerror or err}")
        output = bytearray()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(command.feed(data), command.collect(output, self.output_limit))
                returncode: int | None = await command.wait()
        except TimeoutError:
            await command.kill()
            return exit_reply(argv[0], None, printable(bytes(output), self.output_limit), timed_out=True,
                              time_limit=self.timeout)
        except BaseException:  # cancelled (shutdown): the command must not outlive its delivery
            await command.kill()
            raise
        return exit_reply(argv[0], returncode, printable(bytes(output), self.output_limit))

    async def close(self) -> None:
        return None


class Command:
    """One running command: its stdin and stdout (stderr joined) as asyncio pipes, its exit awaited.

    Started by `subprocess.Popen`, whose user/group switch is done in C between fork and exec (the
    event loop's own subprocess support may lack it: uvloop has no user, group or extra_groups), in
    a new session, so its whole process group can be killed. Its exit is awaited on a pidfd where
    Linux has one, else in a thread."""

    def __init__(self, process: subprocess.Popen[bytes], stdin: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader, stdout_pipe: asyncio.BaseTransport, pidfd: int | None) -> None:
        self.process, self.stdin, self.stdout, self.stdout_pipe = process, stdin, stdout, stdout_pipe
        self.pidfd = pidfd  # closed by the first `wait`

    @classmethod
    async def start(cls, argv: list[str], *, env: dict[str, str], cwd: str, account: dict[str, Any]) -> Command:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=env, cwd=cwd, start_new_session=True, close_fds=True, **account)
        assert process.stdin is not None and process.stdout is not None
        try:  # opened now, while the pipes hold their numbers: it can never share one with them
            pidfd: int | None = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: a thread waits instead
            pidfd = None
        loop = asyncio.get_running_loop()
        try:
            reader = asyncio.StreamReader(limit=1 << 16)
            stdout_pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), process.stdout)
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, process.stdin)
        except BaseException:
            _killpg(process.pid)
            process.kill()
            await asyncio.to_thread(process.wait)
            if pidfd is not None:
                os.close(pidfd)
            raise
        return cls(process, asyncio.StreamWriter(transport, protocol, None, loop), reader, stdout_pipe, pidfd)

    async def feed(self, data: bytes) -> None:
        """The message to the command's stdin; a command that exits without reading it all is
        judged by its exit status alone (Postfix ignores EPIPE the same way)."""
        try:
            # A command that has already exited without reading may have had its stdin closed by
            # the loop (uvloop does so as soon as the pipe's far end goes): nothing is left to write.
            if not self.stdin.transport.is_closing():
                self.stdin.write(data)
                await self.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.stdin.close()

    async def collect(self, output: bytearray, limit: int) -> None:
        """stdout and stderr until they close; only the first `limit` octets are kept, the rest is
        read and dropped so a chatty command never blocks on a full pipe."""
        while chunk := await self.stdout.read(65536):
            if len(output) < limit:
                output += chunk[:limit - len(output)]
        self.stdout_pipe.close()  # at EOF uvloop keeps a pipe open (StreamReaderProtocol asks it to)

    async def wait(self) -> int:
        """The exit status (negative: the signal that killed it)."""
        pidfd, self.pidfd = self.pidfd, None
        try:
            if self.process.poll() is None and (pidfd is None or not await _exit_seen(pidfd)):
                return await asyncio.to_thread(self.process.wait)
            return self.process.wait()
        finally:
            if pidfd is not None:
                os.close(pidfd)

    async def kill(self) -> None:
        """SIGKILL to the command's whole process group (its offspring too), then reap it."""
        _killpg(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.stdin.close()
        self.stdout_pipe.close()  # an escaped descendant may hold it open: not our business any more
        await self.wait()


async def _exit_seen(pidfd: int) -> bool:
    """Until the process of `pidfd` exits (it becomes readable); False when the loop cannot watch
    it (uvloop may still count the number as a closed pipe's), so a thread waits instead."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        loop.add_reader(pidfd, readable)
    except (RuntimeError, OSError):
        return False
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
    return True


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
