//! The matrix product behind every 1x1 convolution (and the im2col'd stem): activations
//! (pixels, in) times weights (in, out) packed once at load, with the bias, the activation and
//! the residual applied while the result is still in registers.
//!
//! A general GEMM packs both operands on every call, zeroes its output and leaves the bias,
//! ReLU6 and the residual to three more passes over memory; MobileNetV2's products are small
//! and many (52 per image), so those passes cost as much as the arithmetic. Here the weights are
//! packed into panels of [`PANEL`] output columns at load, activations are read in place, and
//! each micro-tile of [`TILE_ROWS`] pixels by one panel is finished and stored once.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::ops::Activation;

/// Output columns per packed panel: three AVX vectors.
pub const PANEL: usize = 24;
/// Pixels per micro-tile: with three vectors per row, 12 accumulators of AVX2's 16 registers,
/// and each step loads 3 weight vectors and 4 activations for 12 multiply-adds (a 6x16 tile
/// needs 8 loads for as many, and ran 5-15% slower here).
pub const TILE_ROWS: usize = 4;
/// Pixels per parallel task: twelve micro-tiles, whose activations stay in L2 while every
/// panel passes over them.
const TASK_ROWS: usize = 12 * TILE_ROWS;
/// Tasks wanted per product, so that two threads share even a 7x7 layer (two each: with
/// eight, batch 8 ran ~5% slower, each thread splitting its own image's layers for nothing).
const MIN_TASKS: usize = 4;

/// A weight matrix (in, out) and its bias, packed into panels of [`PANEL`] output columns:
/// panel `p` holds, for each input `k`, columns `24p..24p + 24` (zero past `out`).
#[derive(Debug, Clone)]
pub struct PackedWeights {
    inputs: usize,
    outputs: usize,
    panels: Vec<f32>,
    /// The bias, zero-padded to whole panels.
    bias: Vec<f32>,
}

impl PackedWeights {
    /// Packs a row-major (inputs, outputs) matrix and its bias.
    pub fn pack(weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(weight.len(), inputs * outputs, "weight is not {inputs}x{outputs}");
        Self::from_fn(bias, inputs, outputs, |k, column| weight[k * outputs + column])
    }

    /// Packs a row-major (outputs, inputs) matrix, the layout PyTorch stores linear and 1x1
    /// convolution weights in, and its bias: no transposed copy first.
    pub fn pack_transposed(weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(weight.len(), inputs * outputs, "weight is not {outputs}x{inputs}");
        Self::from_fn(bias, inputs, outputs, |k, column| weight[column * inputs + k])
    }

