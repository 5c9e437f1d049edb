//! Collectives: how the ranks of a [`crate::SplitBackend`] combine their partial sums.

use gptoss_backend::{Backend, BackendError, Result};

/// A sum over ranks: each rank holds a partial `[rows, cols]` matrix, and afterwards every rank
/// holds the elementwise sum of all of them.
pub trait Collective<B: Backend> {
    /// A short name for logs (`"host"`, `"nccl"`).
    fn name(&self) -> String;

    /// Replace every `parts[r]` (living on `ranks[r]`) with the sum of all parts. All parts
    /// have the same shape; `parts.len() == ranks.len()`.
    fn all_reduce_sum(&self, ranks: &[B], parts: &mut [B::Tensor]) -> Result<()>;
}

/// The reference collective: copy every part to the host, add them in rank order, copy the sum
/// back to every rank. Slow, but exact and backend-agnostic: the tests run it on CPU ranks, and
/// it is the fallback where no device collective exists.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostCollective;

impl<B: Backend> Collective<B> for HostCollective {
    fn name(&self) -> String {
        "host".into()
    }

    fn all_reduce_sum(&self, ranks: &[B], parts: &mut [B::Tensor]) -> Result<()> {
        if ranks.len() != parts.len() || ranks.is_empty() {
            return Err(BackendError::Shape {
                op: "all_reduce_sum",
                detail: format!("{} ranks but {} parts", ranks.len(), parts.len()),
            });
        }
        let mut sum: Option<(Vec<f32>, usize, usize)> = None;
        for (b, p) in ranks.iter().zip(parts.iter()) {
            b.make_current()?;
            let (data, rows, cols) = b.to_host(p)?;
            match &mut sum {
                None => sum = Some((data, rows, cols)),
                Some((acc, r0, c0)) => {
                    if (rows, cols) != (*r0, *c0) {
                        return Err(BackendError::Shape {
                            op: "all_reduce_sum",
                            detail: format!("parts [{r0}, {c0}] and [{rows}, {cols}]"),
                        });
                    }
                    acc.iter_mut().zip(&data).for_each(|(a, x)| *a += x);
                }
            }
        }
        let (acc, rows, cols) = sum.expect("at least one rank, checked above");
        for (b, p) in ranks.iter().zip(parts.iter_mut()) {
            b.make_current()?;
            *p = b.from_host(&acc, rows, cols)?;
        }
        Ok(())
    }
}
