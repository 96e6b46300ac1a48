"""A small reader of x86 ELF images held in memory: the header, the section headers and the
symbols, with `struct` (the layouts of the ELF gABI), for the scanner (vmxaddr.scan).

pyelftools costs about 2.5 ms per file to open, more than objdump needs to disassemble a typical
kernel module, so the scanner only uses it in the tests, as the reference this reader is checked
against.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmxaddr.scanio import ScanError

SHT_SYMTAB, SHT_NOBITS, SHT_DYNSYM = 2, 8, 11
SHF_EXECINSTR = 0x4
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
SHN_LORESERVE = 0xFF00
ET_NAMES = {1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
X86_MACHINES = {3: "i386", 6: "i486", 62: "x86-64"}


@dataclass(frozen=True, slots=True)
class Section:
    """One section header: index, name, type, flags, address, file offset, size, link and entry
    size."""
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass(frozen=True, slots=True)
class Symbol:
    """One symbol defined in a section: name, value (a section offset once read by `Elf.symbols`),
    size, type, section index."""
    name: str
    value: int
    size: int
    type: int
    shndx: int


class Elf:
    """ELF header, section headers and symbols of an x86 ELF image held in memory."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        if len(data) < 16 or data[:4] != b"\x7fELF":
            raise ScanError("not an ELF file" + (" (empty)" if not data else ""))
        ei_class, ei_data = data[4], data[5]
        if ei_class not in (1, 2):
            raise ScanError(f"bad ELF class byte {ei_class}")
        if ei_data != 1:
            raise ScanError("not a little-endian ELF file, so not x86" if ei_data == 2
                            else f"bad ELF data-encoding byte {ei_data}")
        self.bits = 32 if ei_class == 1 else 64
        ehdr = "<HHIIIIIHHHHHH" if self.bits == 32 else "<HHIQQQIHHHHHH"
        if len(data) < 16 + struct.calcsize(ehdr):
            raise ScanError("truncated ELF header")
        (self.e_type, self.machine, _version, self.entry, _phoff, shoff, _flags, _ehsize,
         _phentsize, _phnum, shentsize, shnum, shstrndx) = struct.unpack_from(ehdr, data, 16)
        if self.machine not in X86_MACHINES:
            raise ScanError(f"not an x86 ELF file (e_machine {self.machine})")
        shdr = "<IIIIIIIIII" if self.bits == 32 else "<IIQQQQIIQQ"
        need = struct.calcsize(shdr)
        if shoff == 0:
            raise ScanError("no section header table")
        if shentsize < need:
            raise ScanError(f"bad section header size {shentsize}")
        if shnum == 0 and shoff + need <= len(data):  # more than 0xff00 sections: count in [0]
            shnum = struct.unpack_from(shdr, data, shoff)[5]
        if shoff + shnum * shentsize > len(data):
            raise ScanError(f"truncated: the section headers end at {shoff + shnum * shentsize:#x},"
                            f" the file at {len(data):#x}")
        raw = [struct.unpack_from(shdr, data, shoff + i * shentsize) for i in range(shnum)]
        if shstrndx == 0xFFFF and raw:  # SHN_XINDEX
            shstrndx = raw[0][6]
        names = b""
        if 0 < shstrndx < shnum:
            names = self._bytes_of(raw[shstrndx], "the section-name table")
        self.sections: list[Section] = []
        for i, (name, typ, flags, addr, off, size, link, _info, _align, entsize) in enumerate(raw):
            if typ != SHT_NOBITS and i and off + size > len(data):
                raise ScanError(f"truncated: section {i} ends at {off + size:#x}, "
                                f"the file at {len(data):#x}")
            self.sections.append(Section(i, _cstr(names, name) if names else f"#{i}", typ, flags,
                                         addr, off, size, link, entsize))
        self._entries: list[tuple[int, int, int, int, int]] | None = None
        self._strtab = b""
        self._starts: dict[int, set[int]] | None = None

    def _bytes_of(self, raw: tuple[int, ...], what: str) -> bytes:
        off, size = raw[4], raw[5]
        if off + size > len(self.data):
            raise ScanError(f"truncated: {what} ends at {off + size:#x}, the file at {len(self.data):#x}")
        return bytes(self.data[off:off + size])

    @property
    def relocatable(self) -> bool:
        """True for an object file (ET_REL): its symbol values are section offsets already."""
        return self.e_type == 1

    def section_bytes(self, s: Section) -> bytes:
        """The bytes of section `s` as the file holds them."""
        return bytes(self.data[s.offset:s.offset + s.size])

    def executable_sections(self) -> list[Section]:
        """The sections holding code (SHF_EXECINSTR, with bytes in the file), the ones the scanner
        searches."""
        return [s for s in self.sections
                if s.flags & SHF_EXECINSTR and s.type != SHT_NOBITS and s.size and s.index]

    def _symbol_entries(self) -> list[tuple[int, int, int, int, int]]:
        """(name offset, value, size, type, section index) of the named symbols defined in a
        section, from the static symbol table, else the dynamic one (what objdump -d labels
        code with); section and file symbols left out, as objdump does."""
        if self._entries is None:
            self._entries = []
            for want in (SHT_SYMTAB, SHT_DYNSYM):
                tabs = [s for s in self.sections if s.type == want]
                if tabs:
                    tab = tabs[0]
                    self._entries = self._read_symbols(tab)
                    self._strtab = self.section_bytes(self.sections[tab.link])
                    break
        return self._entries

    def _read_symbols(self, tab: Section) -> list[tuple[int, int, int, int, int]]:
        fmt = "<IIIBBH" if self.bits == 32 else "<IBBHQQ"
        size = struct.calcsize(fmt)
        if tab.entsize not in (0, size) or not 0 < tab.link < len(self.sections):
            raise ScanError(f"bad symbol table {tab.name}")
        body = self.section_bytes(tab)
        body = body[:len(body) - len(body) % size]
        if self.bits == 32:
            ents = [(n, v, sz, i & 0xF, x) for n, v, sz, i, _o, x in struct.iter_unpack(fmt, body)]
        else:
            ents = [(n, v, sz, i & 0xF, x) for n, i, _o, x, v, sz in struct.iter_unpack(fmt, body)]
        return [e for e in ents if e[0] and e[3] != STT_SECTION and e[3] != STT_FILE
                and 0 < e[4] < SHN_LORESERVE]

    def symbol_starts(self, sec: Section) -> list[int]:
        """Section offsets where objdump -d restarts its sweep: 0 and every symbol."""
        if self._starts is None:
            self._starts = {}
            rel = self.relocatable
            addr = {s.index: (0 if rel else s.addr, s.size) for s in self.sections}
            for _n, value, _sz, _t, shndx in self._symbol_entries():
                base, size = addr.get(shndx, (0, 0))
                if 0 <= value - base < size:
                    self._starts.setdefault(shndx, set()).add(value - base)
        return sorted(self._starts.get(sec.index, set()) | {0})

    def symbols(self, sec: Section) -> list[Symbol]:
        """The symbols defined in a section, with their values as section offsets."""
        base = 0 if self.relocatable else sec.addr
        return [Symbol(_cstr(self._strtab, n), v - base, sz, t, x)
                for n, v, sz, t, x in self._symbol_entries()
                if x == sec.index and 0 <= v - base < sec.size]


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")
