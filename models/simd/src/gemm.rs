//! The matrix product behind MobileNetV2's 1x1 convolutions (and its im2col'd stem) and
//! GPT-2's dense layers: activations (rows, inputs) times weights (inputs, outputs), with the
//! bias, the activation and the residual applied while the result is still in registers.
//!
//! A general GEMM packs both operands on every call, zeroes its output and leaves the bias,
//! ReLU6 and the residual to three more passes over memory; MobileNetV2's products are small
//! and many (52 per image), so those passes cost as much as the arithmetic. Here the weights
//! are laid out once at load in panels of a few vectors of output columns ([`Weights`]),
//! activations are read in place, and each micro-tile of rows by one panel is finished and
//! stored once. A micro-tile keeps its sums in registers (six rows of two AVX2 vectors, eight
//! rows of three AVX-512 vectors), so that each step loads the panel's weight vectors once and
//! broadcasts one activation per row for a multiply-add per vector.

use std::mem::MaybeUninit;

use half::bf16;
use rayon::prelude::*;

use crate::{dispatch, F32x, Kernel, Level};

/// Micro-tiles per parallel task's row chunk: its activations stay in L2 while every panel of
/// the task passes over them.
const TASK_TILES: usize = 12;
/// Tasks wanted per product, so that two threads share even a 7x7 layer (two each: with
/// eight, batch 8 ran slower, each thread splitting its own image's layers for nothing).
const MIN_TASKS: usize = 4;

/// Element-wise activation fused into a product's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// `min(max(x, 0), 6)`, MobileNetV2's activation.
    Relu6,
}

impl Activation {
    /// The activation of one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu6 => x.clamp(0.0, 6.0),
        }
    }

    /// The activation of a vector's lanes.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions.
    #[inline(always)]
    pub unsafe fn apply_lanes<V: F32x>(self, x: V) -> V {
        // SAFETY: the caller's.
        unsafe {
            match self {
                Activation::Identity => x,
                Activation::Relu6 => x.max(V::zero()).min(V::splat(6.0)),
            }
        }
    }
}

/// Rows per micro-tile at a level with `lanes` f32 lanes. The tile's sums, a row's vectors and
/// one broadcast activation must fit the registers: AVX-512's 32 hold 8 rows of three vectors
/// (24 sums); AVX2's 16 hold 6 rows of two (12 sums: four rows of three are 12 too, but leave
/// no room for the compiler's second broadcast, and it spilled a sum on every step).
const fn tile_rows(lanes: usize) -> usize {
    if lanes >= 16 {
        8
    } else {
        6
    }
}

/// Vectors of output columns per panel at a level with `lanes` f32 lanes (see [`tile_rows`]).
const fn panel_vectors(lanes: usize) -> usize {
    if lanes >= 16 {
        3
    } else {
        2
    }
}

