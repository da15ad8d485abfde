//! tcasm observers for Python: attach to a running producer and read its snapshots as
//! read-only numpy arrays, without copying; read checkpoints written by `tcasm checkpoint`.
//!
//! ```python
//! import tcasm
//! observer = tcasm.attach("heat")
//! snap = observer.latest()                  # pinned: never changes while referenced
//! t = snap["temperature"]                   # numpy array over the snapshot's pages
//! newer = observer.wait_newer(snap.version, timeout=1.0)
//! arrays = tcasm.read_checkpoint("/burst/heat")
//! ```
//!
//! Why arrays are safe to hand out: a region's array is a view of the snapshot's memory (read-
//! only mappings of the producer's pool, or private pages, see `tcasm::observer`), which stays
//! mapped and unchanged while the `Snapshot` lives. Each array holds the `Snapshot` as its
//! numpy `base`, so the pin lasts as long as any array taken from it, even after the snapshot
//! itself is dropped from Python. Arrays are flagged read-only (and the pages are mapped
//! read-only too), and numpy refuses to make them writeable again.
//!
//! An observer holds at most 8 snapshots at once (the library's pin slots per observer):
//! drop snapshots and their arrays you no longer need, or attach a second observer.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use tcasm_core::checkpoint::restart::{self, split_dirs};
use tcasm_core::checkpoint::{assemble, Catalog, CheckpointError};
use tcasm_core::error::{EndpointError, ReadError};
use tcasm_core::{with_element, RegionInfo};

create_exception!(tcasm, TcasmError, PyException, "A tcasm operation failed; the message says why.");
create_exception!(tcasm, ProducerGone, TcasmError, "The producer exited; snapshots already taken stay readable.");

fn read_error(e: ReadError) -> PyErr {
    match e {
        ReadError::ProducerGone { .. } => ProducerGone::new_err(e.to_string()),
        ReadError::NoSuchRegion { .. } => PyKeyError::new_err(e.to_string()),
        e => TcasmError::new_err(e.to_string()),
    }
}

fn checkpoint_error(e: CheckpointError) -> PyErr {
    TcasmError::new_err(e.to_string())
}

/// A connection to one producer (from `tcasm.attach`).
#[pyclass(module = "tcasm", name = "Observer", frozen)]
struct Observer {
    inner: tcasm_core::Observer,
}

#[pymethods]
impl Observer {
    /// The producer's endpoint name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The producer's regions: {name: (numpy dtype string, shape)}.
    #[getter]
    fn regions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        region_dict(py, self.inner.regions())
    }

    /// The newest version published (without pinning it).
    #[getter]
    fn latest_version(&self) -> u64 {
        self.inner.latest_version()
    }

    /// Whether the producer has exited.
    #[getter]
    fn producer_gone(&self) -> bool {
        self.inner.producer_gone()
    }

    /// Pins the newest version and returns it as a Snapshot.
    fn latest(&self, py: Python<'_>) -> PyResult<Snapshot> {
        let inner = self.inner.clone();
        let snap = py.detach(move || inner.latest()).map_err(read_error)?;
        Ok(Snapshot { snap })
    }

    /// Waits until a version newer than `version` exists; returns the newest version then,
    /// or None when `timeout` seconds pass first (None or `float('inf')`: wait without limit).
    /// Ctrl-C works.
    #[pyo3(signature = (version, timeout = None))]
    fn wait_newer(&self, py: Python<'_>, version: u64, timeout: Option<f64>) -> PyResult<Option<u64>> {
        let deadline = timeout.and_then(deadline_after);
        loop {
            // Waits in slices, so that signals (KeyboardInterrupt) are seen between them.
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_millis(200)),
                None => Duration::from_millis(200),
            };
            let inner = self.inner.clone();
            if let Some(v) = py.detach(move || inner.wait_newer(version, slice)).map_err(read_error)? {
                return Ok(Some(v));
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    fn __repr__(&self) -> String {
        format!("<tcasm.Observer of {:?}, latest version {}>", self.inner.name(), self.inner.latest_version())
    }
}

