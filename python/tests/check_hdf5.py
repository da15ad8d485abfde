"""Reads what `tcasm restore --format hdf5` wrote for tests/hdf5.rs, with h5py and with VTK's
XDMF reader (the one ParaView uses), and checks it against the `.npy` restores of the same
versions and against what the producer published.

    check_hdf5.py SCRATCH PRODUCER V1 V2 V3 V4

SCRATCH holds one.h5 (version V4), two.h5 (V2..V3), series.h5 (all), their .xmf files, and
npy-V/ (the `.npy` restore of each version). Prints "ok" at the end; fails on the first
difference.
"""
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline
from vtkmodules.vtkIOXdmf2 import vtkXdmfReader

# Region name: (numpy dtype, shape), as tests/hdf5.rs makes them.
REGIONS = {
    "grid/t": ("<f8", (64, 100)),
    "rho": ("<f4", (6, 10, 12)),
    "phase": ("<f8", (2, 3, 2, 2, 3, 4)),
    "flags": ("|u1", (1000,)),
    "big": ("<i4", (400, 700)),
    "step": ("<i8", (1,)),
}
BLOCK = 1024  # elements of `big` rewritten together


def written_at(b, v):
    """The version that last wrote block b of `big` as of version v (tests/hdf5.rs)."""
    u = v - (b + v) % 5
    return np.where(u >= 2, u, 1)


def expected(name, v):
    """Region `name` as version v published it."""
    descr, shape = REGIONS[name]
    i = np.arange(int(np.prod(shape)))
    if name == "grid/t":
        a = i.astype(np.float64) + v * 1e4
    elif name == "rho":
        a = (i % 1000).astype(np.float32) * np.float32(0.5) + np.float32(v)
    elif name == "phase":
        a = i.astype(np.float64) * 0.25 - v
    elif name == "flags":
        a = (i + v) % 256
    elif name == "big":
        a = i * 3 + written_at(i // BLOCK, v) * 1_000_000
    else:
        a = np.array([v * 10])
    return a.astype(descr).reshape(shape)


def same_bits(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    if a.tobytes() != b.tobytes():
        at = np.flatnonzero(a.reshape(-1).view(np.uint8) != b.reshape(-1).view(np.uint8))[0]
        raise AssertionError(f"{what}: byte {at} differs")


def npy_restore(scratch, v):
    """The `.npy` restore of version v: {region: array}."""
    d = scratch / f"npy-{v}"
    manifest = json.loads((d / "manifest.json").read_text())
    return {r["name"]: np.load(d / r["file"]) for r in manifest["regions"]}


def datasets(group):
    """Every dataset under `group`, by path relative to it."""
    found = {}
    group.visititems(lambda path, obj: found.__setitem__(path, obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def check_version(group, scratch, producer, v, what):
    attrs = dict(group.attrs)
    assert attrs["producer"] == producer, f"{what}: producer {attrs['producer']!r}"
    assert attrs["version"] == v and attrs["step"] == v * 10, f"{what}: {attrs}"
    assert attrs["step"].dtype == np.int64 and attrs["chain"] >= 1, f"{what}: {attrs}"
    assert abs(attrs["checkpoint_time"] - time.time()) < 3600, f"{what}: checkpoint_time {attrs['checkpoint_time']}"
    found = datasets(group)
    assert sorted(found) == sorted(REGIONS), f"{what}: datasets {sorted(found)}"
    npy = npy_restore(scratch, v)
    for name, dataset in found.items():
        data = dataset[()]
        same_bits(data, npy[name], f"{what} {name} against the .npy restore")
        same_bits(data, expected(name, v), f"{what} {name} against what the producer published")


def vtk_blocks(reader, time_value=None):
    """The grids VTK's XDMF reader reads (at `time_value`): {grid name: vtkDataSet}."""
    if time_value is None:
        reader.Update()
    else:
        reader.UpdateTimeStep(time_value)
    out = reader.GetOutputDataObject(0)
    blocks = {}
    for k in range(out.GetNumberOfBlocks()):
        blocks[out.GetMetaData(k).Get(vtkCompositeDataSet.NAME())] = out.GetBlock(k)
    return blocks


def check_vtk_grids(blocks, v, what):
    """Each region of rank 2 or 3 is cell data of its grid, in C order, as published."""
    grids = {"64x100": ["grid/t"], "400x700": ["big"], "6x10x12": ["rho"]}
    assert sorted(blocks) == sorted(grids), f"{what}: grids {sorted(blocks)}"
    for grid, names in grids.items():
        block = blocks[grid]
        shape = REGIONS[names[0]][1]
        assert block.GetNumberOfCells() == int(np.prod(shape)), f"{what} {grid}: {block.GetNumberOfCells()} cells"
        cells = block.GetCellData()
        for name in names:
            array = cells.GetArray(name)
            assert array is not None, f"{what} {grid}: no cell array {name}"
            same_bits(vtk_to_numpy(array).reshape(shape), expected(name, v), f"{what} VTK {grid} {name}")


def main():
    scratch, producer = Path(sys.argv[1]), sys.argv[2]
    versions = [int(v) for v in sys.argv[3:]]
    last = versions[-1]

    with h5py.File(scratch / "one.h5", "r") as f:
        check_version(f, scratch, producer, last, "one.h5")
    for file, want in [("two.h5", versions[1:3]), ("series.h5", versions)]:
        with h5py.File(scratch / file, "r") as f:
            assert f.attrs["producer"] == producer and list(f.attrs["versions"]) == want, f"{file}: {dict(f.attrs)}"
            assert sorted(f) == [f"v{v:012d}" for v in want], f"{file}: groups {sorted(f)}"
            for v in want:
                check_version(f[f"v{v:012d}"], scratch, producer, v, f"{file} v{v}")
    print("h5py: one.h5, two.h5, series.h5 equal the .npy restores and what was published")

    reader = vtkXdmfReader()
    reader.SetFileName(str(scratch / "one.xmf"))
    check_vtk_grids(vtk_blocks(reader), last, "one.xmf")
    reader = vtkXdmfReader()
    reader.SetFileName(str(scratch / "series.xmf"))
    reader.UpdateInformation()
    times = reader.GetOutputInformation(0).Get(vtkStreamingDemandDrivenPipeline.TIME_STEPS())
    assert times is not None and list(times) == [v * 10 for v in versions], f"series.xmf: time steps {times}"
    for v in versions:
        check_vtk_grids(vtk_blocks(reader, v * 10), v, f"series.xmf at step {v * 10}")
    print(f"VTK's XDMF reader: one.xmf and series.xmf ({len(versions)} time steps) hold the published arrays")
    print("ok")


if __name__ == "__main__":
    main()
