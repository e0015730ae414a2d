"""Reading CUDA memory snapshots (safely) and replaying them; the `memprof replay` command.

The synthetic snapshot below is written in the exact structure torch 2.13 pickles
(torch/csrc/cuda/memory_snapshot.cpp, torch/cuda/memory.py `_snapshot` docstring), for a program
whose allocator events are known by hand. The CUDA-only test records a real one.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest

from memprof.cli import main
from memprof.estimators.allocator import load_snapshot, replay_snapshot, snapshot_events
from memprof.estimators.errors import MemprofUserError

MiB = 1 << 20
SMALL_SEG = 0x7F0000000000
LARGE_SEG = 0x7F0000200000
BIG_SEG = 0x7F0001600000
STREAM = 0


def entry(action, addr, size, t):
    return {
        "action": action,
        "addr": addr,
        "size": size,
        "stream": STREAM,
        "time_us": t,
        "frames": [{"filename": "train.py", "line": 10 + t, "name": "step"}],
    }


def program_trace():
    """x = 1000 B; y = 3 MiB; z = 50 MiB; del z; torch.cuda.empty_cache(); w = 5 MiB; del x."""
    return [
        entry("segment_alloc", SMALL_SEG, 2 * MiB, 1),
        entry("alloc", SMALL_SEG, 1000, 1),
        entry("segment_alloc", LARGE_SEG, 20 * MiB, 2),
        entry("alloc", LARGE_SEG, 3 * MiB, 2),
        entry("segment_alloc", BIG_SEG, 50 * MiB, 3),
        entry("alloc", BIG_SEG, 50 * MiB, 3),
        entry("free_requested", BIG_SEG, 50 * MiB, 4),
        entry("free_completed", BIG_SEG, 50 * MiB, 4),
        entry("segment_free", BIG_SEG, 50 * MiB, 5),  # empty_cache()
        entry("alloc", LARGE_SEG + 3 * MiB, 5 * MiB, 6),  # reuses y's segment
        entry("free_requested", SMALL_SEG, 1000, 7),
        entry("free_completed", SMALL_SEG, 1000, 7),
    ]


def program_snapshot(conf: str = "") -> dict:
    frames = [{"filename": "train.py", "line": 12, "name": "step"}]
    return {
        "segments": [
            {
                "device": 0,
                "address": SMALL_SEG,
                "total_size": 2 * MiB,
                "allocated_size": 0,
                "active_size": 0,
                "requested_size": 0,
                "stream": STREAM,
                "segment_type": "small",
                "segment_pool_id": (0, 0),
                "is_expandable": False,
                "frames": frames,
                "blocks": [
                    {"address": SMALL_SEG, "size": 2 * MiB, "requested_size": 1000, "state": "inactive", "frames": []}
                ],
            },
            {
                "device": 0,
                "address": LARGE_SEG,
                "total_size": 20 * MiB,
                "allocated_size": 8 * MiB,
                "active_size": 8 * MiB,
                "requested_size": 8 * MiB,
                "stream": STREAM,
                "segment_type": "large",
                "segment_pool_id": (0, 0),
                "is_expandable": False,
                "frames": frames,
                "blocks": [
                    {
                        "address": LARGE_SEG,
                        "size": 3 * MiB,
                        "requested_size": 3 * MiB,
                        "state": "active_allocated",
                        "frames": frames,
                    },
                    {
                        "address": LARGE_SEG + 3 * MiB,
                        "size": 5 * MiB,
                        "requested_size": 5 * MiB,
                        "state": "active_allocated",
                        "frames": frames,
                    },
                    {
                        "address": LARGE_SEG + 8 * MiB,
                        "size": 12 * MiB,
                        "requested_size": 0,
                        "state": "inactive",
                        "frames": [],
                    },
                ],
            },
        ],
        "device_traces": [program_trace()],
        "allocator_settings": {
            "PYTORCH_CUDA_ALLOC_CONF": conf,
            "max_split_size": -1,
            "garbage_collection_threshold": 0.0,
            "expandable_segments": False,
            "pinned_num_register_threads": 1,
            "release_lock_on_cudamalloc": False,
            "pinned_use_cuda_host_register": False,
            "roundup_power2_divisions": {},
        },
        "external_annotations": [],
    }


@pytest.fixture
def snapshot_file(tmp_path):
    path = tmp_path / "snapshot.pickle"
    with open(path, "wb") as handle:
        pickle.dump(program_snapshot(), handle)  # what torch.cuda.memory._dump_snapshot does
    return path


def test_load_and_replay_the_program(snapshot_file):
    snapshot = load_snapshot(snapshot_file)
    report = replay_snapshot(snapshot)
    result = report.result
    # x (1024 B in a 2 MiB segment), y 3 MiB + z 50 MiB in their own segments: 54 MiB + 1 KiB live
    assert result.peak_allocated == 53 * MiB + 1024
    assert result.peak_reserved == 72 * MiB  # 2 + 20 + 50
    assert result.reserved_at_peak == 72 * MiB
    # the split remainders at the peak: 2 MiB - 1 KiB (small) + 17 MiB (large)
    assert result.inactive_split_at_peak == 2 * MiB - 1024 + 17 * MiB
    # every segment event of the trace is reproduced, including the empty_cache release
    assert report.trace.segment_events == [
        ("segment_alloc", 2 * MiB),
        ("segment_alloc", 20 * MiB),
        ("segment_alloc", 50 * MiB),
        ("segment_free", 50 * MiB),
    ]
    assert report.segments_exact and report.segments_matching == 4
    assert report.trace.empty_cache_calls == 1
    # the simulated end state is the snapshot's: 22 MiB reserved, 8 MiB allocated
    assert (result.final_reserved, result.final_allocated) == (report.snapshot_reserved, report.snapshot_allocated)
    assert (report.snapshot_reserved, report.snapshot_allocated) == (22 * MiB, 8 * MiB)
    assert report.config_source == "snapshot"
    data = report.to_dict()
    assert data["segment_agreement"] == {"trace_events": 4, "simulated_events": 4, "matching": 4, "exact": True}
    assert data["trace"]["complete"] is True


def test_capacity_turns_the_trace_into_an_oom(snapshot_file):
    report = replay_snapshot(load_snapshot(snapshot_file), capacity=60 * MiB)
    oom = report.result.oom
    # z needs a 50 MiB segment on top of 22 MiB; nothing cached can be released
    assert oom is not None and (oom.requested, oom.reserved, oom.allocated) == (50 * MiB, 22 * MiB, 3 * MiB + 1024)
    assert report.result.num_alloc_retries == 1


def test_recorded_settings_are_replayed_and_can_be_overridden():
    snapshot = program_snapshot("expandable_segments:True")
    report = replay_snapshot(snapshot)
    assert report.config_source == "snapshot" and report.result.config == "expandable_segments:True"
    # 1 KiB maps one 2 MiB page; 3 MiB one 20 MiB page; z: 17 MiB free + two more pages (40 MiB)
    assert report.result.peak_reserved == 62 * MiB
    assert report.result.segment_events[:2] == [("segment_map", 2 * MiB), ("segment_map", 20 * MiB)]
    assert report.segments_matching == 0  # the trace was recorded without expandable segments
    overridden = replay_snapshot(snapshot, "")
    assert overridden.config_source == "--alloc-conf" and overridden.result.peak_reserved == 72 * MiB


def test_trace_that_starts_mid_run_is_flagged():
    snapshot = program_snapshot()
    snapshot["device_traces"][0] = [
        entry("free_requested", 0xDEAD000, 4096, 0),
        entry("free_completed", 0xDEAD000, 4096, 0),
    ] + program_trace()
    events = snapshot_events(snapshot)
    assert events.unmatched_frees == 1
    assert replay_snapshot(snapshot).to_dict()["trace"]["complete"] is False


def test_device_choice():
    snapshot = program_snapshot()
    snapshot["device_traces"] = [[], program_trace()]
    assert replay_snapshot(snapshot).device == 1
    with pytest.raises(MemprofUserError, match="device 5 is not in the snapshot"):
        replay_snapshot(snapshot, device=5)


# ------------------------------------------------------------------ bad files: one clear line
class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/memprof_pwned_by_snapshot",))


def write(path, payload: bytes):
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"this is not a pickle at all", "not a readable pickle"),
        (pickle.dumps(program_snapshot())[:200], "not a readable pickle"),
        (b"PK\x03\x04" + b"\x00" * 60, "not a readable pickle"),  # a torch.save zip
        (pickle.dumps([1, 2, 3]), "found a list"),
        (pickle.dumps({"weights": [1.0]}), "expected a dict with 'segments'"),
        (pickle.dumps({"segments": []}), "no 'device_traces'"),
        (pickle.dumps({"segments": [], "device_traces": [[]]}), "holds no allocation trace"),
        (pickle.dumps({"segments": [], "device_traces": [["alloc"]]}), "trace entries must be dicts"),
        (pickle.dumps({"segments": [], "device_traces": [program_trace() + [7]]}), "trace entries must be dicts"),
        (
            pickle.dumps({"segments": [], "device_traces": [[{"action": "alloc", "size": 5}]]}),
            "entry 0 ('alloc') is malformed",
        ),
    ],
)
def test_corrupt_or_foreign_pickles(tmp_path, payload, fragment):
    path = write(tmp_path / "bad.pickle", payload)
    with pytest.raises(MemprofUserError) as err:
        replay_snapshot(load_snapshot(path))
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_a_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = "/tmp/memprof_pwned_by_snapshot"
    if os.path.exists(marker):
        os.remove(marker)
    path = write(tmp_path / "evil.pickle", pickle.dumps({"segments": [], "device_traces": [[Evil()]]}))
    with pytest.raises(MemprofUserError, match=r"references posix.system"):
        load_snapshot(path)
    assert not os.path.exists(marker)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MemprofUserError, match="snapshot file not found"):
        load_snapshot(tmp_path / "nope.pickle")
    with pytest.raises(MemprofUserError, match="is a directory"):
        load_snapshot(tmp_path)


# ------------------------------------------------------------------ CLI
def test_cli_json(snapshot_file, capsys):
    assert main(["replay", str(snapshot_file), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak"]["allocated"] == 53 * MiB + 1024 and data["peak"]["reserved"] == 72 * MiB
    assert isinstance(data["fragmentation"], float)
    assert data["fragmentation"] == round(1 - (53 * MiB + 1024) / (72 * MiB), 6)
    assert data["inactive_split"] == 19 * MiB - 1024
    assert data["num_alloc_retries"] == 0
    assert data["what_if"]["baseline"]["peak_reserved"] == 72 * MiB


def test_cli_table_with_capacity_and_conf(snapshot_file, capsys):
    code = main(["replay", str(snapshot_file), "--capacity", "60MiB", "--alloc-conf", "max_split_size_mb:20"])
    assert code == 0
    out = capsys.readouterr().out
    assert "OUT OF MEMORY" in out and "max_split_size_mb:20" in out
    assert "4 of 4 in the trace reproduced" not in out  # the OOM stops the replay early
    assert "what if" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--capacity", "80 gigs"], "unknown size unit"),
        (["--alloc-conf", "expandable_segments:yes"], "True or False"),
    ],
)
def test_cli_bad_options_are_one_line(snapshot_file, capsys, args, fragment):
    assert main(["replay", str(snapshot_file), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_cli_device_of_a_snapshot_is_an_index(snapshot_file, capsys):
    assert main(["replay", str(snapshot_file), "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err
    assert "a snapshot's devices are numbered 0, 1" in err and err.count("\n") == 1
    assert main(["replay", str(snapshot_file), "--device", "0", "--format", "json", "--no-what-if"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == 0


def test_cli_foreign_file(tmp_path, capsys):
    path = write(tmp_path / "model.pt", b"PK\x03\x04junk")
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memprof: error:") and err.count("\n") == 1


# ------------------------------------------------------------------ a real snapshot (CUDA only)
def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device to record a real memory snapshot")
def test_real_snapshot_segments_agree(tmp_path):
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    # a fresh stream: its pools start empty whatever earlier tests left cached on the default stream
    stream = torch.cuda.Stream()
    torch.cuda.memory._record_memory_history(max_entries=100_000)
    try:
        with torch.cuda.stream(stream):
            kept = []
            for size in (1000, 3 << 20, 50 << 20, 7 << 20, 600 << 10, 120 << 20, 2 << 20, 30 << 20):
                tensor = torch.empty(size, dtype=torch.uint8, device="cuda")
                if size % 3:
                    kept.append(tensor)
                del tensor
            kept.append(torch.empty(40 << 20, dtype=torch.uint8, device="cuda"))
            torch.cuda.synchronize()
            path = tmp_path / "real.pickle"
            torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    snapshot = load_snapshot(path)
    report = replay_snapshot(snapshot)
    assert report.trace.segment_events, "the recorded trace holds segment events"
    assert report.segments_exact, (report.trace.segment_events, report.result.segment_events)
    ours = [seg for seg in snapshot["segments"] if seg["stream"] == stream.cuda_stream]
    assert report.result.final_reserved == sum(seg["total_size"] for seg in ours)
    assert report.result.final_allocated == sum(seg["allocated_size"] for seg in ours)
    assert report.result.num_alloc_retries == 0 and report.trace.unmatched_frees == 0