/// The instant `seconds` from now, or None when no clock reaches it (an infinite timeout, or
/// one too long to tell from it): then waits have no deadline.
fn deadline_after(seconds: f64) -> Option<Instant> {
    Instant::now().checked_add(Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX))
}

fn region_dict<'py>(py: Python<'py>, regions: &[RegionInfo]) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for r in regions {
        dict.set_item(&r.name, (r.dtype.numpy_descr(), pyo3::types::PyTuple::new(py, &r.shape)?))?;
    }
    Ok(dict)
}

/// One pinned version of the producer's regions. `snapshot["name"]` is a region as a
/// read-only numpy array sharing the snapshot's memory; the version stays pinned while the
/// snapshot or any of its arrays lives.
#[pyclass(module = "tcasm", name = "Snapshot", frozen)]
struct Snapshot {
    snap: tcasm_core::Snapshot,
}

#[pymethods]
impl Snapshot {
    /// The version number.
    #[getter]
    fn version(&self) -> u64 {
        self.snap.version()
    }

    /// The region names, in the producer's order.
    #[getter]
    fn regions(&self) -> Vec<String> {
        self.snap.regions().iter().map(|r| r.name.clone()).collect()
    }

    /// Region `name` as a read-only numpy array (no copy).
    fn __getitem__<'py>(slf: &Bound<'py, Self>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let info = slf.get().snap.regions().iter().find(|r| r.name == name).cloned();
        match info {
            Some(info) => array(slf, &info),
            None => Err(read_error(ReadError::NoSuchRegion {
                region: name.to_string(),
                have: slf.get().regions().join(", "),
            })),
        }
    }

    fn __contains__(&self, name: &str) -> bool {
        self.snap.regions().iter().any(|r| r.name == name)
    }

    fn __len__(&self) -> usize {
        self.snap.regions().len()
    }

    /// All regions: {name: read-only numpy array}.
    fn arrays<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(slf.py());
        for info in slf.get().snap.regions() {
            dict.set_item(&info.name, array(slf, info)?)?;
        }
        Ok(dict)
    }

    /// Pages of the page space written after version `since`, as [(first, end), ...].
    fn changed_since(&self, since: u64) -> Vec<(usize, usize)> {
        self.snap.changed_since(since).into_iter().map(|r| (r.start, r.end)).collect()
    }

    fn __repr__(&self) -> String {
        let regions: Vec<String> =
            self.snap.regions().iter().map(|r| format!("{} {} {:?}", r.name, r.dtype, r.shape)).collect();
        format!("<tcasm.Snapshot version {}: {}>", self.snap.version(), regions.join(", "))
    }
}

/// Region `info` of the snapshot `slf` as a read-only numpy array whose base is `slf`.
fn array<'py>(slf: &Bound<'py, Snapshot>, info: &RegionInfo) -> PyResult<Bound<'py, PyAny>> {
    with_element!(info.dtype, T => {
        let data: &[T] = slf.get().snap.view::<T>(&info.name).map_err(read_error)?;
        let view = ArrayViewD::from_shape(IxDyn(&info.shape), data)
            .map_err(|e| TcasmError::new_err(format!("region {:?}: {e}", info.name)))?;
        // SAFETY: `data` lies in the snapshot's view, which stays mapped and unchanged while
        // the Snapshot object lives (its pin; see the module docs). The array takes a
        // reference to that object as its base, so the object outlives the array; and a
        // frozen pyclass is never mutated, so the view is never replaced or reallocated.
        let array = unsafe { PyArrayDyn::<T>::borrow_from_array(&view, slf.clone().into_any()) };
        // The pages are read-only: so is the array (and numpy will not let it be made
        // writeable again: its base exports no writable buffer).
        let array = array.try_readwrite().map_err(|e| TcasmError::new_err(e.to_string()))?.make_nonwriteable();
        Ok(array.as_any().clone())
    })
}

