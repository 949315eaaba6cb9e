"""Throughput load for the rate rows that do not go through relay_bench.py: a sink and a generator.

``tools``: Postfix's smtp-sink (``-c`` counter) and smtp-source, exactly as relay_bench.py uses
them (cheap C programs, so the relay under test gets the CPU). ``python``: bench.sink in its own
process and bench.smtpclient.blast in this one — the fallback where Postfix's tools are not
installed (CI's smoke run)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import smtpclient
from bench.procs import Group, free_port, wait_port, wait_port_free
from bench.sink import SinkProcess


@dataclass
class TLSFiles:
    """A test CA and one certificate for 127.0.0.1 (trustme, a dev dependency), as PEM files: the
    sink's and the daemon's listener certificate, and the CA the clients verify it with."""

    ca_pem: Path
    server_pem: Path  # private key and certificate chain in one file

    @classmethod
    def make(cls, workdir: Path) -> TLSFiles:
        import trustme

        ca = trustme.CA()
        files = cls(workdir / "bench-ca.pem", workdir / "bench-tls.pem")
        ca.cert_pem.write_to_path(str(files.ca_pem))
        ca.issue_cert("127.0.0.1", "mx.test").private_key_and_cert_chain_pem.write_to_path(str(files.server_pem))
        return files

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def tools_available() -> bool:
    return bool(shutil.which("smtp-source") and shutil.which("smtp-sink"))


@dataclass
class Rates:
    accept: float  # msg/s until the last 250
    e2e: float  # msg/s until the last message reached the sink
    errors: int = 0


class Load:
    def __init__(self, kind: str, workdir: Path, sessions: int = 20, size: int = 1000,
                 port: int | None = None, tls: TLSFiles | None = None) -> None:
        # smtp-source and smtp-sink speak no TLS: a TLS load is always the Python one.
        self.kind = "python" if tls is not None else kind
        self.workdir, self.sessions, self.size, self.tls = workdir, sessions, size, tls
        self.port = port or free_port()
        self.proc: subprocess.Popen[Any] | None = None
        self.python_sink: SinkProcess | None = None
        self.out = workdir / f"load-sink-{self.port}.out"
        self.rounds = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Load:
        wait_port_free(self.port)
        if self.kind == "tools":
            argv = ["smtp-sink", "-c"] + (["-u", "postfix"] if os.geteuid() == 0 else []) + [self.address, "256"]
            self.proc = Group.start(argv, stdout=self.out.open("wb"), stderr=subprocess.DEVNULL)
            wait_port(self.port, 30.0, self.proc, "smtp-sink")
        else:
            self.python_sink = SinkProcess(self.port, self.out, self.tls.server_pem if self.tls else None).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            Group.stop(self.proc, timeout=5.0)
            self.proc = None
        if self.python_sink is not None:
            self.python_sink.stop()
            self.python_sink = None

    def count(self) -> int:
        if self.python_sink is not None:
            return self.python_sink.count()
        with self.out.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 200))
            tail = f.read()
        marks = [p for p in tail.replace(b"\r", b" ").split() if p.startswith(b"mesg=")]
        return int(marks[-1][5:]) if marks else 0

    def measure(self, smtp_port: int, n: int, timeout: float = 600.0) -> Rates:
        """Push n messages into 127.0.0.1:smtp_port; wait until the sink has n more."""
        self.rounds += 1
        before = self.count()
        t0 = time.time()
        errors = 0
        if self.kind == "tools":
            subprocess.run(["smtp-source", "-s", str(self.sessions), "-m", str(n), "-l", str(self.size),
                            "-f", smtpclient.SENDER, "-t", smtpclient.RCPT, f"127.0.0.1:{smtp_port}"],
                           check=True, stdin=subprocess.DEVNULL, timeout=timeout)
            t1 = time.time()
        else:
            tls = self.tls.client_context() if self.tls else None
            result = smtpclient.run(smtpclient.blast("127.0.0.1", smtp_port, n, self.sessions, self.size,
                                                     tag=f"load{self.rounds}", tls=tls))
            t1, errors = result.finished, len(result.errors)
            n = result.accepted
            if result.errors:
                from bench.procs import log

                log(f"load: {len(result.errors)} errors, first: {result.errors[0]}")
        while self.count() - before < n:
            if time.time() - t0 > timeout:
                raise RuntimeError(f"only {self.count() - before}/{n} reached the sink in {timeout:.0f}s")
            time.sleep(0.01)
        t2 = time.time()
        return Rates(n / (t1 - t0), n / (t2 - t0), errors)
