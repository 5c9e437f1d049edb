//! NCCL between the [`CudaBackend`]s of one process (one per GPU): the device collective of
//! gptoss-parallel's `SplitBackend`.
//!
//! One thread drives every GPU, so the per-rank all-reduces of one sum are issued inside one
//! NCCL group (`ncclGroupStart`/`ncclGroupEnd`): NCCL then launches them together instead of
//! waiting, in the first call, for peers that have not been called yet. Each all-reduce is
//! queued on its backend's stream, so it is ordered after the kernels that wrote its input and
//! before the ones that read its output, with no host synchronization.
//!
//! libnccl is opened at run time (cudarc's dynamic loading): a machine without it gets
//! [`BackendError::Unavailable`] saying what to install, never a panic.

use std::ffi::c_void;

use cudarc::nccl::{result, sys};
use gptoss_backend::{BackendError, Result};
use gptoss_parallel::Collective;

use crate::{CudaBackend, CudaTensor};

fn nccl_err(what: &str, e: result::NcclError) -> BackendError {
    BackendError::Device {
        backend: "nccl".into(),
        message: format!("{what}: {e:?}"),
    }
}

/// NCCL communicators over a set of GPUs, one per rank, created together in this process.
pub struct NcclCollective {
    comms: Vec<sys::ncclComm_t>,
    ordinals: Vec<usize>,
    version: i32,
}

impl NcclCollective {
    /// One communicator per backend of `ranks` (rank r = `ranks[r]`, which must be distinct
    /// GPUs). Sets `NCCL_NVLS_ENABLE=0` first: NVLink SHARP multicast can take every GPU of a
    /// shared host out of service, and a sum of a few kilobytes per layer gains nothing from it.
    /// Call this before the process starts threads that read the environment.
    pub fn new(ranks: &[CudaBackend]) -> Result<Self> {
        let unavailable = |reason: String| BackendError::Unavailable {
            backend: "nccl".into(),
            reason,
        };
        if ranks.is_empty() {
            return Err(unavailable("no GPUs given".into()));
        }
        // SAFETY: only tries to open the library; no symbol is called.
        if !unsafe { sys::is_culib_present() } {
            return Err(unavailable(
                "the NCCL library was not found under the names cudarc opens (libnccl.so, \
                 libnccl.so.1, ...): install NCCL with its development link (libnccl-dev), or \
                 link a libnccl.so.2 (e.g. from `pip install nvidia-nccl-cu13`) as libnccl.so \
                 in a folder on LD_LIBRARY_PATH; or run on one GPU"
                    .into(),
            ));
        }
        let ordinals: Vec<usize> = ranks.iter().map(|b| b.ctx.ordinal()).collect();
        for (i, o) in ordinals.iter().enumerate() {
            if ordinals[..i].contains(o) {
                return Err(unavailable(format!(
                    "GPU {o} is listed twice: NCCL needs one rank per GPU"
                )));
            }
        }
        if std::env::var("NCCL_NVLS_ENABLE").as_deref() != Ok("0") {
            // SAFETY: set once, before NCCL is initialized; the commands that build a split
            // backend do so before they start threads of their own (see the doc above).
            unsafe { std::env::set_var("NCCL_NVLS_ENABLE", "0") };
        }
        let version = result::get_nccl_version().map_err(|e| nccl_err("ncclGetVersion", e))?;
        let devs: Vec<i32> = ordinals.iter().map(|&o| o as i32).collect();
        let mut comms = vec![std::ptr::null_mut(); devs.len()];
        // SAFETY: `comms` has one slot per entry of `devs`, which are distinct device ordinals.
        unsafe { result::comm_init_all(comms.as_mut_ptr(), devs.len() as i32, devs.as_ptr()) }
            .map_err(|e| nccl_err("ncclCommInitAll", e))?;
        Ok(NcclCollective {
            comms,
            ordinals,
            version,
        })
    }

    /// The NCCL version as NCCL reports it (e.g. 22703 for 2.27.3).
    pub fn version(&self) -> i32 {
        self.version
    }

    fn enqueue(&self, ranks: &[CudaBackend], parts: &mut [CudaTensor]) -> Result<()> {
        for ((b, t), &comm) in ranks.iter().zip(parts.iter_mut()).zip(&self.comms) {
            let count = t.rows * t.cols;
            let p = t.buf.ptr as *mut c_void;
            // SAFETY: `p` is the live device allocation of `t` (at least `count` f32) on
            // `b`'s GPU, the communicator's device; in place (send == receive) is allowed; the
            // operation is queued on `b`'s stream, where all other work on `t` runs.
            unsafe {
                result::all_reduce(
                    p,
                    p,
                    count,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    b.stream.cu_stream() as sys::cudaStream_t,
                )
            }
            .map_err(|e| nccl_err("ncclAllReduce", e))?;
        }
        Ok(())
    }
}

impl Collective<CudaBackend> for NcclCollective {
    fn name(&self) -> String {
        let v = self.version;
        format!("nccl {}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    }

    fn all_reduce_sum(&self, ranks: &[CudaBackend], parts: &mut [CudaTensor]) -> Result<()> {
        let bad = |detail: String| BackendError::Shape {
            op: "nccl all_reduce_sum",
            detail,
        };
        if ranks.len() != self.comms.len() || parts.len() != self.comms.len() {
            return Err(bad(format!(
                "{} communicators, {} ranks, {} parts",
                self.comms.len(),
                ranks.len(),
                parts.len()
            )));
        }
        for (r, b) in ranks.iter().enumerate() {
            if b.ctx.ordinal() != self.ordinals[r] {
                return Err(bad(format!(
                    "rank {r} is GPU {}, its communicator GPU {}",
                    b.ctx.ordinal(),
                    self.ordinals[r]
                )));
            }
        }
        let (rows, cols) = (parts[0].rows, parts[0].cols);
        if parts.iter().any(|t| (t.rows, t.cols) != (rows, cols)) {
            return Err(bad("parts of different shapes".into()));
        }
        if rows * cols == 0 {
            return Ok(());
        }
        result::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
        let queued = self.enqueue(ranks, parts);
        // The group must be closed even when a call failed inside it.
        let ended = result::group_end().map_err(|e| nccl_err("ncclGroupEnd", e));
        queued.and(ended.map(|_| ()))
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        for &c in &self.comms {
            // SAFETY: each communicator was created by ncclCommInitAll and is destroyed once.
            let _ = unsafe { result::comm_destroy(c) };
        }
    }
}

/// A split backend over the given GPUs: one [`CudaBackend`] per ordinal, summed through NCCL.
pub fn split_over(
    ordinals: &[usize],
) -> Result<gptoss_parallel::SplitBackend<CudaBackend, NcclCollective>> {
    let ranks = ordinals
        .iter()
        .map(|&o| CudaBackend::new(o))
        .collect::<Result<Vec<_>>>()?;
    let coll = NcclCollective::new(&ranks)?;
    gptoss_parallel::SplitBackend::new(ranks, coll)
}