/// A weight element the tiles read: f32, or bf16 widened on the fly (half the bytes).
pub trait Weight: Copy + Send + Sync + Default + 'static {
    /// `V::LANES` weights from `p`, as f32.
    ///
    /// # Safety
    /// `p` must be readable for `V::LANES` elements, and the CPU must have `V`'s instructions.
    unsafe fn load<V: F32x>(p: *const Self) -> V;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    unsafe fn load<V: F32x>(p: *const Self) -> V {
        // SAFETY: the caller's.
        unsafe { V::load(p) }
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    #[inline(always)]
    unsafe fn load<V: F32x>(p: *const Self) -> V {
        // SAFETY: the caller's.
        unsafe { V::load_bf16(p) }
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// A weight matrix (inputs, outputs) and its bias, packed for one [`Level`] into panels of
/// two or three vectors of output columns ([`panel_vectors`]): panel `p` holds, for each input `k`, its columns
/// `p * panel..(p + 1) * panel` (zero past `outputs`).
#[derive(Debug, Clone)]
pub struct Weights<W: Weight = f32> {
    level: Level,
    inputs: usize,
    outputs: usize,
    panel: usize,
    panels: Vec<W>,
    /// The bias, zero-padded to whole panels.
    bias: Vec<f32>,
}

impl<W: Weight> Weights<W> {
    /// Packs a row-major (inputs, outputs) matrix and its bias.
    pub fn pack(level: Level, weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(weight.len(), inputs * outputs, "weight is not {inputs}x{outputs}");
        Self::from_fn(level, bias, inputs, outputs, |k, column| {
            weight[k * outputs + column]
        })
    }

    /// Packs a row-major (outputs, inputs) matrix, the layout PyTorch stores linear and 1x1
    /// convolution weights in, and its bias: no transposed copy first.
    pub fn pack_transposed(
        level: Level,
        weight: &[f32],
        bias: &[f32],
        inputs: usize,
        outputs: usize,
    ) -> Self {
        assert_eq!(weight.len(), inputs * outputs, "weight is not {outputs}x{inputs}");
        Self::from_fn(level, bias, inputs, outputs, |k, column| {
            weight[column * inputs + k]
        })
    }

    /// Packs the (inputs, outputs) matrix whose values are `value(input, output)`, and its
    /// bias: weights can be rearranged or scaled while they are packed (panels in parallel).
    pub fn from_fn(
        level: Level,
        bias: &[f32],
        inputs: usize,
        outputs: usize,
        value: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
        assert_eq!(bias.len(), outputs, "bias is not {outputs} long");
        let panel = panel_vectors(level.lanes()) * level.lanes();
        let count = outputs.div_ceil(panel);
        let mut panels = vec![W::default(); count * inputs * panel];
        if inputs > 0 {
            panels
                .par_chunks_exact_mut(inputs * panel)
                .enumerate()
                .for_each(|(p, dst)| {
                    let first = p * panel;
                    let columns = panel.min(outputs - first);
                    for (k, dst) in dst.chunks_exact_mut(panel).enumerate() {
                        for (j, d) in dst[..columns].iter_mut().enumerate() {
                            *d = W::from_f32(value(k, first + j));
                        }
                    }
                });
        }
        let mut padded = vec![0f32; count * panel];
        padded[..outputs].copy_from_slice(bias);
        Self {
            level,
            inputs,
            outputs,
            panel,
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

    /// The level the panels were packed for, which every product over them runs at.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The weight of `input` for `output`, as packed.
    pub fn get(&self, input: usize, output: usize) -> f32 {
        let (p, column) = (output / self.panel, output % self.panel);
        self.panels[(p * self.inputs + input) * self.panel + column].to_f32()
    }

    fn panel_count(&self) -> usize {
        self.outputs.div_ceil(self.panel)
    }
}

/// Where the product's rows go: a raw pointer so that parallel tasks can each write their own
/// tiles (disjoint row and column ranges) of one output.
#[derive(Clone, Copy)]
struct Output(*mut f32);

// SAFETY: tasks write disjoint tiles (see `product_into`), and the buffer outlives them.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// `activation(a @ w + bias) + residual` for `a` (rows, w.inputs()) and an optional residual
/// (rows, w.outputs()), into a new (rows, w.outputs()) buffer.
pub fn product<W: Weight>(
    a: &[f32],
    rows: usize,
    w: &Weights<W>,
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
pub fn product_into<W: Weight>(
    a: &[f32],
    rows: usize,
    w: &Weights<W>,
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
    let tile = tile_rows(w.level.lanes());
    let tiles = rows.div_ceil(tile);
    let tiles_per_chunk = tiles.div_ceil(rows.div_ceil(TASK_TILES * tile).max(1)).max(1);
    let row_chunks = tiles.div_ceil(tiles_per_chunk);
    let panels = w.panel_count();
    let panel_groups = MIN_TASKS.div_ceil(row_chunks.max(1)).clamp(1, panels.max(1));
    (0..row_chunks * panel_groups).into_par_iter().for_each(|task| {
        let (group, chunk) = (task / row_chunks, task % row_chunks);
        let first_row = chunk * tiles_per_chunk * tile;
        dispatch(
            w.level,
            Task {
                a,
                w,
                activation,
                residual,
                rows: first_row..((tiles_per_chunk * tile) + first_row).min(rows),
                panels: group * panels / panel_groups..(group + 1) * panels / panel_groups,
                out: target,
            },
        );
    });
}

/// One task of a product: some rows times some panels.
struct Task<'a, W: Weight> {
    a: &'a [f32],
    w: &'a Weights<W>,
    activation: Activation,
    residual: Option<&'a [f32]>,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    out: Output,
}

impl<W: Weight> Kernel for Task<'_, W> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let Task {
            a,
            w,
            activation,
            residual,
            rows,
            panels,
            out,
        } = self;
        let (k, n, panel) = (w.inputs, w.outputs, w.panel);
        let tile = tile_rows(V::LANES);
        debug_assert_eq!(
            panel,
            panel_vectors(V::LANES) * V::LANES,
            "weights packed for another level"
        );
        for p in panels {
            let columns = panel.min(n - p * panel);
            for start in rows.clone().step_by(tile) {
                let tile = Tile {
                    a: a[start * k..].as_ptr(),
                    k,
                    rows: tile.min(rows.end - start),
                    panel: w.panels[p * k * panel..][..k * panel].as_ptr(),
                    bias: w.bias[p * panel..][..panel].as_ptr(),
                    columns,
                    activation,
                    residual: residual.map(|r| r[start * n + p * panel..].as_ptr()),
                    n,
                };
                // SAFETY: the level's instructions (the trait's contract); this tile is rows
                // `start..start + tile.rows`, columns `p * panel..+columns` of a rows x n
                // output, which no other task writes; its reads lie in `a`, the panel, the
                // bias and the residual (sliced above).
                unsafe { tile.compute::<V>(out.0.add(start * n + p * panel)) };
            }
        }
    }
}

/// One micro-tile: up to a tile's rows of `a` times one panel.
struct Tile<W> {
    /// The tile's first activation row; rows are `k` apart.
    a: *const f32,
    k: usize,
    rows: usize,
    /// The panel's first weight; its `k` rows are a panel apart.
    panel: *const W,
    /// The panel's bias, a panel's values.
    bias: *const f32,
    /// Valid columns of the panel (all but in the last panel).
    columns: usize,
    activation: Activation,
    /// The residual at the tile's first row and column; rows are `n` apart.
    residual: Option<*const f32>,
    n: usize,
}

impl<W: Weight> Tile<W> {
    /// Computes the tile into `out` (its first row and column; rows `n` apart), dispatching to
    /// a kernel whose row and vector counts are constants, so that its sums live in registers.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions; the pointers must cover the tile's reads and
    /// `out` its writes.
    #[inline(always)]
    unsafe fn compute<V: F32x>(&self, out: *mut f32) {
        macro_rules! rows {
            ($v:literal) => {
                match self.rows {
                    8 => self.of::<V, 8, $v>(out),
                    7 => self.of::<V, 7, $v>(out),
                    6 => self.of::<V, 6, $v>(out),
                    5 => self.of::<V, 5, $v>(out),
                    4 => self.of::<V, 4, $v>(out),
                    3 => self.of::<V, 3, $v>(out),
                    2 => self.of::<V, 2, $v>(out),
                    _ => self.of::<V, 1, $v>(out),
                }
            };
        }
        debug_assert!(self.rows >= 1 && self.rows <= tile_rows(V::LANES));
        // SAFETY: forwarded from the caller.
        unsafe {
            if self.columns > 2 * V::LANES {
                rows!(3)
            } else if self.columns > V::LANES {
                rows!(2)
            } else {
                rows!(1)
            }
        }
    }

    #[inline(always)]
    unsafe fn of<V: F32x, const R: usize, const NV: usize>(&self, out: *mut f32) {
        // SAFETY: the caller's contract covers every read and write below.
        unsafe {
            let mut acc = [[V::zero(); NV]; R];
            for v in 0..NV {
                let b = V::load(self.bias.add(v * V::LANES));
                for row in acc.iter_mut() {
                    row[v] = b;
                }
            }
            let mut w = self.panel;
            for k in 0..self.k {
                let mut wv = [V::zero(); NV];
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = W::load::<V>(w.add(v * V::LANES));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = V::splat(*self.a.add(r * self.k + k));
                    for v in 0..NV {
                        row[v] = x.mul_add(wv[v], row[v]);
                    }
                    std::arch::asm!("", options(nomem, nostack, preserves_flags));
                }
                w = w.add(panel_vectors(V::LANES) * V::LANES);
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, &value) in row.iter().enumerate() {
                    let columns = self.columns.saturating_sub(v * V::LANES).min(V::LANES);
                    let at = r * self.n + v * V::LANES;
                    let mut value = self.activation.apply_lanes(value);
                    if let Some(residual) = self.residual {
                        value = value.add(V::load_part(residual.add(at), columns));
                    }
                    value.store_part(out.add(at), columns);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// Every tile shape (rows not multiples of the tile or task, columns not multiples of a
    /// vector or panel), at every level this CPU has, f32 and bf16 weights, against a plain
    /// triple loop, with and without activation and residual.
    #[test]
    fn product_matches_a_plain_loop_at_every_level() {
        for level in Level::supported() {
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
                (13, 33, 65),
            ]
            .iter()
            .enumerate()
            {
                let a = values(rows * k, i as u64);
                let w = values(k * n, 100 + i as u64);
                let bias = values(n, 200 + i as u64);
                let residual = values(rows * n, 300 + i as u64);
                let packed = Weights::<f32>::pack(level, &w, &bias, k, n);
                let transposed: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
                let from_transposed = Weights::<f32>::pack_transposed(level, &transposed, &bias, k, n);
                assert_eq!(packed.panels, from_transposed.panels, "{level} {rows}x{k}x{n}");
                let narrow = Weights::<bf16>::pack(level, &w, &bias, k, n);
                for (activation, with_residual) in [(Activation::Relu6, false), (Activation::Identity, true)]
                {
                    let residual = with_residual.then_some(&residual[..]);
                    let check = |got: &[f32], weight: &dyn Fn(usize, usize) -> f32, what: &str| {
                        for r in 0..rows {
                            for c in 0..n {
                                let sum: f32 =
                                    (0..k).map(|j| a[r * k + j] * weight(j, c)).sum::<f32>() + bias[c];
                                let want = activation.apply(sum) + residual.map_or(0.0, |res| res[r * n + c]);
                                let diff = (got[r * n + c] - want).abs();
                                assert!(
                                    diff <= 1e-4 * (1.0 + want.abs()),
                                    "{level} {what} {rows}x{k}x{n} {activation:?} row {r} column {c}: {} vs {want}",
                                    got[r * n + c]
                                );
                            }
                        }
                    };
                    check(
                        &product(&a, rows, &packed, activation, residual),
                        &|j, c| w[j * n + c],
                        "f32",
                    );
                    check(
                        &product(&a, rows, &narrow, activation, residual),
                        &|j, c| narrow.get(j, c),
                        "bf16",
                    );
                }
            }
        }
    }
}
