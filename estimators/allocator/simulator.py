"""A simulator of PyTorch's CUDA caching allocator (one device), in pure Python.

Faithful to c10/cuda/CUDACachingAllocator.cpp (DeviceCachingAllocator) of torch 2.13, read on
pytorch/pytorch: every function below names the C++ function it mirrors.

- round_size: < 512 B -> 512; with roundup_power2_divisions d > 1 for the size's interval and
  size > 512*d, the next of d steps between powers of two; else a multiple of 512.
- pools: rounded size <= 1 MiB -> small pool, else large pool. Free blocks are kept per pool and
  per stream, ordered by (size, address): get_free_block takes the smallest block >= size on the
  same stream (lowest address on ties) and gives up, without looking further, if that block breaks
  the max_split_size rules.
- get_allocation_size: <= 1 MiB -> 2 MiB; < 10 MiB -> large_segment_size (20 MiB); else rounded up
  to 2 MiB.
- should_split: small pool or expandable segments: remainder >= 512; large pool: size <
  max_split_size and remainder > 1 MiB.
- malloc: free block, else cudaMalloc (fails when reserved + segment > capacity), else
  release_available_cached_blocks (only with max_split_size) and retry, else release_cached_blocks
  (every unsplit cached segment; free pages of expandable segments), num_alloc_retries += 1, retry,
  else OOM.
- free: merge with free neighbours of the same segment, back to the pool; inactive_split_bytes
  follows the C++ bookkeeping exactly (and, like it, ignores expandable segments).
- expandable_segments: one virtual segment per (pool, stream) mapped in pages of 2 MiB (small pool)
  or large_segment_size (large pool), at the lowest address with enough free or unmapped room.

Not simulated: cross-stream uses (record_stream events: use "free_requested" then "free" to model
the delay), CUDA-graph private pools, garbage_collection_threshold (acts only with a memory
fraction), and cudaMalloc addresses (segments get increasing addresses; only ties depend on them).

Events (the input format, shared with the profiler and the estimator):
    ("alloc", id, nbytes, stream)   nbytes as requested (the simulator rounds); stream optional (0)
    ("free", id)                    the block becomes reusable (free_completed)
    ("free_requested", id)          optional: allocated drops now, the block stays unusable until
                                    ("free", id) - what record_stream does
    ("empty_cache",)                torch.cuda.empty_cache()
ids are any hashable values unique among live allocations; streams are any orderable values.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

from ..errors import MemprofUserError
from .config import AllocatorConfig, parse_alloc_conf

# One allocation event, in one of the shapes listed above (the first item names the kind; the
# profiler's timelines add items of their own, see timeline.py).
Event: TypeAlias = tuple[Any, ...]

K_MIN_BLOCK = 512  # kMinBlockSize
K_SMALL_SIZE = 1 << 20  # kSmallSize: largest small-pool request
K_SMALL_BUFFER = 2 << 20  # kSmallBuffer: small-pool segment
K_MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
K_ROUND_LARGE = 2 << 20  # kRoundLarge
# The largest single request the simulator takes: 256 TiB, a thousand times the largest GPU's memory.
# It keeps every address, segment and counter far below the bounds below (docs/architecture.md,
# "Input files"); a snapshot or profile asking for more is not a recording of a real program.
MAX_ALLOCATION = 1 << 48
_SPAN = 1 << 64  # free-list key = size * _SPAN + address (addresses stay below)
_NO_LIMIT = 1 << 62
# virtual size of an expandable segment when no capacity is given (at least the request it is made for)
_DEFAULT_ADDRESS_SPACE = 1 << 40


class Block:
    """A piece of a segment: allocated, cached (free) or, in expandable segments, unmapped."""

    __slots__ = ("addr", "size", "stream", "small", "prev", "next", "busy", "counted", "mapped", "seg", "requested")

    def __init__(self, addr: int, size: int, stream: Any, small: bool, seg: _Expandable | None = None):
        self.addr = addr
        self.size = size
        self.stream = stream
        self.small = small
        self.prev: Block | None = None
        self.next: Block | None = None
        self.busy = False  # allocated, or freed but awaiting free_completed (not mergeable)
        self.counted = False  # its size is in allocated_bytes
        self.mapped = True
        self.seg = seg  # the expandable segment holding it, or None
        self.requested = 0


class _Expandable:
    __slots__ = ("base", "page", "size")

    def __init__(self, base: int, page: int, size: int):
        self.base = base
        self.page = page
        self.size = size


class _Pool:
    """One BlockPool: free blocks per stream, sorted by (size, address), and unmapped ranges."""

    __slots__ = ("small", "free", "blocks", "unmapped", "unmapped_blocks")

    def __init__(self, small: bool):
        self.small = small
        self.free: dict[Any, list[int]] = {}
        self.blocks: dict[int, Block] = {}
        self.unmapped: dict[Any, list[int]] = {}
        self.unmapped_blocks: dict[int, Block] = {}

    def insert(self, b: Block) -> None:
        key = b.size * _SPAN + b.addr
        self.blocks[key] = b
        lst = self.free.get(b.stream)
        if lst is None:
            self.free[b.stream] = [key]
        else:
            insort(lst, key)

    def remove(self, b: Block) -> None:
        key = b.size * _SPAN + b.addr
        del self.blocks[key]
        lst = self.free[b.stream]
        del lst[bisect_left(lst, key)]

    def insert_unmapped(self, b: Block) -> None:
        self.unmapped_blocks[b.addr] = b
        insort(self.unmapped.setdefault(b.stream, []), b.addr)

    def remove_unmapped(self, b: Block) -> None:
        del self.unmapped_blocks[b.addr]
        lst = self.unmapped[b.stream]
        del lst[bisect_left(lst, b.addr)]


@dataclass
class OutOfMemory:
    """Where the replay ran out of memory (the allocator would raise torch.OutOfMemoryError)."""

    event_index: int
    requested: int  # bytes asked for
    rounded: int  # after round_size
    segment: int  # what cudaMalloc was asked for (or pages to map)
    allocated: int  # allocated bytes at that moment
    reserved: int  # reserved bytes after releasing every cached segment it could
    inactive_split: int


class ReplayCapture:
    """What a replay keeps for explaining it and for replaying its measured step in other orders
    (allocator.explain.summarize), so that neither needs the events before the step again:
    - at_reset: a copy of the simulator just before the event `reset_peaks_at` (peaks not yet reset);
    - peak: (event index, blocks, reserved, allocated) right after the last event that raised the
      reserved peak after the reset (a new segment; few in a step, each O(blocks) to record);
      `segments_of(blocks)` is segments() at that moment.
    Both stay None when the replay never got there (an out-of-memory error before the reset)."""

    __slots__ = ("at_reset", "peak")

    def __init__(self) -> None:
        self.at_reset: CachingAllocatorSimulator | None = None
        self.peak: tuple[int, list[tuple[int, int, Hashable | None, bool]], int, int] | None = None


def segments_of(blocks: list[tuple[int, int, Hashable | None, bool]]) -> list[list[tuple[int, int, Hashable | None]]]:
    """CachingAllocatorSimulator.segments() from the blocks recorded by _mapped_blocks: in address
    order (segments do not overlap, a segment's blocks are contiguous), a segment starts at each
    block that begins one (no mapped block before it in its segment)."""
    out: list[list[tuple[int, int, Hashable | None]]] = []
    seg: list[tuple[int, int, Hashable | None]] = []
    for addr, size, ident, starts in sorted(blocks):  # addresses are distinct: ids are never compared
        if starts and seg:
            out.append(seg)
            seg = []
        seg.append((addr, size, ident))
    if seg:
        out.append(seg)
    return out


@dataclass
class SimResult:
    """Figures of one replay. Byte counts are ints; 'at_peak' means when allocated bytes peaked."""

    config: str
    capacity: int | None
    events: int
    peak_allocated: int
    peak_reserved: int
    peak_requested: int
    reserved_at_peak: int
    inactive_split_at_peak: int
    peak_inactive_split: int
    num_alloc_retries: int
    num_ooms: int
    num_device_alloc: int
    num_device_free: int
    final_allocated: int
    final_reserved: int
    unmatched_frees: int
    oom: OutOfMemory | None = None
    segment_events: list[tuple[str, int]] | None = field(default=None, repr=False)
    retries_before_reset: int = 0  # num_alloc_retries when the peaks were last reset
    # the events at which reserved and allocated bytes last reached their peaks (after the last
    # reset); None when no event raised them (the peak is what the reset found)
    peak_reserved_event: int | None = None
    peak_allocated_event: int | None = None

    @property
    def fragmentation(self) -> float:
        """1 - allocated/reserved at the moment allocated bytes peaked."""
        return 1.0 - self.peak_allocated / self.reserved_at_peak if self.reserved_at_peak else 0.0

    @property
    def fragmentation_of_peaks(self) -> float:
        """1 - max_memory_allocated/max_memory_reserved: what the profiler can measure."""
        return 1.0 - self.peak_allocated / self.peak_reserved if self.peak_reserved else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "capacity": self.capacity,
            "events": self.events,
            "peak": {
                "allocated": self.peak_allocated,
                "reserved": self.peak_reserved,
                "requested": self.peak_requested,
            },
            "at_peak": {
                "allocated": self.peak_allocated,
                "reserved": self.reserved_at_peak,
                "inactive_split": self.inactive_split_at_peak,
            },
            "fragmentation": round(self.fragmentation, 6),
            "fragmentation_of_peaks": round(self.fragmentation_of_peaks, 6),
            "inactive_split": self.inactive_split_at_peak,
            "peak_inactive_split": self.peak_inactive_split,
            "num_alloc_retries": self.num_alloc_retries,
            "num_ooms": self.num_ooms,
            "num_device_alloc": self.num_device_alloc,
            "num_device_free": self.num_device_free,
            "final": {"allocated": self.final_allocated, "reserved": self.final_reserved},
            "unmatched_frees": self.unmatched_frees,
            "oom": asdict(self.oom) if self.oom else None,
        }


class CachingAllocatorSimulator:
    """DeviceCachingAllocator for one device: call malloc/free/empty_cache, read the counters."""

    def __init__(
        self, config: AllocatorConfig | str | None = None, capacity: int | None = None, record_segments: bool = False
    ):
        if config is None or isinstance(config, str):
            config = parse_alloc_conf(config)
        self.config = config
        self.capacity = capacity
        limit = _NO_LIMIT if capacity is None else int(capacity * config.per_process_memory_fraction)
        self._limit = limit
        self._max_split = config.max_split_size if config.max_split_size is not None else _NO_LIMIT
        self._non_split_rounding = config.max_non_split_rounding
        self._large_segment = config.large_segment_size
        self._expandable = config.expandable_segments
        self._divisions = config.roundup_power2_divisions if any(config.roundup_power2_divisions) else None
        self._es_space = _DEFAULT_ADDRESS_SPACE if capacity is None else capacity + capacity // 8
        self.small_pool = _Pool(True)
        self.large_pool = _Pool(False)
        self.live: dict[Hashable, Block] = {}
        self._next_addr = 1 << 21
        self._spare_ranges: dict[int, list[int]] = {}
        self._empty: set[Hashable] = set()  # ids of 0-byte allocations (no block)
        # statistics (DeviceStats, aggregate)
        self.allocated = 0
        self.reserved = 0
        self.requested = 0
        self.inactive_split = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.peak_requested = 0
        self.peak_inactive_split = 0
        self.reserved_at_peak = 0
        self.inactive_split_at_peak = 0
        self.num_alloc_retries = 0
        self.num_ooms = 0
        self.num_device_alloc = 0
        self.num_device_free = 0
        self.unmatched_frees = 0
        self.retries_before_reset = 0
        self.last_oom: tuple[int, int, int] | None = None  # (requested, rounded, segment)
        self.segment_events: list[tuple[str, int]] | None = [] if record_segments else None

    # ---------------------------------------------------------------- sizes
    def round_size(self, size: int) -> int:
        """round_size + roundup_power2_next_division."""
        if size < K_MIN_BLOCK:
            return K_MIN_BLOCK
        if self._divisions is not None:
            divisions = self.config.divisions_for(size)
            if divisions > 1 and size > K_MIN_BLOCK * divisions:
                if size & (size - 1) == 0:
                    return size
                floor = 1 << (size.bit_length() - 1)
                step = floor >> (divisions.bit_length() - 1)
                if step == 0:
                    return floor << 1
                rounded_floor = size & ~(step - 1)
                return size if rounded_floor == size else rounded_floor + step
        return (size + 511) & ~511

    def allocation_size(self, size: int) -> int:
        """get_allocation_size: the segment cudaMalloc is asked for."""
        if size <= K_SMALL_SIZE:
            return K_SMALL_BUFFER
        if size < K_MIN_LARGE_ALLOC:
            return self._large_segment
        return (size + K_ROUND_LARGE - 1) // K_ROUND_LARGE * K_ROUND_LARGE

    # ---------------------------------------------------------------- public operations
    def malloc(self, ident: Hashable, nbytes: int, stream: Any = 0) -> bool:
        """DeviceCachingAllocator::malloc. False (and num_ooms += 1) when it would raise OOM."""
        if ident in self.live:
            raise MemprofUserError(f"allocation id {ident!r} is allocated twice without a free in between")
        if nbytes <= 0:
            if nbytes < 0:
                raise MemprofUserError(f"allocation {ident!r} asks for {nbytes} bytes; sizes cannot be negative")
            # CUDACachingAllocator::allocate never calls malloc for 0 bytes (a null data pointer)
            self._empty.add(ident)
            return True
        if nbytes > MAX_ALLOCATION:
            raise MemprofUserError(
                f"allocation {ident!r} asks for {nbytes:,} bytes, more than the allocator simulator takes "
                f"in one request (2**48 bytes, 256 TiB)"
            )
        if self._divisions is None:
            size = K_MIN_BLOCK if nbytes < K_MIN_BLOCK else (nbytes + 511) & ~511
        else:
            size = self.round_size(nbytes)
        small = size <= K_SMALL_SIZE
        pool = self.small_pool if small else self.large_pool
        block = self._get_free_block(pool, size, stream)
        if block is None:
            block = self._alloc_block(pool, size, stream)
            if block is None:
                if self._max_split != _NO_LIMIT and self._release_available_cached_blocks(pool, size, stream):
                    block = self._alloc_block(pool, size, stream)
                if block is None:
                    self._release_cached_blocks()
                    self.num_alloc_retries += 1
                    block = self._alloc_block(pool, size, stream)
                if block is None:
                    self.num_ooms += 1
                    segment = size if self._expandable else self.allocation_size(size)
                    self.last_oom = (nbytes, size, segment)
                    return False
        remaining = block.size - size
        if small or self._expandable:
            split = remaining >= K_MIN_BLOCK
        else:
            split = size < self._max_split and remaining > K_SMALL_SIZE
        # alloc_found_block
        already_split = block.prev is not None or block.next is not None
        if split:
            rest = block
            block = Block(rest.addr, size, stream, small, rest.seg)
            block.prev = rest.prev
            if rest.prev is not None:
                rest.prev.next = block
            block.next = rest
            rest.prev = block
            rest.addr += size
            rest.size = remaining
            key = remaining * _SPAN + rest.addr
            pool.blocks[key] = rest
            lst = pool.free.get(stream)
            if lst is None:
                pool.free[stream] = [key]
            else:
                insort(lst, key)
            if rest.seg is None:
                if already_split:
                    self.inactive_split -= size
                else:
                    self.inactive_split += remaining
                    if self.inactive_split > self.peak_inactive_split:
                        self.peak_inactive_split = self.inactive_split
        elif already_split and block.seg is None:
            self.inactive_split -= block.size
        block.busy = True
        block.counted = True
        block.requested = nbytes
        self.live[ident] = block
        self.requested += nbytes
        if self.requested > self.peak_requested:
            self.peak_requested = self.requested
        allocated = self.allocated + block.size
        self.allocated = allocated
        if allocated > self.peak_allocated:
            self.peak_allocated = allocated
            self.reserved_at_peak = self.reserved
            self.inactive_split_at_peak = self.inactive_split
        return True

    def free_requested(self, ident: Hashable) -> None:
        """DeviceCachingAllocator::free with pending stream uses: allocated drops, reuse waits."""
        block = self.live.get(ident)
        if block is None:
            if ident not in self._empty:
                self.unmatched_frees += 1
            return
        if block.counted:
            block.counted = False
            self.allocated -= block.size
            self.requested -= block.requested

    def free(self, ident: Hashable) -> None:
        """DeviceCachingAllocator::free + free_block: the block returns to its pool."""
        block = self.live.pop(ident, None)
        if block is None:
            if ident in self._empty:
                self._empty.discard(ident)
            else:
                self.unmatched_frees += 1
            return
        if block.counted:
            self.allocated -= block.size
            self.requested -= block.requested
        block.counted = False
        block.busy = False
        pool = self.small_pool if block.small else self.large_pool
        blocks = pool.blocks
        lst = pool.free.get(block.stream)
        net = 0
        prev = block.prev
        if prev is not None and not prev.busy and prev.mapped:
            assert lst is not None  # prev is cached on this stream
            key = prev.size * _SPAN + prev.addr  # pool.remove(prev), inlined for speed
            del blocks[key]
            del lst[bisect_left(lst, key)]
            block.addr = prev.addr
            block.size += prev.size
            block.prev = prev.prev
            if prev.prev is not None:
                prev.prev.next = block
            net -= prev.size
        nxt = block.next
        if nxt is not None and not nxt.busy and nxt.mapped:
            assert lst is not None  # nxt is cached on this stream
            key = nxt.size * _SPAN + nxt.addr
            del blocks[key]
            del lst[bisect_left(lst, key)]
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
            net -= nxt.size
        key = block.size * _SPAN + block.addr  # pool.insert(block)
        blocks[key] = block
        if lst is None:
            pool.free[block.stream] = [key]
        else:
            insort(lst, key)
        if block.seg is None:
            if block.prev is not None or block.next is not None:
                net += block.size
            if net:
                self.inactive_split += net
                if self.inactive_split > self.peak_inactive_split:
                    self.peak_inactive_split = self.inactive_split

    def empty_cache(self) -> None:
        """torch.cuda.empty_cache(): release_cached_blocks."""
        self._release_cached_blocks()

    def reset_peak_stats(self) -> None:
        """torch.cuda.reset_peak_memory_stats(): every peak becomes the current value.

        Counters (num_alloc_retries, num_ooms, device allocs and frees) are cumulative, as in torch;
        the retries so far are remembered in retries_before_reset.
        """
        self.retries_before_reset = self.num_alloc_retries
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved
        self.peak_requested = self.requested
        self.peak_inactive_split = self.inactive_split
        self.reserved_at_peak = self.reserved
        self.inactive_split_at_peak = self.inactive_split

    def clone(self) -> CachingAllocatorSimulator:
        """An independent copy of this simulator's state (blocks, pools, counters), O(blocks): the
        copy and the original replay on without affecting each other. Expandable segments' address
        ranges (_Expandable) never change after creation and are shared."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        copies: dict[int, Block] = {}
        blocks = [*self.live.values()]
        for pool in (self.small_pool, self.large_pool):
            blocks += pool.blocks.values()
            blocks += pool.unmapped_blocks.values()
        for b in blocks:
            c = Block(b.addr, b.size, b.stream, b.small, b.seg)
            c.busy, c.counted, c.mapped, c.requested = b.busy, b.counted, b.mapped, b.requested
            copies[id(b)] = c
        for b in blocks:
            c = copies[id(b)]
            c.prev = None if b.prev is None else copies[id(b.prev)]
            c.next = None if b.next is None else copies[id(b.next)]

        def copy_pool(pool: _Pool) -> _Pool:
            out = _Pool(pool.small)
            out.free = {stream: list(keys) for stream, keys in pool.free.items()}
            out.blocks = {key: copies[id(b)] for key, b in pool.blocks.items()}
            out.unmapped = {stream: list(addrs) for stream, addrs in pool.unmapped.items()}
            out.unmapped_blocks = {addr: copies[id(b)] for addr, b in pool.unmapped_blocks.items()}
            return out

        new.small_pool = copy_pool(self.small_pool)
        new.large_pool = copy_pool(self.large_pool)
        new.live = {ident: copies[id(b)] for ident, b in self.live.items()}
        new._spare_ranges = {span: list(addrs) for span, addrs in self._spare_ranges.items()}
        new._empty = set(self._empty)
        new.segment_events = None if self.segment_events is None else list(self.segment_events)
        return new

    def _mapped_blocks(self) -> list[tuple[int, int, Hashable | None, bool]]:
        """Every mapped block as (address, size, live id or None, whether it begins a segment's
        mapped run): a record of segments() cheap enough to take at each new reserved peak."""
        out = [(b.addr, b.size, i, b.prev is None or not b.prev.mapped) for i, b in self.live.items()]
        for pool in (self.small_pool, self.large_pool):
            out += [(b.addr, b.size, None, b.prev is None or not b.prev.mapped) for b in pool.blocks.values()]
        return out

    def segments(self) -> list[list[tuple[int, int, Hashable | None]]]:
        """Every segment, lowest address first, as its blocks in address order: (address, size, the
        live allocation's id or None for a cached free block). Unmapped pages of expandable
        segments are left out. O(blocks): for explaining a replay, not for running one."""
        owner = {id(b): ident for ident, b in self.live.items()}
        blocks = [*self.live.values()]
        for pool in (self.small_pool, self.large_pool):
            blocks += pool.blocks.values()
        out = []
        for head in sorted((b for b in blocks if b.prev is None or not b.prev.mapped), key=lambda b: b.addr):
            seg: list[tuple[int, int, Hashable | None]] = []
            node: Block | None = head
            while node is not None and node.mapped:
                seg.append((node.addr, node.size, owner.get(id(node))))
                node = node.next
            out.append(seg)
        return out

    def address_of(self, ident: Hashable) -> int:
        """Simulated address of a live allocation (segments get increasing addresses)."""
        return self.live[ident].addr

    # ---------------------------------------------------------------- internals
    def _get_free_block(self, pool: _Pool, size: int, stream: Any) -> Block | None:
        lst = pool.free.get(stream)
        if not lst:
            return None
        i = bisect_left(lst, size * _SPAN)
        n = len(lst)
        if i == n:
            return None
        blocks = pool.blocks
        block = blocks[lst[i]]
        if block.seg is not None:
            if self._expandable:
                # best fit counts the unmapped room after a block as part of its size
                nx = block.next
                room = block.size + (nx.size if nx is not None and not nx.mapped else 0)
                while block.seg is not None and i + 1 < n:
                    candidate = blocks[lst[i + 1]]
                    nx = candidate.next
                    candidate_room = candidate.size + (nx.size if nx is not None and not nx.mapped else 0)
                    if candidate_room < room:
                        i += 1
                        block = candidate
                        room = candidate_room
                    else:
                        break
            else:
                i += 1
                while i < n and blocks[lst[i]].seg is not None:
                    i += 1
                if i == n:
                    return None
                block = blocks[lst[i]]
        max_split = self._max_split
        if size < max_split and block.size >= max_split:
            return None
        if size >= max_split and block.size >= size + self._non_split_rounding:
            return None
        del blocks[lst[i]]
        del lst[i]
        return block

    def _alloc_block(self, pool: _Pool, size: int, stream: Any) -> Block | None:
        if self._expandable:
            return self._try_allocate_expandable_block(pool, size, stream)
        alloc_size = self.allocation_size(size)
        if self.reserved + alloc_size > self._limit:
            return None
        block = Block(self._next_addr, alloc_size, stream, pool.small)
        self._next_addr += alloc_size
        self._grow(alloc_size, "segment_alloc")
        return block

    def _grow(self, nbytes: int, action: str) -> None:
        self.reserved += nbytes
        self.num_device_alloc += 1
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
        if self.segment_events is not None:
            self.segment_events.append((action, nbytes))

    def _shrink(self, nbytes: int, action: str) -> None:
        self.reserved -= nbytes
        self.num_device_free += 1
        if self.segment_events is not None:
            self.segment_events.append((action, nbytes))

    def _release_block(self, pool: _Pool, block: Block) -> None:
        pool.remove(block)
        self._shrink(block.size, "segment_free")

    def _release_available_cached_blocks(self, pool: _Pool, size: int, stream: Any) -> bool:
        """Free oversize cached blocks (>= max_split_size) of this stream until `size` is covered."""
        lst = pool.free.get(stream)
        if not lst:
            return False
        target = max(size, self._max_split)
        i = bisect_left(lst, target * _SPAN)
        if i < len(lst):
            block = pool.blocks[lst[i]]
            if block.seg is not None or block.prev is not None or block.next is not None:
                return False
            self._release_block(pool, block)
            return True
        released = 0
        i = len(lst) - 1
        while released < target and i >= 0:
            block = pool.blocks[lst[i]]
            if block.size < self._max_split or block.seg is not None:
                break
            released += block.size
            self._release_block(pool, block)
            i -= 1
        return released >= target

    def _release_cached_blocks(self) -> None:
        """release_cached_blocks: every unsplit cached segment; free pages of expandable segments."""
        for pool in (self.large_pool, self.small_pool):
            to_unmap = []
            for stream in _ordered(pool.free):
                for key in list(pool.free[stream]):
                    block = pool.blocks[key]
                    if block.seg is not None:
                        to_unmap.append(block)
                    elif block.prev is None and block.next is None:
                        self._release_block(pool, block)
            for block in to_unmap:
                self._unmap_block(pool, block)
                if block.prev is None and block.next is None and not block.mapped:
                    pool.remove_unmapped(block)  # release_expandable_segment
                    self._spare_ranges.setdefault(block.size, []).append(block.addr)

    # ---------------------------------------------------------------- expandable segments
    def _find_expandable_block(self, pool: _Pool, size: int, stream: Any) -> Block:
        for addr in pool.unmapped.get(stream, ()):
            candidate = pool.unmapped_blocks[addr]
            prev = candidate.prev
            if prev is not None and not prev.busy:
                candidate = prev
            room = 0
            b: Block | None = candidate
            while room < size and b is not None and not b.busy:
                room += b.size
                b = b.next
            if room >= size:
                return candidate
        page = K_SMALL_BUFFER if pool.small else self._large_segment
        # torch reserves the device's memory (+1/8) as the segment's address space; with no capacity
        # given, the space is unlimited in effect: at least the request itself
        space = self._es_space if self.capacity is not None else max(self._es_space, size)
        span = -(-space // page) * page
        spare = self._spare_ranges.get(span)
        if spare:
            base = spare.pop()  # reuse a released segment's address range: addresses stay bounded
        else:
            base = self._next_addr
            self._next_addr += span
        seg = _Expandable(base, page, span)
        block = Block(seg.base, span, stream, pool.small, seg)
        block.mapped = False
        pool.insert_unmapped(block)
        return block

    def _map_block(self, pool: _Pool, block: Block, size: int) -> bool:
        seg = block.seg
        assert seg is not None  # only blocks of expandable segments are mapped
        page = seg.page
        begin = (block.addr - seg.base) // page
        end = -(-(block.addr + size - seg.base) // page)
        mapped = (end - begin) * page
        if mapped == 0 or self.reserved + mapped > self._limit:
            return False
        pool.remove_unmapped(block)
        block.mapped = True
        if mapped < block.size:
            rest = Block(block.addr + mapped, block.size - mapped, block.stream, pool.small, seg)
            rest.mapped = False
            rest.prev = block
            rest.next = block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = mapped
            pool.insert_unmapped(rest)
        prev = block.prev
        if prev is not None and not prev.busy and prev.mapped:
            pool.remove(prev)
            block.addr = prev.addr
            block.size += prev.size
            block.prev = prev.prev
            if prev.prev is not None:
                prev.prev.next = block
        nxt = block.next
        if nxt is not None and not nxt.busy and nxt.mapped:
            pool.remove(nxt)
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
        pool.insert(block)
        self._grow(mapped, "segment_map")
        return True

    def _try_allocate_expandable_block(self, pool: _Pool, size: int, stream: Any) -> Block | None:
        candidate = self._find_expandable_block(pool, size, stream)
        if not candidate.mapped and not self._map_block(pool, candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            if following is None:  # more than the segment's whole address space: cudaMalloc's OOM
                return None
            if not self._map_block(pool, following, min(size - candidate.size, following.size)):
                return None
            candidate = following
        pool.remove(candidate)
        return candidate

    def _unmap_block(self, pool: _Pool, block: Block) -> None:
        seg = block.seg
        assert seg is not None  # only blocks of expandable segments are unmapped
        page = seg.page
        begin = -(-(block.addr - seg.base) // page)
        end = (block.addr + block.size - seg.base) // page
        if begin >= end:
            return
        pool.remove(block)
        start = seg.base + begin * page
        length = (end - begin) * page
        before = start - block.addr
        after = block.size - before - length
        if before > 0:
            piece = Block(block.addr, before, block.stream, pool.small, seg)
            piece.prev = block.prev
            if block.prev is not None:
                block.prev.next = piece
            piece.next = block
            block.prev = piece
            pool.insert(piece)
        if after > 0:
            piece = Block(start + length, after, block.stream, pool.small, seg)
            piece.next = block.next
            if block.next is not None:
                block.next.prev = piece
            piece.prev = block
            block.next = piece
            pool.insert(piece)
        block.addr = start
        block.size = length
        block.mapped = False
        prev = block.prev
        if prev is not None and not prev.busy and not prev.mapped:
            pool.remove_unmapped(prev)
            block.addr = prev.addr
            block.size += prev.size
            block.prev = prev.prev
            if prev.prev is not None:
                prev.prev.next = block
        nxt = block.next
        if nxt is not None and not nxt.busy and not nxt.mapped:
            pool.remove_unmapped(nxt)
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
        pool.insert_unmapped(block)
        self._shrink(length, "segment_unmap")

    # ---------------------------------------------------------------- results and checks
    def result(self, events: int = 0, oom: OutOfMemory | None = None) -> SimResult:
        return SimResult(
            config=self.config.to_conf(),
            capacity=self.capacity,
            events=events,
            peak_allocated=self.peak_allocated,
            peak_reserved=self.peak_reserved,
            peak_requested=self.peak_requested,
            reserved_at_peak=self.reserved_at_peak,
            inactive_split_at_peak=self.inactive_split_at_peak,
            peak_inactive_split=self.peak_inactive_split,
            num_alloc_retries=self.num_alloc_retries,
            num_ooms=self.num_ooms,
            num_device_alloc=self.num_device_alloc,
            num_device_free=self.num_device_free,
            final_allocated=self.allocated,
            final_reserved=self.reserved,
            unmatched_frees=self.unmatched_frees,
            oom=oom,
            segment_events=list(self.segment_events) if self.segment_events is not None else None,
            retries_before_reset=self.retries_before_reset,
        )

    def replay(
        self,
        events: Iterable[Event],
        *,
        stop_at_oom: bool = True,
        reset_peaks_at: int | None = None,
        until: int | None = None,
        first_index: int = 0,
        capture: ReplayCapture | None = None,
    ) -> tuple[int, OutOfMemory | None, int | None, int | None]:
        """Apply events (the module docstring's shapes) to this simulator, up to and including event
        `until` when given. Returns (events applied, the first OOM, the event indices at which
        reserved and allocated bytes last rose to their peaks after `reset_peaks_at`).

        first_index: the index of the first event (a replay continued from a clone() taken before
        event first_index of the same run: indices, counts and `until` stay those of the whole run).
        capture: filled in as it says (ReplayCapture)."""
        malloc = self.malloc
        free = self.free
        oom = None
        index = first_index - 1
        reserved_at = allocated_at = None
        for index, event in enumerate(events, first_index):
            if index == reset_peaks_at:
                if capture is not None:
                    capture.at_reset = self.clone()
                self.reset_peak_stats()
                reserved_at = allocated_at = None
            kind = event[0]
            if kind == "free":
                free(event[1])
            elif kind == "alloc":
                reserved, allocated = self.peak_reserved, self.peak_allocated
                try:
                    ok = malloc(event[1], event[2], event[3] if len(event) > 3 else 0)
                except (TypeError, IndexError):
                    raise MemprofUserError(f"event {index}: {event!r} is not ('alloc', id, nbytes, stream)") from None
                if self.peak_reserved != reserved:
                    reserved_at = index
                    if capture is not None and (reset_peaks_at is None or index >= reset_peaks_at):
                        capture.peak = (index, self._mapped_blocks(), self.reserved, self.allocated)
                if self.peak_allocated != allocated:
                    allocated_at = index
                if not ok:
                    if oom is None:
                        assert self.last_oom is not None  # set by the malloc that failed
                        requested, rounded, segment = self.last_oom
                        oom = OutOfMemory(
                            index, requested, rounded, segment, self.allocated, self.reserved, self.inactive_split
                        )
                    if stop_at_oom:
                        break
            elif kind == "free_requested":
                self.free_requested(event[1])
            elif kind == "empty_cache":
                self.empty_cache()
            else:
                raise MemprofUserError(
                    f"event {index}: unknown kind {kind!r}; valid: alloc, free, free_requested, empty_cache"
                )
            if index == until:
                break
        return index + 1, oom, reserved_at, allocated_at

    def check(self) -> None:
        """Walk every block and assert the counters agree with it (for tests; O(blocks))."""
        blocks: dict[int, Block] = {}
        for pool in (self.small_pool, self.large_pool):
            for key, b in pool.blocks.items():
                assert key == b.size * _SPAN + b.addr and not b.busy and b.mapped
                blocks[id(b)] = b
            for addr, b in pool.unmapped_blocks.items():
                assert addr == b.addr and not b.mapped and not b.busy
                blocks[id(b)] = b
            for stream, lst in pool.free.items():
                assert lst == sorted(lst) and all(pool.blocks[k].stream == stream for k in lst)
        for b in self.live.values():
            assert b.busy and b.mapped
            blocks[id(b)] = b
        assert self.allocated == sum(b.size for b in self.live.values() if b.counted)
        reserved = inactive = 0
        heads = [b for b in blocks.values() if b.prev is None]
        seen = 0
        for head in heads:
            node: Block | None = head
            end = head.addr
            split = head.next is not None
            while node is not None:
                assert node.addr == end, "blocks of a segment must be contiguous"
                assert id(node) in blocks, "a block of a segment is missing from the pools"
                seen += 1
                end = node.addr + node.size
                if node.mapped:
                    reserved += node.size
                if split and node.seg is None and not node.busy:
                    inactive += node.size
                nxt = node.next
                assert nxt is None or nxt.prev is node
                assert not (nxt is not None and not node.busy and not nxt.busy and node.mapped == nxt.mapped), (
                    "two free neighbours were not merged"
                )
                node = nxt
        assert seen == len(blocks)
        assert reserved == self.reserved, (reserved, self.reserved)
        assert inactive == self.inactive_split, (inactive, self.inactive_split)


def _ordered(keys: Iterable[Any]) -> list[Any]:
    try:
        return sorted(keys)
    except TypeError:
        return list(keys)


def simulate(
    events: Iterable[Event],
    config: AllocatorConfig | str | None = None,
    capacity: int | None = None,
    record_segments: bool = False,
    stop_at_oom: bool = True,
    reset_peaks_at: int | None = None,
    capture: ReplayCapture | None = None,
) -> SimResult:
    """Replay allocation events (see the module docstring) through a fresh simulator.

    With a capacity, the first allocation that cannot be satisfied even after releasing the cache
    is reported in `oom`; the replay stops there unless stop_at_oom is False (then the failed
    allocation is skipped, and its later free is counted as unmatched). reset_peaks_at: the index
    of the event before which peaks are reset (reset_peak_memory_stats), so that the peaks are
    those of the events from there on, e.g. the steady-state step after warm-up steps.
    capture: a ReplayCapture to fill in (see there).
    """
    sim = CachingAllocatorSimulator(config, capacity, record_segments)
    count, oom, reserved_at, allocated_at = sim.replay(
        events, stop_at_oom=stop_at_oom, reset_peaks_at=reset_peaks_at, capture=capture
    )
    result = sim.result(count, oom)
    result.peak_reserved_event, result.peak_allocated_event = reserved_at, allocated_at
    return result