/// Attaches to the producer `name`, waiting up to `timeout` seconds for it to appear and
/// publish its first version; after a second of waiting it says so, once, on stderr (as the
/// tcasm commands do). Endpoints are looked up in $TCASM_DIR, else $XDG_RUNTIME_DIR/tcasm,
/// else /tmp/tcasm-$UID.
#[pyfunction]
#[pyo3(signature = (name, timeout = 10.0))]
fn attach(py: Python<'_>, name: &str, timeout: f64) -> PyResult<Observer> {
    let started = Instant::now();
    let deadline = deadline_after(timeout);
    let mut said = false;
    loop {
        let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
        let owned = name.to_string();
        let attached =
            py.detach(move || tcasm_core::Observer::attach_timeout(&owned, left.min(Duration::from_millis(500))));
        match attached {
            Ok(inner) => return Ok(Observer { inner }),
            // Not there yet, or not published yet: keep trying until the deadline.
            Err(ReadError::Endpoint(EndpointError::NotFound { .. } | EndpointError::NotReady { .. }))
                if deadline.is_none_or(|d| Instant::now() < d) =>
            {
                if !said && started.elapsed() >= WAITING_SAID_AFTER {
                    let up_to = if deadline.is_some() { format!("up to {timeout} s ") } else { String::new() };
                    say(py, &format!("tcasm: waiting {up_to}for producer {name:?} to appear (tcasm.attach timeout)\n"));
                    said = true;
                }
                py.check_signals()?;
                py.detach(|| std::thread::sleep(Duration::from_millis(20)));
            }
            Err(e) => return Err(read_error(e)),
        }
    }
}

/// How long `attach` waits quietly before it says that it waits.
const WAITING_SAID_AFTER: Duration = Duration::from_secs(1);

/// Writes `line` to Python's `sys.stderr` (where a notebook or a redirection sends it), or to
/// the process's stderr when Python has none.
fn say(py: Python<'_>, line: &str) {
    let written = py.import("sys").and_then(|sys| sys.getattr("stderr")).and_then(|err| {
        err.call_method1("write", (line,))?;
        err.call_method0("flush")
    });
    if written.is_err() {
        eprint!("{line}");
    }
}

/// Element types decoded from a checkpoint's little-endian bytes.
trait FromLe: Sized + numpy::Element + Copy + Default {
    const SIZE: usize;
    fn from_le(bytes: &[u8]) -> Self;
}

macro_rules! from_le {
    ($($t:ty),*) => {$(
        impl FromLe for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn from_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("one element's bytes"))
            }
        }
    )*};
}
from_le!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

/// A region being restored: where its bytes lie in the page space, and its elements.
struct Restoring<T> {
    start: usize,
    elements: Vec<T>,
}

/// A region being restored, whatever its element type.
trait Restore1: Send {
    /// Takes the bytes `bytes` found at byte `at` of the page space.
    fn take(&mut self, at: usize, bytes: &[u8]);
    /// The restored elements as a numpy array of `shape`.
    fn into_array<'py>(self: Box<Self>, py: Python<'py>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>>;
}

impl<T: FromLe> Restore1 for Restoring<T> {
    fn take(&mut self, at: usize, bytes: &[u8]) {
        // Pages hold whole elements: a region starts aligned for its type, and pages are
        // multiples of 8 bytes.
        let end = self.start + self.elements.len() * T::SIZE;
        let (lo, hi) = (self.start.max(at), end.min(at + bytes.len()));
        if lo >= hi {
            return;
        }
        let first = (lo - self.start) / T::SIZE;
        for (i, e) in bytes[lo - at..hi - at].chunks_exact(T::SIZE).enumerate() {
            self.elements[first + i] = T::from_le(e);
        }
    }

