"""A real Dovecot for tests: LMTP (TCP and a Unix socket), POP3 and IMAP on free loopback ports.

`start(users)` writes a dovecot.conf into a temporary directory of its own and runs
``dovecot -F -c CONF`` as a child process, with everything Dovecot keeps (runtime sockets, state,
mail, its log) in that directory: nothing of the machine's Dovecot is read or started. Users and
their passwords come from a passwd-file there (plain passwords: a test peer, not a server); each
user's mail is a Maildir, `maildir(user)`, that Python's `mailbox.Maildir` reads. No TLS unless
`start(..., tls=(cert, key))` asks for it.

Run by a user, Dovecot runs as that user (its "rootless" setup: internal, login and mail user are
that one account, no chroot); run by root (CI), as Debian's dovecot and dovenull accounts with the
mail owned by nobody. Debian's dovecot-core, -lmtpd, -pop3d and -imapd are installed by `make dovecot`
(which .ci/run calls); without them a test skips, and with CI=true it fails instead.

    with dovecot.start({"alice": "secret"}) as server:
        ... LMTP to 127.0.0.1:server.lmtp_port or server.lmtp_socket, POP3 to server.pop3_port ...
        mailbox.Maildir(server.maildir("alice"))
        server.deliver("alice", b"Subject: hi\r\n\r\nfor fetching\r\n")  # mail to fetch over POP3/IMAP

A test that fails while a server runs gets the server's log in its report (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.support import sink

PACKAGES = ("dovecot-core", "dovecot-lmtpd", "dovecot-pop3d", "dovecot-imapd")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 2.0  # then SIGKILL: a throwaway server has nothing to save
RUNNING: list[Dovecot] = []  # servers up now, for the failure report's log section


def executable() -> str | None:
    """The dovecot binary (in /usr/sbin, which a non-root PATH often lacks), or None."""
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


def require() -> str:
    """The dovecot binary; skips the test without one, or fails it when CI=true."""
    found = executable()
    if found is not None and all(Path("/usr/lib/dovecot", part).exists() for part in ("lmtp", "pop3", "imap")):
        return found
    message = f"Dovecot is not installed ({', '.join(PACKAGES)}; `make dovecot` installs them)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + ", and CI must run the Dovecot tests")
    pytest.skip(message)


def free_port() -> int:
    return sink.free_port()


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports, none handed out before in this run (sink.free_port): one
    port twice and Dovecot refuses to start ("duplicate listener")."""
    return [sink.free_port() for _ in range(n)]


def live_in_group(group: int) -> list[int]:
    """The pids of processes in process group `group` that still run (zombies do not count: an
    orphan's zombie stays until this machine's pid 1 reaps it, which a container's may never do)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses
                state, _, pgrp = (entry / "stat").read_text().rpartition(")")[2].split()[:3]
                if int(pgrp) == group and state != "Z":
                    pids.append(int(entry.name))
    return pids


class Dovecot:
    """One running Dovecot; `stop()` (or leaving the `with`) ends it and removes its directory."""

    def __init__(self, directory: Path, users: Mapping[str, str], quotas: Mapping[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None, config: str = "") -> None:
        self.directory = directory
        self.extra_config = config  # settings appended to the generated dovecot.conf (later ones win)
        self.users = dict(users)
        self.quotas = dict(quotas or {})
        self.tls = tls  # (certificate chain, key), PEM: STARTTLS/STLS offered, POP3S and IMAPS listen
        self._choose_ports()
        self.lmtp_socket = directory / "lmtp"
        self.log_path = directory / "dovecot.log"
        self.config_path = directory / "dovecot.conf"
        self._process: subprocess.Popen[bytes] | None = None

    def _choose_ports(self) -> None:
        ports = free_ports(5 if self.tls else 3)
        self.lmtp_port, self.pop3_port, self.imap_port = ports[:3]
        self.pop3s_port, self.imaps_port = (ports[3], ports[4]) if self.tls else (0, 0)

    def maildir(self, user: str) -> Path:
        """Where `user`'s mail is: a Maildir (new/, cur/, tmp/ once something was delivered)."""
        return self.directory / "home" / user / "Maildir"

    def deliver(self, user: str, content: bytes, sender: str = "sender@example.org") -> None:
        """Put one message into `user`'s INBOX through Dovecot's own LMTP socket, so that its files
        belong to the mail user (as root, nobody): a Maildir written by the test itself would be
        root's, and Dovecot could not move or delete its messages. `content` in CRLF form."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.lmtp_socket))
            stream = sock.makefile("rwb")
            stuffed = content.replace(b"\r\n.", b"\r\n..")
            stuffed = (b"." + stuffed if stuffed.startswith(b".") else stuffed).removesuffix(b"\r\n")
            _expect(stream, b"220")
            for command, reply in ((b"LHLO tests", b"250"), (f"MAIL FROM:<{sender}>".encode(), b"250"),
                                   (f"RCPT TO:<{user}>".encode(), b"250"), (b"DATA", b"354"),
                                   (stuffed + b"\r\n.", b"250"), (b"QUIT", b"221")):
                stream.write(command + b"\r\n")
                stream.flush()
                _expect(stream, reply)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, attempts: int = 3) -> Dovecot:
        """Start; on ports another process took meanwhile (a free port is only free when chosen),
        again on new ones, up to `attempts` times."""
        for attempt in range(attempts):
            self._write_files()
            with open(self.directory / "stderr", "wb") as stderr:  # the child keeps its own copy
                self._process = subprocess.Popen([require(), "-F", "-c", str(self.config_path)],
                                                 stdout=subprocess.DEVNULL, stderr=stderr,
                                                 start_new_session=True)  # its children in a group of their own
            RUNNING.append(self)
            try:
                self._wait_ready()
                return self
            except BaseException:
                self.stop(remove=False)
                said = self.log() + (self.directory / "stderr").read_text(errors="replace")
                if attempt == attempts - 1 or not ("Address already in use" in said or "duplicate listener" in said):
                    raise
                self._choose_ports()
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int | None:
        """The master's pid, also its process group's id; None once stopped."""
        return None if self._process is None else self._process.pid

    def stop(self, *, remove: bool = True) -> None:
        """Stop Dovecot (SIGTERM, then SIGKILL); idempotent."""
        if self in RUNNING:
            RUNNING.remove(self)
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):  # what of its group outlived the master
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            deadline = time.monotonic() + STOP_TIMEOUT
            while live_in_group(process.pid) and time.monotonic() < deadline:
                time.sleep(0.02)  # a SIGKILLed child ends soon after, not at once
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _write_files(self) -> None:
        self.directory.chmod(0o755)  # as root, the mail user (nobody) must reach its home
        for part in ("run", "state", "home"):
            (self.directory / part).mkdir()
        _, _, (uid, gid) = _accounts()
        for user in self.users:
            home = self.directory / "home" / user
            home.mkdir()
            os.chown(home, uid, gid)
        with open(self.directory / "passwd", "w") as passwd:
            for user, password in self.users.items():
                if any(c in user + password for c in ":\n"):
                    raise ValueError(f"user {user!r}: no ':' or line break in a passwd-file entry")
                quota = f"userdb_quota_rule=*:storage={self.quotas[user]}" if user in self.quotas else ""
                passwd.write(f"{user}:{{PLAIN}}{password}::::::{quota}\n")
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        internal, login, (uid, gid) = _accounts()
        d = self.directory
        return f"""\
