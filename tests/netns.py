"""Hosts for tests: a Linux network namespace joined to this one by a veth pair, so a service started in it
has its own network stack and address (10.77.N.2), reachable from here (10.77.N.1) as a second machine would
be. Needs root and iproute2. Everything made is removed on exit (deleting the namespace deletes its veth)."""

from __future__ import annotations

import os
import shutil
import subprocess


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Host:
    def __init__(self, name: str, index: int) -> None:
        assert 1 <= index <= 250
        self.namespace = f"specdec-{name}-{os.getpid()}"
        self.index = index
        self.address = f"10.77.{index}.2"  # inside the namespace
        self.gateway = f"10.77.{index}.1"  # this side of the link
        self._outside = f"sd{index}o{os.getpid() % 100000}"  # interface names are at most 15 characters
        self._inside = f"sd{index}i{os.getpid() % 100000}"

    @staticmethod
    def available() -> str:
        """'' when namespaces can be made here, else why not."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "network namespaces need iproute2 (ip)"
        return ""

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it on the host."""
        return ["ip", "netns", "exec", self.namespace]

    def __enter__(self) -> Host:
        ip("netns", "add", self.namespace)
        try:
            ip("link", "add", self._outside, "type", "veth", "peer", "name", self._inside)
            ip("link", "set", self._inside, "netns", self.namespace)
            ip("addr", "add", f"{self.gateway}/30", "dev", self._outside)
            ip("link", "set", self._outside, "up")
            inside = ["netns", "exec", self.namespace, "ip"]
            ip(*inside, "addr", "add", f"{self.address}/30", "dev", self._inside)
            ip(*inside, "link", "set", self._inside, "up")
            ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self._outside], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