    /// Packs the (inputs, outputs) matrix whose values are `value(input, output)`, and its
    /// bias: weights can be rearranged or scaled while they are packed (panels in parallel).
    pub fn from_fn(
        bias: &[f32],
        inputs: usize,
        outputs: usize,
        value: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
        assert_eq!(bias.len(), outputs, "bias is not {outputs} long");
        let count = outputs.div_ceil(PANEL);
        let mut panels = vec![0f32; count * inputs * PANEL];
        if inputs > 0 {
            panels
                .par_chunks_exact_mut(inputs * PANEL)
                .enumerate()
                .for_each(|(p, panel)| {
                    let first = p * PANEL;
                    let columns = PANEL.min(outputs - first);
                    for (k, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
                        for (j, d) in dst[..columns].iter_mut().enumerate() {
                            *d = value(k, first + j);
                        }
                    }
                });
        }
        let mut padded = vec![0f32; count * PANEL];
        padded[..outputs].copy_from_slice(bias);
        Self {
            inputs,
            outputs,
            panels,
            bias: padded,
        }
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    fn panel_count(&self) -> usize {
        self.outputs.div_ceil(PANEL)
    }

    fn panel(&self, p: usize) -> (&[f32], &[f32]) {
        (
            &self.panels[p * self.inputs * PANEL..][..self.inputs * PANEL],
            &self.bias[p * PANEL..][..PANEL],
        )
    }
}

/// Where the product's rows go: a raw pointer so that parallel tasks can each write their own
/// tiles (disjoint row and column ranges) of one output.
#[derive(Clone, Copy)]
struct Output(*mut f32);

// SAFETY: tasks write disjoint tiles (see `product`), and the buffer outlives them.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// The address of element `offset` (a method, so that closures capture the whole `Send`
    /// wrapper rather than its raw pointer field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `activation(a @ w + bias) + residual` for `a` (rows, w.inputs()) and an optional residual
/// (rows, w.outputs()), into a new (rows, w.outputs()) buffer.
pub fn product(
    a: &[f32],
    rows: usize,
    w: &PackedWeights,
    activation: Activation,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(rows * w.outputs);
    product_into(
        a,
        rows,
        w,
        activation,
        residual,
        &mut out.spare_capacity_mut()[..rows * w.outputs],
    );
    // SAFETY: `product_into` wrote every (row, column) of the rows x n output.
    unsafe { out.set_len(rows * w.outputs) };
    out
}

/// [`product`] into `out` (rows, w.outputs()), whose every value it writes.
pub fn product_into(
    a: &[f32],
    rows: usize,
    w: &PackedWeights,
    activation: Activation,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    let (k, n) = (w.inputs, w.outputs);
    assert_eq!(a.len(), rows * k, "activations are not {rows}x{k}");
    assert_eq!(out.len(), rows * n, "output is not {rows}x{n}");
    if let Some(residual) = residual {
        assert_eq!(residual.len(), rows * n, "residual is not {rows}x{n}");
    }
    let target = Output(out.as_mut_ptr().cast::<f32>());
    // Tasks are row chunks of whole tiles times groups of panels, each as even as the sizes
    // allow, numbered group-major so that rayon's first split hands each thread half of
    // every row chunk (a 7x7 layer has 49 rows: chunks of 28 and 21, not 48 and 1).
    let tiles = rows.div_ceil(TILE_ROWS);
    let tiles_per_chunk = tiles.div_ceil(rows.div_ceil(TASK_ROWS).max(1)).max(1);
    let row_chunks = tiles.div_ceil(tiles_per_chunk);
    let panels = w.panel_count();
    let panel_groups = MIN_TASKS.div_ceil(row_chunks.max(1)).clamp(1, panels.max(1));
    (0..row_chunks * panel_groups).into_par_iter().for_each(|task| {
        let (group, chunk) = (task / row_chunks, task % row_chunks);
        let first_row = chunk * tiles_per_chunk * TILE_ROWS;
        let task_rows = (tiles_per_chunk * TILE_ROWS).min(rows - first_row);
        let (first_panel, end_panel) = (group * panels / panel_groups, (group + 1) * panels / panel_groups);
        for p in first_panel..end_panel {
            let (panel, bias) = w.panel(p);
            let columns = PANEL.min(n - p * PANEL);
            for tile_start in (first_row..first_row + task_rows).step_by(TILE_ROWS) {
                let tile = Tile {
                    a: &a[tile_start * k..],
                    k,
                    rows: TILE_ROWS.min(first_row + task_rows - tile_start),
                    panel,
                    bias,
                    columns,
                    activation,
                    residual: residual.map(|r| &r[tile_start * n + p * PANEL..]),
                    n,
                };
                // SAFETY: this tile is rows `tile_start..+tile.rows`, columns
                // `24p..24p + columns` of a rows x n buffer; no other task writes them.
                unsafe { kernel::tile(&tile, target.at(tile_start * n + p * PANEL)) };
            }
        }
    });
}

/// One micro-tile: up to [`TILE_ROWS`] rows of `a` times one panel.
struct Tile<'a> {
    /// The tile's first activation row onwards; rows are `k` apart.
    a: &'a [f32],
    k: usize,
    rows: usize,
    panel: &'a [f32],
    bias: &'a [f32],
    /// Valid columns of the panel ([`PANEL`] except in the last panel).
    columns: usize,
    activation: Activation,
    /// The residual at the tile's first row and column; rows are `n` apart.
    residual: Option<&'a [f32]>,
    n: usize,
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod kernel {
    use std::arch::x86_64::*;

    use super::{Activation, Tile, PANEL, TILE_ROWS};

    /// Computes one tile into `out` (its first row and column; rows `tile.n` apart).
    ///
    /// # Safety
    /// `out` must be valid for writes of `tile.rows` rows of `tile.columns` values.
    pub unsafe fn tile(tile: &Tile, out: *mut f32) {
        // Dispatch to a kernel whose row and vector counts are constants, so that its
        // accumulators live in registers.
        macro_rules! rows {
            ($v:literal) => {
                match tile.rows {
                    4 => tile_of::<4, $v>(tile, out),
                    3 => tile_of::<3, $v>(tile, out),
                    2 => tile_of::<2, $v>(tile, out),
                    _ => tile_of::<1, $v>(tile, out),
                }
            };
        }
        debug_assert!(tile.rows >= 1 && tile.rows <= TILE_ROWS);
        // SAFETY: forwarded from the caller.
        unsafe {
            if tile.columns > 16 {
                rows!(3)
            } else if tile.columns > 8 {
                rows!(2)
            } else {
                rows!(1)
            }
        }
    }

    #[inline(always)]
    unsafe fn tile_of<const R: usize, const V: usize>(tile: &Tile, out: *mut f32) {
        // SAFETY: the slices' lengths cover every read (R rows of k activations, k panel rows
        // of [`PANEL`], as many biases, R residual rows of `columns`); AVX2 and FMA are compile-time
        // features (the cfg above); writes are the caller's contract.
        unsafe {
            debug_assert!(tile.a.len() >= (R - 1) * tile.k + tile.k);
            debug_assert!(tile.panel.len() == tile.k * PANEL);
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            for v in 0..V {
                let b = _mm256_loadu_ps(tile.bias.as_ptr().add(8 * v));
                for row in acc.iter_mut() {
                    row[v] = b;
                }
            }
            let a = tile.a.as_ptr();
            let mut w = tile.panel.as_ptr();
            for k in 0..tile.k {
                let mut wv = [_mm256_setzero_ps(); V];
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm256_loadu_ps(w.add(8 * v));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r * tile.k + k));
                    for v in 0..V {
                        row[v] = _mm256_fmadd_ps(x, wv[v], row[v]);
                    }
                }
                w = w.add(PANEL);
            }
            let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
            for (r, row) in acc.iter().enumerate() {
                for (v, &value) in row.iter().enumerate() {
                    let mut value = match tile.activation {
                        Activation::Identity => value,
                        Activation::Relu6 => _mm256_min_ps(_mm256_max_ps(value, zero), six),
                    };
                    let columns = tile.columns.saturating_sub(8 * v).min(8);
                    let dst = out.add(r * tile.n + 8 * v);
                    let residual = tile.residual.map(|res| &res[r * tile.n + 8 * v..][..columns]);
                    if columns == 8 {
                        if let Some(residual) = residual {
                            value = _mm256_add_ps(value, _mm256_loadu_ps(residual.as_ptr()));
                        }
                        _mm256_storeu_ps(dst, value);
                    } else {
                        let mut lanes = [0f32; 8];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), value);
                        for (c, lane) in lanes[..columns].iter().enumerate() {
                            dst.add(c).write(lane + residual.map_or(0.0, |res| res[c]));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod kernel {
    use super::{Tile, PANEL};

    /// Computes one tile into `out` (its first row and column; rows `tile.n` apart).
    ///
    /// # Safety
    /// `out` must be valid for writes of `tile.rows` rows of `tile.columns` values.
    pub unsafe fn tile(tile: &Tile, out: *mut f32) {
        for r in 0..tile.rows {
            let mut acc: [f32; PANEL] = tile.bias.try_into().expect("a panel's bias");
            let a = &tile.a[r * tile.k..][..tile.k];
            for (&x, w) in a.iter().zip(tile.panel.chunks_exact(PANEL)) {
                for (acc, &w) in acc.iter_mut().zip(w) {
                    *acc += x * w;
                }
            }
            for (c, &value) in acc[..tile.columns].iter().enumerate() {
                let residual = tile.residual.map_or(0.0, |res| res[r * tile.n + c]);
                // SAFETY: the caller's contract.
                unsafe {
                    out.add(r * tile.n + c)
                        .write(tile.activation.apply(value) + residual)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// Every tile shape (rows not multiples of 4 or 48, columns not multiples of 8 or 24),
    /// against a plain triple loop, with and without activation and residual.
    #[test]
    fn product_matches_a_plain_loop() {
        for (i, &(rows, k, n)) in [
            (1, 1, 1),
            (5, 3, 7),
            (7, 27, 32),
            (49, 160, 960),
            (53, 24, 144),
            (100, 17, 24),
            (6, 8, 9),
            (9, 5, 17),
            (4, 12, 48),
            (200, 96, 40),
        ]
        .iter()
        .enumerate()
        {
            let a = values(rows * k, i as u64);
            let w = values(k * n, 100 + i as u64);
            let bias = values(n, 200 + i as u64);
            let residual = values(rows * n, 300 + i as u64);
            let packed = PackedWeights::pack(&w, &bias, k, n);
            let transposed: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
            let packed_from_transposed = PackedWeights::pack_transposed(&transposed, &bias, k, n);
            assert_eq!(packed.panels, packed_from_transposed.panels, "{rows}x{k}x{n}");
            for (activation, with_residual) in [(Activation::Relu6, false), (Activation::Identity, true)] {
                let got = product(
                    &a,
                    rows,
                    &packed,
                    activation,
                    with_residual.then_some(&residual[..]),
                );
                for r in 0..rows {
                    for c in 0..n {
                        let sum: f32 = (0..k).map(|j| a[r * k + j] * w[j * n + c]).sum::<f32>() + bias[c];
                        let want =
                            activation.apply(sum) + if with_residual { residual[r * n + c] } else { 0.0 };
                        let diff = (got[r * n + c] - want).abs();
                        assert!(
                            diff <= 1e-4 * (1.0 + want.abs()),
                            "{rows}x{k}x{n} {activation:?} row {r} column {c}: {} vs {want}",
                            got[r * n + c]
                        );
                    }
                }
            }
        }
    }
}
