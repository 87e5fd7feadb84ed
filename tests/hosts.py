"""Worker "hosts" for multi-host tests: each a Linux network namespace of its own (made
with `ip netns`, joined to this machine by a veth pair on a private /30), reaching the
servers that run on this machine's loopback only through TCP forwarders on its link.

Nothing else is shared with a host but what its settings name: its data dir is its own.
Where network namespaces cannot be made (not root, no iproute2), `loopback_hosts` gives
hosts that share loopback and differ by data dir only; `Host.isolated` says which.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field


class NamespacesUnavailable(RuntimeError):
    pass


@dataclass
class Host:
    name: str
    # how this host reaches the servers (the machine's end of its link, or loopback)
    server_ip: str
    isolated: bool
    forwarders: dict[int, Forwarder] = field(default_factory=dict)

    @property
    def command_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name] if self.isolated else []

    def port_for(self, port: int) -> int:
        """The port this host dials for a server on this machine's loopback `port`."""
        if not self.isolated:
            return port
        if port not in self.forwarders:
            self.forwarders[port] = Forwarder((self.server_ip, 0), ("127.0.0.1", port)).start()
        return self.forwarders[port].port

    def remove(self) -> None:
        for forwarder in self.forwarders.values():
            forwarder.stop()
        if self.isolated:
            # the veth pair goes with the namespace
            subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise NamespacesUnavailable(f"ip {' '.join(args)}: {result.stderr.strip()}")


def namespace_hosts(count: int) -> list[Host]:
    """`count` hosts in network namespaces; NamespacesUnavailable when they cannot be
    made here."""
    tag = uuid.uuid4().hex[:6]
    # a private /30 per host, at random so that concurrent runs do not collide
    second, third = random.randint(200, 250), random.randint(0, 255)
    hosts: list[Host] = []
    try:
        for index in range(count):
            name = f"sqz-{tag}-{index}"
            outside, inside = f"sq{tag}{index}a", f"sq{tag}{index}b"
            subnet = f"10.{second}.{third}.{4 * index}"
            server_ip, host_ip = _offset(subnet, 1), _offset(subnet, 2)
            _ip("netns", "add", name)
            hosts.append(Host(name, server_ip, isolated=True))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", name)
            _ip("addr", "add", f"{server_ip}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", name, "addr", "add", f"{host_ip}/30", "dev", inside)
            _ip("-n", name, "link", "set", inside, "up")
            _ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        for host in hosts:
            host.remove()
        raise
    return hosts


def _offset(subnet: str, offset: int) -> str:
    *head, last = subnet.split(".")
    return ".".join([*head, str(int(last) + offset)])


def loopback_hosts(count: int) -> list[Host]:
    return [Host(f"loopback-{index}", "127.0.0.1", isolated=False) for index in range(count)]


class Forwarder:
    """A TCP forwarder: accepts on `listen` and pipes each connection to `target`."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen)
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._stopped = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> Forwarder:
        threading.Thread(target=self._accept, name=f"forward-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._server.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._open.update({client, upstream})
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with self._lock:
                self._open.discard(source)
            with contextlib.suppress(OSError):
                source.close()
