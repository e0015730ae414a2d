"""`memprof replay FILE`: replay an allocation timeline through the caching-allocator simulator.

FILE is either a CUDA memory snapshot pickle (torch.cuda.memory._dump_snapshot) or a memprof profile
JSON saved with its events (Profile.save(path, events=True)); the content decides, not the name.
A profile of a CPU run is replayed as if on CUDA: it predicts that run's reserved memory on a GPU.
"""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("snapshot", metavar="FILE", type=click.Path(dir_okay=True))
@click.option(
    "--capacity",
    default=None,
    help="Memory the allocator may reserve (device memory minus the CUDA context and other "
    "processes), e.g. 78GiB, 80GB, 512MiB or bytes [default: unlimited].",
)
@click.option(
    "--alloc-conf",
    default=None,
    help='PYTORCH_CUDA_ALLOC_CONF to simulate, e.g. "expandable_segments:True" '
    "[default: the settings recorded in the snapshot, else PyTorch's defaults].",
)
@click.option(
    "--device",
    default=None,
    help="Snapshot: the device index to replay [default: the one with the most allocations]. "
    "Profile: the device, e.g. cpu or cuda:0 [default: the device the profile reports].",
)
@click.option(
    "--what-if/--no-what-if",
    default=True,
    show_default=True,
    help="Also replay under alternative allocator settings and recommend one.",
)
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True)
def replay(
    snapshot: str, capacity: str | None, alloc_conf: str | None, device: str | None, what_if: bool, fmt: str
) -> None:
    """Replay FILE (a CUDA memory snapshot pickle, or a memprof profile JSON saved with events) and
    report peaks and fragmentation; a CPU profile is replayed as if on CUDA."""
    from memprof.estimators.allocator import parse_alloc_conf
    from memprof.estimators.allocator import what_if as run_what_if
    from memprof.estimators.units import parse_size

    cap = parse_size(capacity) if capacity is not None else None
    if alloc_conf is not None:
        parse_alloc_conf(alloc_conf)
    if _is_json(snapshot):
        report, events = _replay_profile(snapshot, alloc_conf, cap, device)
    else:
        report, events = _replay_snapshot(snapshot, alloc_conf, cap, device)
    out = report.to_dict()
    if what_if:
        conf = report.result.config if alloc_conf is None else alloc_conf
        out["what_if"] = run_what_if(events, conf, cap).to_dict()
    if fmt == "json":
        click.echo(json.dumps(out, indent=2))
    else:
        from memprof.render import replay_table

        click.echo(replay_table(out))


def _is_json(path: str) -> bool:
    """Sniff the content: a profile is JSON, a snapshot a pickle (unreadable files go the pickle
    way, whose loader reports them)."""
    import os

    from memprof.estimators.allocator.profile_replay import looks_like_json
    from memprof.estimators.errors import MemprofUserError
    from memprof.estimators.files import check_input

    if not os.path.exists(path):
        raise MemprofUserError(f"file not found: {path} (expected a snapshot pickle or a memprof profile JSON)")
    try:
        check_input(path)  # a device or a pipe is refused here, before open() could block on it
        with open(path, "rb") as handle:
            return looks_like_json(handle.read(64))
    except OSError:
        return False


def _replay_snapshot(path: str, alloc_conf: str | None, cap: int | None, device: str | None):
    from memprof.estimators.allocator import load_snapshot, replay_snapshot
    from memprof.estimators.errors import MemprofUserError

    if device is not None and not (device.isascii() and device.isdigit() and len(device) <= 4):
        raise MemprofUserError(f"--device {device[:20]!r}: a snapshot's devices are numbered 0, 1, ...")
    report = replay_snapshot(load_snapshot(path), alloc_conf, cap, None if device is None else int(device))
    return report, report.trace.events


def _replay_profile(path: str, alloc_conf: str | None, cap: int | None, device: str | None):
    from memprof.estimators.allocator.profile_replay import load_profile_timeline, replay_profile

    report = replay_profile(load_profile_timeline(path), alloc_conf, cap, device)
    return report, report.events
