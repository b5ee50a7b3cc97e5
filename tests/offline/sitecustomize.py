"""On PYTHONPATH, every Python process of a run (the driver and each notebook's kernel) is offline.

A connection, datagram or name lookup for anything but this machine (a loopback or unspecified
address, `localhost`, or a Unix socket: the kernels' own channels) raises `OSError`, and the attempt
is appended to the file named by `MEMLOC_OFFLINE_LOG`, so a run that tried to download something
shows it even where the error was caught. (The kernels' ZMQ channels live in libzmq, below Python.)"""
import ipaddress
import os
import socket

_real = {n: getattr(socket.socket, n) for n in ("connect", "connect_ex", "sendto", "sendmsg")}
_lookups = {n: getattr(socket, n) for n in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr")}


def _is_local(host) -> bool:
    if isinstance(host, bytes): host = host.decode(errors="replace")
    if host in ("", "localhost", None): return True
    try: ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError: return False                     # a name other than localhost
    return ip.is_loopback or ip.is_unspecified


def _refuse(what):
    log = os.environ.get("MEMLOC_OFFLINE_LOG")
    if log:
        with open(log, "a") as f: f.write(f"pid {os.getpid()}: {what}\n")
    raise OSError(f"network access blocked (offline run): {what}")


def _guard(name, pick):
    real = _real[name]
    def method(self, *args):
        address = pick(args)
        if self.family != getattr(socket, "AF_UNIX", None) and isinstance(address, tuple) and not _is_local(address[0]):
            _refuse(f"{name} to {address!r}")
        return real(self, *args)
    return method


def _lookup(name):
    real = _lookups[name]
    def lookup(host, *args, **kwargs):
        if not _is_local(host): _refuse(f"{name} of {host!r}")
        return real(host, *args, **kwargs)
    return lookup


socket.socket.connect = _guard("connect", lambda a: a[0])
socket.socket.connect_ex = _guard("connect_ex", lambda a: a[0])
socket.socket.sendto = _guard("sendto", lambda a: a[-1])
socket.socket.sendmsg = _guard("sendmsg", lambda a: a[3] if len(a) > 3 else None)
for _n in _lookups: setattr(socket, _n, _lookup(_n))
