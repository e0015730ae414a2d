"""Storage attribution: a TorchDispatchMode that sees every tensor storage created in a region.

Every live storage is counted once (two tensors sharing one storage — views, tied weights — are one
entry), with its exact `untyped_storage().nbytes()`, on its own device. Each storage carries one
category, which can change while it lives:

    parameters        storages of known parameters
    gradients         storages that are some parameter's .grad (set by the post-accumulate hook)
    optimizer_states  storages reachable from optimizer.state (set after each step)
    activations       created in forward and still alive when forward ends (saved for backward),
                      or recomputed in backward by gradient checkpointing
    temporary         created in forward and freed before it ends; created in backward or in the
                      optimizer step and not becoming a gradient or a state; created outside phases
    inputs, buffers   (reported inside `temporary`, itemised in peak.detail) storages that existed
                      before the region and are not model states: batches, module buffers
    engine_buffers    (reported inside `temporary`, itemised in peak.detail once seen) storages a
                      distributed engine allocates for its communication: FSDP2's all-gather inputs
                      and outputs (the unsharded parameters) and reduce-scatter inputs/outputs, which
                      it allocates inside its `record_function("FSDP::...")` regions (seen here as the
                      `profiler._record_function_enter_new` operator), and DDP's gradient buckets
                      (named by the session from the Reducer); a gradient or state they become wins

Distributed tensors: a DTensor (FSDP2's sharded parameters, their gradients and optimizer states) is
a wrapper whose own storage has the global size; what the rank holds is its `_local_tensor`, so every
storage is looked up through it. FSDP2 frees and re-allocates its unsharded parameters with
`UntypedStorage.resize_` (torch/distributed/fsdp/_fully_shard/_fsdp_param.py, alloc_storage /
free_storage), which does not pass through dispatch: while a tracker is active that method is wrapped
so a tracked storage's size follows it (`storage_resize_hook`).

A category is decided by the storage's fate, so peaks are corrected retroactively: when a storage
changes category, every recorded peak snapshot taken while it held the old category moves its bytes
to the new one. This keeps `peak.by_category` summing to the peak while naming each storage by role.

The timeline (`timeline_of(device)`) is a bounded sample of the per-category totals through the
region: one point at every phase change and one every `every` allocations or frees, starting at one
per event; when MAX_TIMELINE_POINTS are reached every other point is dropped and the interval
doubles, so a long run keeps an even, coarser picture at a fixed cost. Points are corrected
retroactively like the peaks (the reclassified storage was created recently, so only the last few
points are touched), and the exact peaks are merged in when the timeline is read.

Known limits: storages that never pass through dispatch (created by C++ extensions with their own
allocators, `UntypedStorage.resize_` called directly) are not seen; a storage first seen as the
input of an op is counted from that moment (as `inputs`).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memprof.estimators.vocabulary import TENSOR_CATEGORIES, Category, Phase

PARAM, GRAD, STATE, ACT, TEMP, INPUT, BUFFER, ENGINE = range(8)
NUM_CODES = 8
MAX_TIMELINE_POINTS = 1024  # per device; halved (and the sampling interval doubled) when reached
CODE_NAMES = (
    "parameters",
    "gradients",
    "optimizer_states",
    "activations",
    "temporary",
    "inputs",
    "buffers",
    "engine_buffers",
)
PUBLIC_OF_CODE = (
    Category.PARAMETERS.value,
    Category.GRADIENTS.value,
    Category.OPTIMIZER_STATES.value,
    Category.ACTIVATIONS.value,
    Category.TEMPORARY.value,
    Category.TEMPORARY.value,
    Category.TEMPORARY.value,
    Category.TEMPORARY.value,
)
_FORWARD, _BACKWARD, _STEP = Phase.FORWARD.value, Phase.BACKWARD.value, Phase.OPTIMIZER_STEP.value
# a storage that is a parameter stays one even if an optimizer also keeps it in its state
_PRECEDENCE = {PARAM: 0, GRAD: 1, STATE: 2}
_graph_task_id = torch._C._current_graph_task_id


class _Rec:
    """One live storage."""

    __slots__ = ("sid", "nbytes", "book", "cat", "cat_seq", "epoch")

    def __init__(self, sid: int, nbytes: int, book: _Book, cat: int, seq: int, epoch: int) -> None:
        self.sid, self.nbytes, self.book, self.cat, self.cat_seq, self.epoch = sid, nbytes, book, cat, seq, epoch


class _Snap:
    """Bytes per category at one moment (a peak); `seq` orders it among allocations."""

    __slots__ = ("seq", "total", "cats", "phase")

    def __init__(self, seq: int, total: int, cats: list[int], phase: str | None) -> None:
        self.seq, self.total, self.cats, self.phase = seq, total, cats, phase


class _Book:
    """Running totals and peaks of one device."""

    __slots__ = ("device", "cats", "total", "peak", "phase_peaks", "timeline", "every", "countdown")

    def __init__(self, device: str, seq: int) -> None:
        self.device = device
        self.cats = [0] * NUM_CODES
        self.total = 0
        self.peak = _Snap(seq, 0, [0] * NUM_CODES, None)
        self.phase_peaks: dict[str, _Snap] = {}
        self.timeline: list[_Snap] = []  # sampled moments, in seq order (see the module docstring)
        self.every = 1  # events between two samples
        self.countdown = 1

    def snaps(self) -> list[_Snap]:
        return [self.peak, *self.phase_peaks.values()]


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    local = getattr(t, "_local_tensor", None)  # a DTensor: the shard this rank holds
    if isinstance(local, torch.Tensor):
        t = local
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse tensors, subclasses without storage
        return None


class StorageTracker(TorchDispatchMode):
    """Attributes every storage to a category and a phase; keeps per-device peaks and events.

    The session drives it: `set_phase()` on phase changes, `classify()` for parameters, gradients
    and states, `module_depth` while modules run. `on_backward` is called when an op runs inside
    the autograd engine while the phase is not yet backward.
    """

    def __init__(self, *, record_events: bool = True, on_backward: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.record_events = record_events
        self.events: list[tuple] = []
        self.event_phases: list[str | None] = []
        self.books: dict[str, _Book] = {}
        self.phase: str | None = None
        self.in_step = False
        self.module_depth = 0
        self.fwd_epoch = 0
        self._on_backward = on_backward or (lambda: None)
        self._reg: dict[int, tuple[_Rec, weakref.ref]] = {}
        self._seq = 0
        self._next_sid = 0
        self._alias: dict[Any, bool] = {}
        self._active = False
        self.engine_depth = 0  # open record_function regions of a distributed engine
        self.engine_seen = False
        self._regions: list[bool] = []
        # bytes allocated per phase, by the category given at creation (recomputation shows here)
        self.created: dict[str | None, list[int]] = {}

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._active = True
        storage_resize_hook(self, True)

    def stop(self) -> None:
        """Forget every storage (dropping the weak references also drops their callbacks)."""
        self._active = False
        storage_resize_hook(self, False)
        self._reg.clear()

    # -- registry -----------------------------------------------------------------------
    def _book(self, device: torch.device) -> _Book:
        key = str(device)
        book = self.books.get(key)
        if book is None:
            book = self.books[key] = _Book(key, self._seq)
        return book

    def _add(self, st: torch.UntypedStorage, cat: int) -> _Rec:
        book = self._book(st.device)
        n = st.nbytes()
        self._seq += 1
        sid = self._next_sid
        self._next_sid += 1
        rec = _Rec(sid, n, book, cat, self._seq, self.fwd_epoch)
        key = id(st)
        self._reg[key] = (rec, weakref.ref(st, functools.partial(self._on_free, rec, key)))
        book.cats[cat] += n
        book.total += n
        created = self.created.get(self.phase)
        if created is None:
            created = self.created[self.phase] = [0] * NUM_CODES
        created[cat] += n
        if self.record_events:
            self.events.append(("alloc", sid, n, book.device))
            self.event_phases.append(self.phase)
        self._bump_peaks(book)
        book.countdown -= 1
        if book.countdown <= 0:
            self._sample(book)
        return rec

    def _sample(self, book: _Book) -> None:
        """Append the current totals to the device's timeline, thinning it when full."""
        book.countdown = book.every
        tl = book.timeline
        tl.append(_Snap(self._seq, book.total, list(book.cats), self.phase))
        if len(tl) >= MAX_TIMELINE_POINTS:
            del tl[1::2]
            book.every *= 2
            book.countdown = book.every

    def _bump_peaks(self, book: _Book) -> None:
        if book.total > book.peak.total:
            book.peak = _Snap(self._seq, book.total, list(book.cats), self.phase)
        phase = self.phase
        if phase is not None:
            ps = book.phase_peaks.get(phase)
            if ps is None or book.total > ps.total:
                book.phase_peaks[phase] = _Snap(self._seq, book.total, list(book.cats), phase)

    def _on_free(self, rec: _Rec, key: int, _ref: Any) -> None:
        if not self._active:
            return
        self._reg.pop(key, None)
        if rec.cat == ACT and self.phase == _FORWARD and rec.epoch == self.fwd_epoch:
            self._reclass(rec, TEMP)  # created and freed within one forward: not saved for backward
        book = rec.book
        book.cats[rec.cat] -= rec.nbytes
        book.total -= rec.nbytes
        self._seq += 1
        if self.record_events:
            self.events.append(("free", rec.sid))
            self.event_phases.append(self.phase)
        book.countdown -= 1
        if book.countdown <= 0:
            self._sample(book)

    def _reclass(self, rec: _Rec, cat: int) -> None:
        old = rec.cat
        if old == cat:
            return
        n = rec.nbytes
        for snap in rec.book.snaps():
            if snap.seq >= rec.cat_seq:
                snap.cats[old] -= n
                snap.cats[cat] += n
        tl = rec.book.timeline
        i = len(tl) - 1
        while i >= 0 and tl[i].seq >= rec.cat_seq:
            tl[i].cats[old] -= n
            tl[i].cats[cat] += n
            i -= 1
        rec.book.cats[old] -= n
        rec.book.cats[cat] += n
        rec.cat = cat
        self._seq += 1
        rec.cat_seq = self._seq

    def _resize(self, rec: _Rec, st: torch.UntypedStorage) -> None:
        n = st.nbytes()
        if n == rec.nbytes:
            return
        book = rec.book
        book.cats[rec.cat] += n - rec.nbytes
        book.total += n - rec.nbytes
        # a resize is a free followed by an allocation, as an allocator sees it
        if self.record_events:
            self.events.append(("free", rec.sid))
            self.event_phases.append(self.phase)
        rec.nbytes = n
        rec.sid = self._next_sid
        self._next_sid += 1
        self._seq += 1
        if self.record_events:
            self.events.append(("alloc", rec.sid, n, book.device))
            self.event_phases.append(self.phase)
        self._bump_peaks(book)

    def classify(self, t: torch.Tensor, cat: int, *, only_new: bool = False) -> None:
        """Mark a tensor's storage as `cat` (registering it as pre-existing if not yet seen).

        only_new: leave a storage that is already tracked as it is.
        """
        st = _storage(t)
        if st is None:
            return
        entry = self._reg.get(id(st))
        if entry is None:
            self._add(st, cat)
            return
        if only_new:
            return
        rec = entry[0]
        if _PRECEDENCE.get(rec.cat, 9) < _PRECEDENCE.get(cat, 9):
            return
        self._reclass(rec, cat)

    def category_of(self, t: torch.Tensor) -> str | None:
        """The internal category name of a tensor's storage (None when not tracked)."""
        st = _storage(t)
        entry = None if st is None else self._reg.get(id(st))
        return None if entry is None else CODE_NAMES[entry[0].cat]

    # -- phases -------------------------------------------------------------------------
    def set_phase(self, phase: str | None, *, in_step: bool = False) -> None:
        if phase == _FORWARD and self.phase != _FORWARD:
            self.fwd_epoch += 1
        self.phase = phase
        self.in_step = in_step
        if phase is not None:
            for book in self.books.values():
                ps = book.phase_peaks.get(phase)
                if ps is None or book.total > ps.total:
                    self._seq += 1
                    book.phase_peaks[phase] = _Snap(self._seq, book.total, list(book.cats), phase)
        for book in self.books.values():
            self._sample(book)

    def reset_peaks(self) -> None:
        """Start the peaks (overall, per phase, bytes created per phase) again from what is live now."""
        self._seq += 1
        for book in self.books.values():
            book.peak = _Snap(self._seq, book.total, list(book.cats), self.phase)
            book.phase_peaks = {}
            if self.phase is not None:
                book.phase_peaks[self.phase] = _Snap(self._seq, book.total, list(book.cats), self.phase)
        self.created.clear()

    def timeline_of(self, device: str) -> list[dict[str, Any]] | None:
        """The device's sampled timeline with its exact peaks merged in, as plain records:
        {"seq", "phase", "allocated", "by_category"} in order (None when nothing lived there)."""
        book = self.books.get(device)
        if book is None:
            return None
        points = {s.seq: s for s in book.timeline}
        for snap in book.snaps():
            if snap.total:
                points[snap.seq] = snap
        return [
            {"seq": s.seq, "phase": s.phase, "allocated": s.total, "by_category": self.public(s.cats)}
            for _, s in sorted(points.items())
        ]

    def live_by_category(self) -> dict[str, dict[str, int]]:
        """Bytes alive now, per device and internal category."""
        return {dev: dict(zip(CODE_NAMES, book.cats)) for dev, book in self.books.items()}

    # -- dispatch -----------------------------------------------------------------------
    def _aliases(self, func: Any) -> bool:
        a = self._alias.get(func)
        if a is None:
            try:
                a = any(r.alias_info is not None for r in func._schema.returns)
            except AttributeError:
                a = False
            self._alias[func] = a
        return a

    def _see_output(self, t: torch.Tensor, aliases: bool) -> None:
        st = _storage(t)  # a DTensor: its local shard's storage
        if st is None:
            return
        entry = self._reg.get(id(st))
        if entry is not None:
            if aliases:  # in-place, out= and resize_ ops may grow the storage they return
                self._resize(entry[0], st)
            return
        if self.engine_depth:  # allocated by a distributed engine for its communication
            cat = ENGINE
        elif aliases:  # a view of a storage that existed before the region
            cat = INPUT
        elif self.in_step:
            cat = TEMP
        elif self.phase == _FORWARD:
            cat = ACT
        elif self.phase == _BACKWARD:
            cat = ACT if self.module_depth > 0 else TEMP  # recomputation under checkpointing
        else:
            cat = TEMP
        self._add(st, cat)

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        # the hot path: kept flat, since it runs for every operator
        Tensor = torch.Tensor
        reg = self._reg
        if func is _RF_ENTER or func is _RF_EXIT:
            return self._engine_region(func, args, kwargs)
        first_seen = ENGINE if self.engine_depth else INPUT
        for a in args:
            if isinstance(a, Tensor):
                st: torch.UntypedStorage | None
                if type(a) is Tensor:
                    try:
                        st = a.untyped_storage()
                    except (RuntimeError, NotImplementedError):
                        continue
                else:  # subclasses (DTensor: its local shard) and parameters
                    st = _storage(a)
                    if st is None:
                        continue
                if id(st) not in reg:  # existed before the region and never seen
                    self._add(st, first_seen)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    if isinstance(b, Tensor):
                        inner = _storage(b)
                        if inner is not None and id(inner) not in reg:
                            self._add(inner, first_seen)
        if func.namespace == "c10d":
            self._collective_inputs(args)
        out = func(*args, **(kwargs or {}))
        if self.phase != _BACKWARD and not self.in_step and _graph_task_id() != -1:
            self._on_backward()
        aliases = self._alias.get(func)
        if aliases is None:
            aliases = self._aliases(func)
        if isinstance(out, Tensor):
            self._see_output(out, aliases)
        elif isinstance(out, (list, tuple)):
            for o in out:
                if isinstance(o, Tensor):
                    self._see_output(o, aliases)
        return out

    def _engine_region(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Any:
        """`record_function` enter / exit: track whether an engine's communication region is open."""
        out = func(*args, **(kwargs or {}))
        if func is _RF_ENTER:
            name = args[0] if args and isinstance(args[0], str) else ""
            engine = name.startswith(ENGINE_REGIONS)
            self._regions.append(engine)
            if engine:
                self.engine_depth += 1
                self.engine_seen = True
        elif self._regions and self._regions.pop():
            self.engine_depth -= 1
        return out

    def _collective_inputs(self, args: tuple[Any, ...]) -> None:
        """A storage that existed before the region and is handed to a collective (DDP's gradient
        buckets, allocated when DDP is built) is the engine's buffer, not an input."""
        for a in args:
            for t in a if isinstance(a, (list, tuple)) else (a,):
                if isinstance(t, torch.Tensor):
                    st = _storage(t)
                    entry = None if st is None else self._reg.get(id(st))
                    if entry is not None and entry[0].cat == INPUT:
                        self.engine_seen = True
                        self._reclass(entry[0], ENGINE)

    def classify_engine(self, t: torch.Tensor) -> None:
        """Mark an engine's own buffer (DDP's gradient buckets) unless it is a gradient or state."""
        self.engine_seen = True
        self.classify(t, ENGINE)

    def resized(self, st: torch.UntypedStorage) -> None:
        """A storage was resized outside dispatch (`UntypedStorage.resize_`): follow its size."""
        entry = self._reg.get(id(st))
        if entry is not None:
            self._resize(entry[0], st)
        elif st.nbytes():
            self._add(st, ENGINE if self.engine_depth else TEMP)

    # -- results ------------------------------------------------------------------------
    @staticmethod
    def public(cats: list[int]) -> dict[str, int]:
        out = dict.fromkeys(TENSOR_CATEGORIES, 0)
        for code, n in enumerate(cats):
            out[PUBLIC_OF_CODE[code]] += n
        return out

    @staticmethod
    def detail(cats: list[int], engine: bool = False) -> dict[str, int]:
        """The parts of `temporary`; `engine_buffers` once a distributed engine's buffers were seen."""
        out = {"inputs": cats[INPUT], "buffers": cats[BUFFER], "created_temporary": cats[TEMP]}
        if engine:
            out["engine_buffers"] = cats[ENGINE]
        return out


_RF_ENTER = torch.ops.profiler._record_function_enter_new.default
_RF_EXIT = torch.ops.profiler._record_function_exit._RecordFunction
# record_function names under which FSDP2 allocates its communication buffers
# (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py: all_gather, all_gather_copy_out,
# pre_forward / pre_backward unshard, the prefetches, post_backward_reduce)
ENGINE_REGIONS = ("FSDP::",)
_ACTIVE: list[StorageTracker] = []
_ORIGINAL_RESIZE = torch.UntypedStorage.resize_


def _resize_and_track(self: torch.UntypedStorage, size: int) -> Any:
    out = _ORIGINAL_RESIZE(self, size)
    for tracker in _ACTIVE:
        if tracker._active:
            tracker.resized(self)
    return out


def storage_resize_hook(tracker: StorageTracker, on: bool) -> None:
    """Route `UntypedStorage.resize_` (FSDP2's alloc_storage / free_storage) to the tracker while on."""
    if on:
        _ACTIVE.append(tracker)
        torch.UntypedStorage.resize_ = _resize_and_track  # type: ignore[method-assign,assignment]
    else:
        if tracker in _ACTIVE:
            _ACTIVE.remove(tracker)
        if not _ACTIVE:
            torch.UntypedStorage.resize_ = _ORIGINAL_RESIZE  # type: ignore[method-assign]
