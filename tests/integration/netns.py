"""A private LAN of Linux network namespaces, one per "host", for multi-host tests (root only).

    switch namespace:  bridge br0 ── one veth per host ── host namespace (eth0 = 10.A.B.n/24)
                                 └── one veth to the root namespace (10.A.B.1/24): the test's clients

Every name starts with `qcmh<pid>-` (namespaces) or is `qcmh<pid>` (the one link in the root
namespace), <pid> being the test process's: `sweep()` removes what a process that is gone left
behind, and never touches a run that is still going.  `Lan.close()` kills whatever still runs in
its namespaces, then deletes them and the root link, whatever failed before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess

PREFIX = "qcmh"
_OURS = re.compile(rf"^{PREFIX}(\d+)(-|$)")


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def capable() -> str | None:
    """Why namespaces cannot be built here (None: they can): not root, no `ip`, or `ip netns add` fails."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth links)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "br0", "type", "bridge")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot build network namespaces here: {exc}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(namespace: str) -> None:
    for pid in ip("netns", "pids", namespace, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep() -> list[str]:
    """Remove the namespaces and root links of earlier runs whose process is gone; returns their names."""
    removed = []
    for line in ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if (m := _OURS.match(name)) and not _alive(int(m.group(1))):
            _kill_inside(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show", check=False).splitlines():
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if (m := _OURS.match(name)) and not _alive(int(m.group(1))):
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no route of the root namespace touches."""
    lines = ip("-4", "route", "show", "table", "all").splitlines()
    first_words = [line.split()[0] for line in lines if line.split()]
    routes = [ipaddress.ip_network(word, strict=False) for word in first_words
              if re.match(r"^\d+\.\d+\.\d+\.\d+(/\d+)?$", word)]  # fmt: skip
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(route) for route in routes):
            return net
    raise RuntimeError("no free 10.x.y.0/24")


class Lan:
    """The switch namespace and the root namespace's link to it; hosts come with `add`."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.subnet = _free_subnet()
        self.hosts: dict[str, str] = {}  # host -> its address
        self.namespaces: list[str] = []
        self.root_link = ""
        addresses = self.subnet.hosts()
        self.client_address = str(next(addresses))  # .1: the root namespace's end
        self._next = iter(list(addresses)[9:])  # hosts from .11
        try:
            self._netns(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            self.root_link = self.tag
            ip("link", "add", self.root_link, "type", "veth", "peer", "name", "root", "netns", self.switch)
            ip("-n", self.switch, "link", "set", "root", "master", "br0", "up")
            ip("addr", "add", f"{self.client_address}/{self.subnet.prefixlen}", "dev", self.root_link)
            ip("link", "set", self.root_link, "up")
        except BaseException:
            self.close()
            raise

    def _netns(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def add(self, host: str) -> str:
        """A new host namespace plugged into the switch; returns its address."""
        namespace, address = self.namespace(host), str(next(self._next))
        port = f"p{len(self.hosts)}"
        self._netns(namespace)
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        self.hosts[host] = address
        return address

    def prefix(self, host: str) -> list[str]:
        """The argv that runs a program on `host`."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def close(self) -> None:
        """Kill what runs inside, delete every namespace (their veths go with them) and the root link."""
        for namespace in reversed(self.namespaces):
            _kill_inside(namespace)
            ip("netns", "del", namespace, check=False)
        self.namespaces.clear()
        if self.root_link:
            ip("link", "del", self.root_link, check=False)
            self.root_link = ""
