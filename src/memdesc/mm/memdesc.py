"""The memdesc word: ``descriptor address | type`` (type in bits 0-3), and the Misc inline word.

Sources: Memdescs rev B ("Bits 0-3 of memdesc are a type field"; Misc: "Bits 4-10 are used as a
subtype", "Bit 11 is set if the page may be mapped to userspace", "Bits 12-17 are used to store
the order of the page. The high bits are used to store section/node/zone information, as is done
today with the page flags") [S: kernelnewbies.org/MatthewWilcox/Memdescs?action=Save]; the type
tables are data in :mod:`memdesc.stages` (rev B default, rev A, Path 2025 with 0/4/8/12 aliasing
Buddy). Node and zone sit where memdesc_flags_t keeps them on this config: node 63..54, zone
53..51 [I: research §4.5, §8.2].
"""

from __future__ import annotations

from dataclasses import dataclass

from memdesc.mm.mm_types import (
    NODES_MASK,
    NODES_PGSHIFT,
    ZONES_MASK,
    ZONES_PGSHIFT,
    flags_node_zone,
)
from memdesc.stages import MISC_SUBTYPES, Stage, type_code

MEMDESC_TYPE_MASK = 0xF
#: Descriptors come from 16-byte aligned slab caches, so the low 4 bits are free [S: Memdescs].
MEMDESC_ALIGN = 16
MISC_SUBTYPE_SHIFT, MISC_SUBTYPE_MASK = 4, 0x7F
MISC_MAPPABLE_BIT = 11
MISC_ORDER_SHIFT, MISC_ORDER_MASK = 12, 0x3F
MISC_SUBTYPE = {name: code for code, name in MISC_SUBTYPES.items()}
#: What a plain alloc_pages() allocation is at the descriptor stages: a Misc page of subtype
#: "unknown (probably device driver)" - it has no descriptor [S: Memdescs rev B; choice I].
MISC_SUBTYPE_ALLOC_PAGES = MISC_SUBTYPE["unknown"]
MISC_SUBTYPE_RESERVED = MISC_SUBTYPE["reserved"]


@dataclass(frozen=True)
class Memdesc:
    """A decoded memdesc word."""

    word: int
    type: int
    type_name: str              # name in the stage's table, or "unassigned"
    pointer: int | None         # descriptor address (pointer types), None for Misc
    subtype: str | None = None  # Misc only
    mappable: bool = False
    order: int = 0
    nid: int = 0
    zone: int = 0


def memdesc_ptr(stage: Stage, type_name: str, addr: int) -> int:
    """``addr | type``. ValueError unless ``addr`` is 16-byte aligned and the table has the type."""
    if addr % MEMDESC_ALIGN:
        raise ValueError(f"descriptor address {addr:#x} is not 16-byte aligned")
    if type_name == "Misc":
        raise ValueError("Misc memdescs carry no pointer; use memdesc_misc()")
    return int(addr) | type_code(stage, type_name)


def memdesc_misc(stage: Stage, subtype: str | int, order: int, nid: int, zone: int,
                 mappable: bool = False) -> int:
    """A type-0 (rev B; type 1 in the Path 2025 table) Misc word with its inline bits."""
    sub = MISC_SUBTYPE[subtype] if isinstance(subtype, str) else int(subtype)
    if not 0 <= sub <= MISC_SUBTYPE_MASK or not 0 <= order <= MISC_ORDER_MASK:
        raise ValueError(f"Misc subtype {sub} or order {order} out of range")
    return (type_code(stage, "Misc") | (sub << MISC_SUBTYPE_SHIFT)
            | (int(mappable) << MISC_MAPPABLE_BIT) | (order << MISC_ORDER_SHIFT)
            | flags_node_zone(nid, zone))


def memdesc_decode(stage: Stage, word: int) -> Memdesc:
    """Split a memdesc word using the stage's type table."""
    word = int(word)
    t = word & MEMDESC_TYPE_MASK
    name = stage.types.get(t, "unassigned")
    if name != "Misc":
        return Memdesc(word, t, name, word & ~MEMDESC_TYPE_MASK)
    sub = (word >> MISC_SUBTYPE_SHIFT) & MISC_SUBTYPE_MASK
    return Memdesc(word, t, name, None, MISC_SUBTYPES.get(sub, f"subtype {sub}"),
                   bool(word >> MISC_MAPPABLE_BIT & 1),
                   (word >> MISC_ORDER_SHIFT) & MISC_ORDER_MASK,
                   (word >> NODES_PGSHIFT) & NODES_MASK, (word >> ZONES_PGSHIFT) & ZONES_MASK)