# Written by tests/support/dovecot.py: a throwaway Dovecot for one test.
instance_name = msgspool-test-{d.name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = lmtp pop3 imap
listen = 127.0.0.1
{self._ssl()}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {internal[0]}
default_internal_group = {internal[1]}
default_login_user = {login}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:~/Maildir
# a user with a quota (start(quotas=...)) over it gets 452 4.2.2, a temporary failure
mail_plugins = $mail_plugins quota
quota_full_tempfail = yes
plugin {{
  quota = maildir:User quota
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {d}/passwd
  default_fields = uid={uid} gid={gid} home={d}/home/%n
}}
service anvil {{
  chroot =
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
  unix_listener {self.lmtp_socket} {{
    mode = 0666
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port}
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
  }}
}}
{self.extra_config}
"""

    def _ssl(self) -> str:
        if self.tls is None:
            return "ssl = no"
        cert, key = self.tls
        return f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = {self.lmtp_port, self.pop3_port, self.imap_port, self.pop3s_port, self.imaps_port} - {0}
        while pending or not self.lmtp_socket.exists():
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self._process.returncode}: {self._stderr()}{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not listen within {START_TIMEOUT} s: {self._stderr()}{self.log()}")
            for port in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    pending.discard(port)
                except OSError:
                    pass
            time.sleep(0.05)

    def _stderr(self) -> str:
        try:
            return (self.directory / "stderr").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _expect(stream: Any, code: bytes) -> None:
    lines = [stream.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(stream.readline())
    if not lines[-1].startswith(code):
        raise RuntimeError(f"Dovecot LMTP answered {b''.join(lines)!r}, not {code.decode()}")


def _accounts() -> tuple[tuple[str, str], str, tuple[int, int]]:
    """(internal user and group, login user, mail uid and gid). As a user: that account for all
    (Dovecot's rootless setup). As root: Debian's dovecot and dovenull accounts, and nobody for the
    mail, since Dovecot runs neither a login process nor a mailbox as root."""
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        user, group = pwd.getpwuid(uid).pw_name, grp.getgrgid(gid).gr_name
        return (user, group), user, (uid, gid)
    nobody = pwd.getpwnam("nobody")
    return ("dovecot", "dovecot"), "dovenull", (nobody.pw_uid, nobody.pw_gid)


def start(users: Mapping[str, str], *, quotas: Mapping[str, str] | None = None,
          tls: tuple[Path, Path] | None = None, config: str = "") -> Dovecot:
    """A running Dovecot with these users (name -> password), in a fresh temporary directory (short,
    so the Unix socket's path fits the 108-byte limit). `quotas`: a storage limit per user, e.g.
    {"carol": "1K"} (none by default). `tls`: PEM files (certificate chain, key) that turn TLS on:
    STARTTLS and STLS offered, POP3S on `pop3s_port` and IMAPS on `imaps_port` (off by default).
    `config`: more dovecot.conf settings, e.g. 'imap_capability = IMAP4rev1' (a server offering less)."""
    require()
    for attempt in range(3):
        directory = Path(tempfile.mkdtemp(prefix="dovecot-"))
        try:
            return Dovecot(directory, users, quotas, tls, config).start()
        except RuntimeError as err:
            # A free port taken by another process between the probe and Dovecot's bind (tests
            # run side by side): new ports, a new directory.
            shutil.rmtree(directory, ignore_errors=True)
            if "Address already in use" not in str(err) or attempt == 2:
                raise
    raise AssertionError("unreachable")
