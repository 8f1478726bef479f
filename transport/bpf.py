"""Classic BPF programs that let the kernel sort and drop datagrams before Python sees them.

Why (issue 21): every datagram a node reads costs it 5-9 us of Python (recvfrom,
checksum, frame parse, classification) even when it is dropped at once, and one
attacker process sends 50-100k a second, so a flood of datagrams that are dropped
cheaply still took half of a 2-core cluster's throughput. The kernel can do two
things for free (on loopback it runs them in the sender's own system call):

* **steer**: a reuseport group of two sockets on the node's one address, with a
  program (`SO_ATTACH_REUSEPORT_CBPF`) that sends datagrams from *trusted* sources
  (the configured replicas, the monitor, clients at their verified addresses) to
  socket 0 and everything else to socket 1. The endpoint reads socket 0 in full and
  socket 1 only up to a budget per pass, so what strangers send beyond their share is
  dropped by the kernel when socket 1's buffer is full, never read. Replicas' traffic
  has a receive buffer of its own that no stranger can fill (Aardvark kept clients and
  replicas on separate network cards for the same reason).
* **admit**: a socket filter (`SO_ATTACH_FILTER`) on socket 1 that drops, by a few
  bytes at fixed offsets, what a stranger may never send (see bft/admission.py).

`Asm` is a tiny assembler with forward labels; `steering_program` builds the first
program; `attach` installs a program on a socket. Nothing here is specific to the
protocol above, and everything but `attach` is pure. Linux only: elsewhere (or when
a kernel refuses) `attach` raises OSError and the endpoint keeps one socket.

Offsets. In a socket filter on a UDP socket the packet starts at the UDP header (the
payload at offset 8); in a reuseport program it starts at the UDP payload. Both reach
the IP header through `SKF_NET_OFF`. Source addresses are compared only for IP
headers without options (IPv4 IHL 5; IPv6 whose next header is UDP): anything else is
a stranger, which only costs its sender its trust.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Any

Insn = tuple[int, int, int, int]  # (code, jt, jf, k): struct sock_filter

# opcodes (linux/filter.h, linux/bpf_common.h)
LD_W_ABS = 0x20
LD_H_ABS = 0x28
LD_B_ABS = 0x30
LD_W_LEN = 0x80
LD_MEM = 0x60
ST = 0x02
TAX = 0x07
TXA = 0x87
ALU_AND_K = 0x54
JA = 0x05
JEQ_K = 0x15
JGT_K = 0x25
JGE_K = 0x35
RET_K = 0x06

SKF_NET_OFF = -0x100000
MAX_INSNS = 4096  # BPF_MAXINSNS
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8

ACCEPT = 0xFFFFFFFF  # a socket filter's "keep the whole datagram"
DROP = 0

#: Steering results: the index of the socket in the reuseport group.
TRUSTED = 0
STRANGER = 1


def net(offset: int) -> int:
    """The `k` of a load at `offset` bytes into the IP header."""
    return (SKF_NET_OFF + offset) & 0xFFFFFFFF


class Asm:
    """Instructions with symbolic forward jumps: `op(code, k, jt="label", jf="label")`;
    a jump target of None falls through. `assemble()` resolves the labels (a jump of
    more than 255 instructions, or backwards, is a ValueError)."""

    def __init__(self) -> None:
        self._items: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._items)

    def op(self, code: int, k: int = 0, *, jt: str | None = None, jf: str | None = None) -> None:
        self._items.append((code, jt, jf, k & 0xFFFFFFFF))

    def ret(self, value: int) -> None:
        self.op(RET_K, value)

    def assemble(self) -> list[Insn]:
        out: list[Insn] = []
        for at, (code, jt, jf, k) in enumerate(self._items):
            offsets = []
            for target in (jt, jf):
                if target is None:
                    offsets.append(0)
                    continue
                if target not in self._labels:
                    raise ValueError(f"undefined label {target!r}")
                off = self._labels[target] - at - 1
                if not 0 <= off <= 255:
                    raise ValueError(f"jump to {target!r} of {off} instructions")
                offsets.append(off)
            if code == JA:  # an unconditional jump carries its offset in k
                if jt is None:
                    raise ValueError("JA needs a target")
                out.append((JA, 0, 0, self._labels[jt] - at - 1))
            else:
                out.append((code, offsets[0], offsets[1], k))
        if len(out) > MAX_INSNS:
            raise ValueError(f"{len(out)} instructions: a classic BPF program holds {MAX_INSNS}")
        return out


def _ip_words(host: str) -> tuple[int, ...]:
    packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    return struct.unpack(f"!{len(packed) // 4}I", packed)


#: Instructions per trusted address and before the first, by family (used to bound the
#: number of addresses one program can hold).
_PER_SOURCE = {socket.AF_INET: 5, socket.AF_INET6: 11}
_PROLOGUE = {socket.AF_INET: 7, socket.AF_INET6: 18}


def max_trusted_sources(family: int) -> int:
    """How many source addresses one steering program can name."""
    return (MAX_INSNS - _PROLOGUE[family] - 1) // _PER_SOURCE[family]


def steering_program(trusted: Iterable[Sequence[Any]], family: int) -> list[Insn]:
    """A reuseport program: TRUSTED for a datagram from one of the `(host, port)`
    addresses of `trusted` (numeric, of `family`), STRANGER for anything else.
    ValueError if there are more than `max_trusted_sources(family)`."""
    sources = sorted({(_ip_words(a[0]), int(a[1])) for a in trusted})
    if len(sources) > max_trusted_sources(family):
        raise ValueError(f"{len(sources)} trusted sources: one program holds "
                         f"{max_trusted_sources(family)}")
    asm = Asm()
    if family == socket.AF_INET:
        asm.op(LD_B_ABS, net(0))
        asm.op(JEQ_K, 0x45, jt="v4")  # IPv4 without options: the port is at 20
        asm.ret(STRANGER)
        asm.label("v4")
        asm.op(LD_W_ABS, net(12))
        asm.op(TAX)  # X = source address
        port_at = net(20)
        asm.op(LD_H_ABS, port_at)
        for i, (words, port) in enumerate(sources):
            nxt = f"s{i + 1}"
            asm.op(JEQ_K, port, jf=nxt)
            asm.op(TXA)
            asm.op(JEQ_K, words[0], jf=f"r{i}")
            asm.ret(TRUSTED)
            asm.label(f"r{i}")
            asm.op(LD_H_ABS, port_at)
            asm.label(nxt)
    elif family == socket.AF_INET6:
        asm.op(LD_B_ABS, net(0))
        asm.op(ALU_AND_K, 0xF0)
        asm.op(JEQ_K, 0x60, jt="v6")
        asm.ret(STRANGER)
        asm.label("v6")
        asm.op(LD_B_ABS, net(6))
        asm.op(JEQ_K, socket.IPPROTO_UDP, jt="udp")  # no extension headers
        asm.ret(STRANGER)
        asm.label("udp")
        for w in range(4):  # M[w] = word w of the source address
            asm.op(LD_W_ABS, net(8 + 4 * w))
            asm.op(ST, w)
        port_at = net(40)
        asm.op(LD_H_ABS, port_at)
        for i, (words, port) in enumerate(sources):
            nxt = f"s{i + 1}"
            asm.op(JEQ_K, port, jf=nxt)
            for w in range(4):
                asm.op(LD_MEM, w)
                asm.op(JEQ_K, words[w], jf=f"r{i}")
            asm.ret(TRUSTED)
            asm.label(f"r{i}")
            asm.op(LD_H_ABS, port_at)
            asm.label(nxt)
    else:
        raise ValueError(f"address family {family!r} has no steering program")
    asm.ret(STRANGER)  # (the label of the last source's "next" is here)
    return asm.assemble()


def attach(sock: socket.socket, option: int, program: Sequence[Insn]) -> None:
    """Install `program` on `sock` with `option` (SO_ATTACH_FILTER or
    SO_ATTACH_REUSEPORT_CBPF), replacing any program before it. OSError if the kernel
    refuses (not Linux, an invalid program)."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, option, fprog)  # the kernel copies the program


def kernel_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for `sock` (its filter, or a full receive buffer):
    SK_MEMINFO_DROPS of SO_MEMINFO; 0 where the option does not exist."""
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
    except OSError:
        return 0
    return int(struct.unpack_from("9I", info)[SK_MEMINFO_DROPS])
