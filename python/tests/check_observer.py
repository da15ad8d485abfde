"""Checks the tcasm Python package against a producer run by tests/python.rs.

    python check_observer.py NAME CHECKPOINT_DIR

The producer publishes regions whose values are a function of the version (``expected``),
and has been checkpointed twice by ``tcasm checkpoint`` into CHECKPOINT_DIR. Talks to the
test over stdin/stdout: prints "pinned V" after holding version V, reads "published W" once
newer versions exist, prints "waiting W" before waiting without a timeout for a version newer
than W (which the test publishes a moment later), prints "ok", reads "gone" once the
producer has exited, prints "done".
"""
import gc
import sys
import time

import numpy as np

import tcasm

REGIONS = {
    "grid/t": ("<f8", (64, 100)),
    "counts": ("<i4", (1000,)),
    "bytes": ("|u1", (3, 5, 300)),
    "const": ("<u8", (2048,)),
    "small": ("<f4", (2, 1, 3, 1, 4, 1, 5, 1)),  # rank 8, the most a region has
}


def expected(region, v):
    """What the producer wrote into `region` for version `v` (as tests/python.rs does)."""
    descr, shape = REGIONS[region]
    i = np.arange(int(np.prod(shape)))
    if region == "grid/t":
        a = i.astype(np.float64) + float(v) * 1e4
    elif region == "counts":
        a = (i * 7 + v).astype(np.int32)
    elif region == "bytes":
        a = ((i + v) % 256).astype(np.uint8)
    elif region == "const":
        a = (i * 3).astype(np.uint64)  # written once, at version 1
    else:
        a = i.astype(np.float32) * np.float32(0.5) + np.float32(v)
    return a.astype(np.dtype(descr)).reshape(shape)


def check_arrays(arrays, v, what):
    assert list(arrays) == list(REGIONS), f"{what}: regions {list(arrays)}"
    for region, a in arrays.items():
        want = expected(region, v)
        assert isinstance(a, np.ndarray), f"{what}: {region} is a {type(a)}"
        assert a.dtype == want.dtype and a.shape == want.shape, f"{what}: {region} is {a.dtype} {a.shape}"
        if not np.array_equal(a, want):
            at = np.argwhere(a != want)[0]
            raise AssertionError(f"{what}: {region}{tuple(at)} is {a[tuple(at)]}, version {v} wrote {want[tuple(at)]}")


def expect_error(kind, part, call, *args):
    try:
        call(*args)
    except kind as e:
        assert part in str(e), f"{kind.__name__} {e!r} does not say {part!r}"
    else:
        raise AssertionError(f"{call.__name__}{args} did not raise {kind.__name__}")


def main():
    name, checkpoints = sys.argv[1], sys.argv[2]

    # Checkpoints written by `tcasm checkpoint`: a base and an increment.
    versions = tcasm.list_checkpoints(checkpoints)
    assert len(versions) == 2, f"checkpoints {versions}"
    for v in versions:
        check_arrays(tcasm.read_checkpoint(checkpoints, v), v, f"checkpoint v{v}")
    check_arrays(tcasm.read_checkpoint(checkpoints), versions[-1], "the newest checkpoint")
    # Levels: a node-local directory that is gone, then the persistent one.
    levels = f"{checkpoints}-local-gone:{checkpoints}"
    check_arrays(tcasm.read_checkpoint(levels), versions[-1], "the newest checkpoint of either level")
    check_arrays(tcasm.read_checkpoint(levels, versions[0]), versions[0], f"checkpoint v{versions[0]} of either level")
    expect_error(tcasm.TcasmError, "no complete checkpoint of version 999999", tcasm.read_checkpoint, checkpoints, 999999)
    expect_error(tcasm.TcasmError, "no producer named", tcasm.attach, "no-such-producer", 0.2)

    # A live snapshot: the producer's arrays, read-only, without copies.
    observer = tcasm.attach(name, timeout=30)
    assert observer.name == name
    assert observer.regions == REGIONS, observer.regions
    snap = observer.latest()
    v = snap.version
    assert snap.regions == list(REGIONS) and len(snap) == len(REGIONS)
    assert "grid/t" in snap and "nope" not in snap
    expect_error(KeyError, "no region named", snap.__getitem__, "nope")
    arrays = {r: snap[r] for r in snap.regions}
    check_arrays(arrays, v, f"snapshot v{v}")
    check_arrays(snap.arrays(), v, f"snapshot v{v} (arrays())")
    for region, a in arrays.items():
        assert a.base is snap, f"{region}: base {a.base!r}"
        assert not a.flags.writeable and not a.flags.owndata, f"{region}: {a.flags}"
        expect_error(ValueError, "read-only", a.fill, 0)
        expect_error(ValueError, "WRITEABLE", a.setflags, True)
    # Zero-copy: two arrays of one region are views of the same memory.
    assert np.shares_memory(snap["grid/t"], snap["grid/t"])
    assert snap["grid/t"].ctypes.data == arrays["grid/t"].ctypes.data

    # An array keeps its snapshot, and so the version, alive.
    kept = snap["grid/t"]
    del snap, arrays
    gc.collect()
    print(f"pinned {v}", flush=True)
    newest = int(sys.stdin.readline().split()[1])
    assert newest > v
    assert observer.wait_newer(v, 30.0) is not None
    later = observer.latest()
    assert later.version == newest == observer.latest_version, (later.version, newest)
    check_arrays(later.arrays(), newest, f"snapshot v{newest}")
    assert later.changed_since(v), "no page changed"
    assert np.array_equal(kept, expected("grid/t", v)), "a kept array changed: its version was not pinned"
    # Nothing newer is published now: wait_newer waits its whole timeout, then says so.
    started = time.monotonic()
    assert observer.wait_newer(newest, 0.3) is None, "a newer version without a publish"
    waited = time.monotonic() - started
    assert waited >= 0.3, f"wait_newer returned after {waited:.3f} s of a 0.3 s timeout"
    # An infinite timeout waits until a version arrives.
    print(f"waiting {newest}", flush=True)
    arrived = observer.wait_newer(newest, timeout=float("inf"))
    assert arrived is not None and arrived > newest, f"wait_newer(inf) gave {arrived} after version {newest}"

    # At most 8 snapshots per observer: `kept`'s and `later` are two.
    held = []
    while len(held) < 8:
        try:
            held.append(observer.latest())
        except tcasm.TcasmError as e:
            assert "already holds 8 snapshots" in str(e) and "drop one first" in str(e), repr(e)
            break
    assert len(held) == 6, f"{len(held)} more snapshots than the 2 held"
    held.pop()
    gc.collect()
    held.append(observer.latest())
    del held
    gc.collect()
    print("ok", flush=True)

    # The producer exits: the observer is told, and what it holds stays readable.
    assert sys.stdin.readline().strip() == "gone"
    expect_error(tcasm.ProducerGone, "is gone", observer.wait_newer, arrived, 10.0)
    expect_error(tcasm.ProducerGone, "is gone", observer.latest)
    assert observer.producer_gone
    check_arrays(later.arrays(), newest, "a snapshot of a producer that exited")
    assert np.array_equal(kept, expected("grid/t", v))
    print("done", flush=True)


if __name__ == "__main__":
    main()
