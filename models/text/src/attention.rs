//! Attention of one new position over a sequence's cached keys and values, as one kernel.
//!
//! A decode step attends one row per sequence. Through candle that is a dozen small tensor
//! operations per layer and sequence (two matrix products, scaling, softmax, transposes), each
//! with its own allocation and thread hand-off; for a batch of 8 generations that was about a
//! thousand operations per step. Here it is one pass per head: scores, softmax, weighted sum.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `softmax(q . k / sqrt(head_dim)) v` per head, for `q` (heads, head_dim) and the `keys` and
/// `values` views (heads, positions, head_dim), each position row contiguous.
struct AttendOne;

/// A view's values, its start, and the strides of its head and position axes.
fn view<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<(&'a [f32], usize, [usize; 2])> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("attention: {what} must be f32")
    };
    match *layout.stride() {
        [heads, positions, 1] => Ok((data, layout.start_offset(), [heads, positions])),
        _ => candle_core::bail!("attention: {what} rows must be contiguous"),
    }
}

impl CustomOp3 for AttendOne {
    fn name(&self) -> &'static str {
        "attend-one"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (heads, head_dim) = ql.shape().dims2()?;
        let (k_heads, positions, k_dim) = kl.shape().dims3()?;
        if (k_heads, k_dim) != (heads, head_dim) || vl.dims() != kl.dims() || positions == 0 {
            candle_core::bail!(
                "attention: q {:?}, keys {:?}, values {:?}",
                ql.dims(),
                kl.dims(),
                vl.dims()
            )
        }
        let CpuStorage::F32(q) = qs else {
            candle_core::bail!("attention: q must be f32")
        };
        let Some((q_start, _)) = ql.contiguous_offsets() else {
            candle_core::bail!("attention: q must be contiguous")
        };
        let (keys, k_start, k_stride) = view(ks, kl, "keys")?;
        let (values, v_start, v_stride) = view(vs, vl, "values")?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut out = vec![0f32; heads * head_dim];
        // Heads in parallel: a decode step's attention is otherwise the longest stretch in
        // which one core works and the other waits.
        out.par_chunks_mut(head_dim).enumerate().for_each(|(h, out)| {
            let q = &q[q_start + h * head_dim..][..head_dim];
            let mut scores: Vec<f32> = (0..positions)
                .map(|t| {
                    crate::matvec::dot(
                        q,
                        &keys[k_start + h * k_stride[0] + t * k_stride[1]..][..head_dim],
                    ) * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0f32;
            for score in scores.iter_mut() {
                *score = (*score - max).exp();
                total += *score;
            }
            for (t, &weight) in scores.iter().enumerate() {
                let v = &values[v_start + h * v_stride[0] + t * v_stride[1]..][..head_dim];
                let weight = weight / total;
                out.iter_mut().zip(v).for_each(|(o, v)| *o += weight * v);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((1, heads * head_dim))))
    }
}

/// The attended row (1, heads x head_dim) of one new position `q` (heads, head_dim) over
/// `keys` and `values` (heads, positions, head_dim), the new position's own included.
pub fn attend_one(q: &Tensor, keys: &Tensor, values: &Tensor) -> candle_core::Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(keys, values, &AttendOne)
}
