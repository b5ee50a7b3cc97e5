"""On PYTHONPATH, every Python process of a run (the driver and each notebook's kernel) is offline.

A connection to anything but this machine (loopback or a Unix socket: the kernels' own channels)
raises `OSError`, and the attempt is appended to the file named by `MEMLOC_OFFLINE_LOG`, so a run
that tried to download something shows it even where the error was caught."""
import os
import socket

_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
_LOCAL = ("localhost", "127.", "::1", "0.0.0.0")


def _is_local(host) -> bool:
    return host == "" or isinstance(host, str) and host.startswith(_LOCAL)


def _refuse(what):
    log = os.environ.get("MEMLOC_OFFLINE_LOG")
    if log:
        with open(log, "a") as f: f.write(f"pid {os.getpid()}: {what}\n")
    raise OSError(f"network access blocked (offline run): {what}")


def connect(self, address):
    if self.family == getattr(socket, "AF_UNIX", None) or not isinstance(address, tuple) or _is_local(address[0]):
        return _connect(self, address)
    _refuse(f"connect to {address!r}")


def getaddrinfo(host, *args, **kwargs):
    if host is None or _is_local(host): return _getaddrinfo(host, *args, **kwargs)
    _refuse(f"name lookup of {host!r}")


socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
