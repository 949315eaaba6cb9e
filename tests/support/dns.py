"""A small authoritative DNS responder on loopback (UDP, dnspython) serving TXT records: DKIM key
records for tests that verify signatures through the real lookup path."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from types import TracebackType

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class TXTServer:
    def __init__(self, records: dict[str, str]) -> None:
        self.records = {name.rstrip(".").lower() + ".": value for name, value in records.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> TXTServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stopping.set()
        self._thread.join()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.sock.sendto(self._answer(dns.message.from_wire(data)).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        name = query.question[0].name.to_text().lower()
        value = self.records.get(name)
        if value is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:  # split into 255-octet strings (RFC 6376 §3.6.2.2)
            strings = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", strings))
        response.flags |= dns.flags.AA
        return response


class ZoneServer(TXTServer):
    """As TXTServer, for any record type: ``{(name, type): [rdata, ...]}``, e.g.
    ``{("example.test", "MX"): ["10 mx.example.test."], ("mx.example.test", "A"): ["127.0.0.1"]}``.
    A known name without records of the type asked gets an empty answer (NOERROR), an unknown one NXDOMAIN;
    a name in `servfail` gets SERVFAIL (a lookup that fails for now)."""

    def __init__(self, zone: dict[tuple[str, str], list[str]], servfail: Iterable[str] = ()) -> None:
        super().__init__({})
        self.zone = {(name.rstrip(".").lower() + ".", rtype.upper()): rdata for (name, rtype), rdata in zone.items()}
        self.servfail = {name.rstrip(".").lower() + "." for name in servfail}  # names whose every lookup fails

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name, rtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        rdata = self.zone.get((name, rtype))
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif rdata:
            response.answer.append(dns.rrset.from_text_list(name, 60, "IN", rtype, rdata))
        elif not any(known == name for known, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.flags |= dns.flags.AA
        return response