    fn into_array<'py>(self: Box<Self>, py: Python<'py>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
        Ok(PyArray1::from_vec(py, self.elements).reshape(shape.to_vec())?.into_any())
    }
}

/// Reads checkpoint `version` (the newest complete one when None) from the checkpoint
/// directory `dir` written by `tcasm checkpoint`, and returns {region name: numpy array}.
/// `dir` may list the levels, `"LOCAL:PERSISTENT"`: the first holding the version intact is
/// read. Every chunk read is checked against its checksum.
///
/// `global_=True`: `dir` is the persistent directory of an MPI job (`tcasm checkpoint --all
/// ... --flush-to DIR`), and the ranks' tiles of global version `version` (the newest when
/// None) are assembled into one array per region, as `tcasm restore DIR --global` does.
#[pyfunction]
#[pyo3(signature = (dir, version = None, global_ = false))]
fn read_checkpoint<'py>(
    py: Python<'py>,
    dir: PathBuf,
    version: Option<u64>,
    global_: bool,
) -> PyResult<Bound<'py, PyDict>> {
    if global_ {
        return read_global(py, dir, version);
    }
    let (regions, restored) = py
        .detach(|| {
            let dirs = split_dirs(&dir.to_string_lossy());
            let restore = restart::open(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(), version)?;
            let space = &restore.manifest().space;
            let mut restored: Vec<Box<dyn Restore1>> = space
                .regions
                .iter()
                .map(|r| {
                    with_element!(r.dtype, T => {
                        Box::new(Restoring::<T> {
                            start: r.first_page * space.page_size + r.offset,
                            elements: vec![T::default(); r.elements()],
                        }) as Box<dyn Restore1>
                    })
                })
                .collect();
            restore.read(|first_page, bytes| {
                for r in restored.iter_mut() {
                    r.take(first_page * space.page_size, bytes);
                }
                Ok(())
            })?;
            Ok::<_, CheckpointError>((space.regions.clone(), restored))
        })
        .map_err(checkpoint_error)?;
    let dict = PyDict::new(py);
    for (r, restored) in regions.iter().zip(restored) {
        dict.set_item(&r.name, restored.into_array(py, &r.shape)?)?;
    }
    Ok(dict)
}

/// `read_checkpoint(dir, version, global_=True)`.
fn read_global<'py>(py: Python<'py>, dir: PathBuf, version: Option<u64>) -> PyResult<Bound<'py, PyDict>> {
    let field = py.detach(|| assemble::assemble(&dir, version)).map_err(checkpoint_error)?;
    let dict = PyDict::new(py);
    for a in field.regions {
        let array = with_element!(a.dtype, T => {
            let mut r = Box::new(Restoring::<T> { start: 0, elements: vec![T::default(); a.bytes.len() / T::SIZE] });
            r.take(0, &a.bytes);
            (r as Box<dyn Restore1>).into_array(py, &a.shape)?
        });
        dict.set_item(&a.name, array)?;
    }
    Ok(dict)
}

/// The versions of the complete checkpoints in `dir`, ascending.
#[pyfunction]
fn list_checkpoints(dir: PathBuf) -> PyResult<Vec<u64>> {
    let catalog = Catalog::open(&dir).map_err(checkpoint_error)?;
    let mut versions: Vec<u64> = catalog.chains.iter().flat_map(|c| c.complete.iter().copied()).collect();
    versions.sort_unstable();
    versions.dedup();
    Ok(versions)
}

/// Observe a running tcasm producer: its snapshots as read-only, zero-copy numpy arrays.
#[pymodule]
#[pyo3(name = "tcasm")]
fn tcasm_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(attach, m)?)?;
    m.add_function(wrap_pyfunction!(read_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(list_checkpoints, m)?)?;
    m.add_class::<Observer>()?;
    m.add_class::<Snapshot>()?;
    m.add("TcasmError", m.py().get_type::<TcasmError>())?;
    m.add("ProducerGone", m.py().get_type::<ProducerGone>())?;
    Ok(())
}
