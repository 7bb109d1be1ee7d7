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
/// Rows per task's chunk when the weights are packed as the product goes ([`RowMajor`]): each
/// chunk packs every panel it multiplies, so chunks are as tall as the L2 cache allows (a
/// chunk's activations are at most this many rows of the inputs).
const ROW_MAJOR_CHUNK_ROWS: usize = 256;
/// Weight rows ahead that packing a row-major panel prefetches.
const PACK_AHEAD: usize = 16;
/// Tasks wanted per product, so that two threads share even a 7x7 layer (two each: with
/// eight, batch 8 ran slower, each thread splitting its own image's layers for nothing).
const MIN_TASKS: usize = 4;

/// Element-wise activation fused into a product's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// `min(max(x, 0), 6)`, MobileNetV2's activation.
    Relu6,
    /// GELU in its tanh form, `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))` (GPT-2's
    /// `gelu_new`). In vectors it is computed as `x / (1 + e^(-2u))`, which equals
    /// `0.5 x (1 + tanh u)`: libm's scalar `tanhf` was a visible share of a batched decode step.
    GeluTanh,
}

/// `sqrt(2 / pi)`, GELU's tanh-form scale.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

impl Activation {
    /// The activation of one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::GeluTanh => {
                0.5 * x * (1.0 + (SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
            }
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
                Activation::GeluTanh => {
                    let one = V::splat(1.0);
                    // -2u = -2 sqrt(2 / pi) x (1 + 0.044715 x^2)
                    let inner = V::splat(0.044715).mul(x).mul_add(x, one);
                    let minus_two_u = V::splat(-2.0 * SQRT_TWO_OVER_PI).mul(x).mul(inner);
                    x.div(one.add(minus_two_u.exp()))
                }
            }
        }
    }

    /// The activation of every value of `values`, in place, at `level` (slices in parallel).
    pub fn apply_in_place(self, level: Level, values: &mut [f32]) {
        /// Values per parallel task: a prefill's activations are hundreds of thousands, a
        /// decode step's a few thousand (one task).
        const CHUNK: usize = 1 << 14;
        if self != Activation::Identity {
            values.par_chunks_mut(CHUNK).for_each(|values| {
                dispatch(
                    level,
                    InPlace {
                        activation: self,
                        values,
                    },
                )
            });
        }
    }
}

/// [`Activation::apply_in_place`] on one slice.
struct InPlace<'a> {
    activation: Activation,
    values: &'a mut [f32],
}

impl Kernel for InPlace<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        for chunk in self.values.chunks_mut(V::LANES) {
            // SAFETY: the level's instructions (the trait's contract); `chunk.len()` values.
            unsafe {
                let x = V::load_part(chunk.as_ptr(), chunk.len());
                self.activation
                    .apply_lanes(x)
                    .store_part(chunk.as_mut_ptr(), chunk.len());
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
    /// Whether the type is f32 itself (whose whole AVX-512 tiles have a kernel of their own).
    const IS_F32: bool;
}

impl Weight for f32 {
    const IS_F32: bool = true;

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
    const IS_F32: bool = false;

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
/// two or three vectors of output columns ([`panel_vectors`]): panel `p` holds, for each input
/// `k`, its columns `p * panel..(p + 1) * panel` (zero past `outputs`). bf16 weights packed for
/// [`Level::Avx512Bf16`] hold inputs in pairs instead, each column's two weights side by side
/// (zero past `inputs`), the layout of `vdpbf16ps`, which multiplies pairs.
#[derive(Debug, Clone)]
pub struct Weights<W: Weight = f32> {
    level: Level,
    inputs: usize,
    outputs: usize,
    panel: usize,
    /// Whether inputs are held in pairs ([`Level::Avx512Bf16`], bf16).
    pairs: bool,
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

    /// The zeroed, unpacked shape of a matrix for `level`: panels ready to be filled, backed
    /// by huge pages where the kernel grants them (they are advised before any is written).
    fn empty(level: Level, bias: &[f32], inputs: usize, outputs: usize) -> Self {
        Self::empty_as(level, bias, inputs, outputs, Self::pairs_pay(level))
    }

    /// Whether weights of this type packed for `level` are held in pairs: bf16 at AVX-512
    /// BF16, where the CPU multiplies pairs faster than it widens bf16 for multiply-adds
    /// ([`crate::bf16_pairs_pay`]).
    fn pairs_pay(level: Level) -> bool {
        !W::IS_F32 && level == Level::Avx512Bf16 && crate::bf16_pairs_pay()
    }

    fn empty_as(level: Level, bias: &[f32], inputs: usize, outputs: usize, pairs: bool) -> Self {
        assert_eq!(bias.len(), outputs, "bias is not {outputs} long");
        assert!(
            !pairs || (!W::IS_F32 && level == Level::Avx512Bf16),
            "pairs are bf16 at avx512-bf16"
        );
        let panel = panel_vectors(level.lanes()) * level.lanes();
        let count = outputs.div_ceil(panel);
        let depth = if pairs { 2 * inputs.div_ceil(2) } else { inputs };
        // Advised before the first write: `vec![bf16::default(); n]` writes every element (only
        // std's own types are allocated already zeroed), which would leave small pages.
        let len = count * depth * panel;
        let mut panels: Vec<W> = Vec::with_capacity(len);
        crate::advise_huge_pages(panels.spare_capacity_mut());
        panels.resize(len, W::default());
        let mut padded = vec![0f32; count * panel];
        padded[..outputs].copy_from_slice(bias);
        Self {
            level,
            inputs,
            outputs,
            panel,
            pairs,
            panels,
            bias: padded,
        }
    }

    /// Values per panel.
    fn panel_len(&self) -> usize {
        self.panels.len() / self.outputs.div_ceil(self.panel).max(1)
    }

    /// Where the weight of input `k` for column `j` of a panel lies in the panel.
    #[inline(always)]
    fn offset(&self, k: usize, j: usize) -> usize {
        if self.pairs {
            ((k / 2) * self.panel + j) * 2 + k % 2
        } else {
            k * self.panel + j
        }
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
        Self::from_fn_as(level, bias, inputs, outputs, value, Self::pairs_pay(level))
    }

    fn from_fn_as(
        level: Level,
        bias: &[f32],
        inputs: usize,
        outputs: usize,
        value: impl Fn(usize, usize) -> f32 + Sync,
        pairs: bool,
    ) -> Self {
        let mut weights = Self::empty_as(level, bias, inputs, outputs, pairs);
        let (panel, panel_len) = (weights.panel, weights.panel_len());
        let layout = Self {
            panels: Vec::new(),
            bias: Vec::new(),
            ..weights
        };
        if panel_len > 0 {
            weights
                .panels
                .par_chunks_exact_mut(panel_len)
                .enumerate()
                .for_each(|(p, dst)| {
                    let first = p * panel;
                    for k in 0..inputs {
                        for j in 0..panel.min(outputs - first) {
                            dst[layout.offset(k, j)] = W::from_f32(value(k, first + j));
                        }
                    }
                });
        }
        weights
    }

    /// Packs a row-major (inputs, outputs) matrix and its bias on the calling thread alone,
    /// reading the matrix row after row: for a thread that packs in the background and must
    /// leave the compute pool to the requests.
    pub fn pack_here(level: Level, weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(weight.len(), inputs * outputs, "weight is not {inputs}x{outputs}");
        let mut weights = Self::empty(level, bias, inputs, outputs);
        let (panel, panel_len) = (weights.panel, weights.panel_len());
        for (k, row) in weight.chunks_exact(outputs.max(1)).enumerate() {
            for p in 0..outputs.div_ceil(panel) {
                let first = p * panel;
                for (j, &value) in row[first..outputs.min(first + panel)].iter().enumerate() {
                    let at = p * panel_len + weights.offset(k, j);
                    weights.panels[at] = W::from_f32(value);
                }
            }
        }
        weights
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
        self.panels[p * self.panel_len() + self.offset(input, column)].to_f32()
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
    run_product(a, rows, Source::Packed(w), activation, residual, out);
}

/// A weight matrix (inputs, outputs) stored row-major where it lies (in a mapped file), and its
/// bias: multiplied without being packed at load. Each task of a product packs the panels it
/// multiplies into a buffer of its own first, which costs a copy per panel and task: worth it
/// only for products of many rows, where the panel then serves every row tile of the task.
#[derive(Debug, Clone, Copy)]
pub struct RowMajor<'a, W> {
    pub weight: &'a [W],
    pub bias: &'a [f32],
    pub inputs: usize,
    pub outputs: usize,
}

/// `activation(a @ w + bias) + residual` for `a` (rows, w.inputs) and weights used where they
/// lie, into `out` (rows, w.outputs), at `level`. `w.outputs` must be a whole number of the level's
/// vectors (the tiles then read whole vectors only).
pub fn product_row_major_into<W: Weight>(
    level: Level,
    a: &[f32],
    rows: usize,
    w: RowMajor<'_, W>,
    activation: Activation,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    assert_eq!(
        w.weight.len(),
        w.inputs * w.outputs,
        "weight is not {}x{}",
        w.inputs,
        w.outputs
    );
    assert_eq!(w.bias.len(), w.outputs, "bias is not {} long", w.outputs);
    assert!(
        w.outputs.is_multiple_of(level.lanes()),
        "{} outputs are not whole {level} vectors",
        w.outputs
    );
    run_product(a, rows, Source::RowMajor(level, w), activation, residual, out);
}

/// Where a product's panels come from.
#[derive(Clone, Copy)]
enum Source<'a, W: Weight> {
    Packed(&'a Weights<W>),
    RowMajor(Level, RowMajor<'a, W>),
}

impl<W: Weight> Source<'_, W> {
    fn level(&self) -> Level {
        match self {
            Source::Packed(w) => w.level,
            Source::RowMajor(level, _) => *level,
        }
    }

    fn inputs_outputs(&self) -> (usize, usize) {
        match self {
            Source::Packed(w) => (w.inputs, w.outputs),
            Source::RowMajor(_, w) => (w.inputs, w.outputs),
        }
    }
}

fn run_product<W: Weight>(
    a: &[f32],
    rows: usize,
    source: Source<'_, W>,
    activation: Activation,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    let (k, n) = source.inputs_outputs();
    assert_eq!(a.len(), rows * k, "activations are not {rows}x{k}");
    assert_eq!(out.len(), rows * n, "output is not {rows}x{n}");
    if let Some(residual) = residual {
        assert_eq!(residual.len(), rows * n, "residual is not {rows}x{n}");
    }
    let target = Output(out.as_mut_ptr().cast::<f32>());
    let lanes = source.level().lanes();
    // Tasks are row chunks of whole tiles times groups of panels, each as even as the sizes
    // allow, numbered group-major so that rayon's first split hands each thread half of
    // every row chunk (a 7x7 layer has 49 rows: chunks of 28 and 21, not 48 and 1).
    let tile = tile_rows(lanes);
    let tiles = rows.div_ceil(tile);
    let chunk_rows = match source {
        Source::Packed(_) => TASK_TILES * tile,
        Source::RowMajor(..) => ROW_MAJOR_CHUNK_ROWS,
    };
    let tiles_per_chunk = tiles.div_ceil(rows.div_ceil(chunk_rows).max(1)).max(1);
    let row_chunks = tiles.div_ceil(tiles_per_chunk);
    let panels = n.div_ceil(panel_vectors(lanes) * lanes);
    let panel_groups = MIN_TASKS.div_ceil(row_chunks.max(1)).clamp(1, panels.max(1));
    #[cfg(target_arch = "x86_64")]
    let pairs = match source {
        Source::Packed(w) if w.pairs => Some((w, pairs::activations(a, rows, k))),
        _ => None,
    };
    crate::team::for_each(row_chunks * panel_groups, |task| {
        let (group, chunk) = (task / row_chunks, task % row_chunks);
        let first_row = chunk * tiles_per_chunk * tile;
        let task_rows = first_row..((tiles_per_chunk * tile) + first_row).min(rows);
        let task_panels = group * panels / panel_groups..(group + 1) * panels / panel_groups;
        #[cfg(target_arch = "x86_64")]
        if let Some((w, a16)) = &pairs {
            assert!(w.level.is_supported(), "this CPU has no {} instructions", w.level);
            // SAFETY: the CPU has AVX-512 BF16 (checked above: pairs are packed for that
            // level only); this task writes its own rows and panels of `out`.
            unsafe { pairs::task(a16, w, activation, residual, task_rows, task_panels, target) };
            return;
        }
        dispatch(
            source.level(),
            Task {
                a,
                source,
                activation,
                residual,
                rows: task_rows,
                panels: task_panels,
                out: target,
            },
        );
    });
}

/// One task of a product: some rows times some panels.
struct Task<'a, W: Weight> {
    a: &'a [f32],
    source: Source<'a, W>,
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
            source,
            activation,
            residual,
            rows,
            panels,
            out,
        } = self;
        let (k, n) = source.inputs_outputs();
        let panel = panel_vectors(V::LANES) * V::LANES;
        let tile = tile_rows(V::LANES);
        // A row-major source's panel, packed for this task's row tiles.
        let mut packed = match source {
            Source::Packed(w) => {
                debug_assert_eq!(w.panel, panel, "weights packed for another level");
                Vec::new()
            }
            Source::RowMajor(..) => vec![W::default(); k * panel],
        };
        let mut panels = panels;
        // A lone row (a decode step) over packed weights: four whole panels at a time.
        if let (Source::Packed(w), 1) = (source, rows.len()) {
            let (groups, rest) = row_stream_groups(panels, n / panel);
            for first in groups {
                // SAFETY: the level's instructions; panels `first..first + ROW_STREAMS` are
                // whole, and this task writes their columns of its row.
                unsafe {
                    one_row::<V, W>(
                        w,
                        &a[rows.start * k..][..k],
                        first,
                        activation,
                        residual,
                        rows.start,
                        out,
                    )
                };
            }
            panels = rest;
        }
        for p in panels.clone() {
            let first = p * panel;
            let columns = panel.min(n - first);
            let (weights, bias) = match source {
                Source::Packed(w) => (&w.panels[p * k * panel..][..k * panel], &w.bias[first..][..panel]),
                Source::RowMajor(_, w) => {
                    // Each row's piece of the panel lies in another page, beyond the hardware
                    // prefetchers' reach: rows `PACK_AHEAD` on are asked for in software.
                    for (kk, dst) in packed.chunks_exact_mut(panel).enumerate() {
                        let ahead = w.weight.as_ptr().wrapping_add((kk + PACK_AHEAD) * n + first);
                        for line in (0..columns * size_of::<W>()).step_by(64) {
                            crate::prefetch(ahead.cast::<u8>().wrapping_add(line));
                        }
                        dst[..columns].copy_from_slice(&w.weight[kk * n + first..][..columns]);
                    }
                    (&packed[..], &w.bias[first..first + columns])
                }
            };
            // The next panel of a packed source, a line per step over the first tiles.
            let next = match source {
                Source::Packed(w) if p + 1 < panels.end => {
                    w.panels[(p + 1) * k * panel..].as_ptr().cast::<u8>()
                }
                _ => std::ptr::null(),
            };
            let panel_lines = k * panel * size_of::<W>() / 64;
            for (t, start) in rows.clone().step_by(tile).enumerate() {
                let fetching = !next.is_null() && t * k < panel_lines;
                let tile = Tile {
                    a: a[start * k..].as_ptr(),
                    k,
                    rows: tile.min(rows.end - start),
                    panel: weights.as_ptr(),
                    bias: bias.as_ptr(),
                    epilogue: Epilogue {
                        activation,
                        residual: residual.map(|r| r[start * n + first..].as_ptr()),
                        n,
                        columns,
                    },
                    prefetch: if fetching {
                        next.wrapping_add(t * k * 64)
                    } else {
                        weights.as_ptr().cast()
                    },
                    prefetch_step: if fetching { 64 } else { 0 },
                };
                // SAFETY: the level's instructions (the trait's contract); this tile is rows
                // `start..start + tile.rows`, columns `first..first + columns` of a rows x n
                // output, which no other task writes; its reads lie in `a`, the panel, the
                // bias (whole vectors: a packed bias is padded to the panel, a row-major one
                // has whole vectors of columns) and the residual (sliced above).
                unsafe { tile.compute::<V>(out.0.add(start * n + first)) };
            }
        }
    }
}

/// Whole panels a lone row reads at once: four far-apart streams of weights, which the
/// hardware prefetchers serve faster than one, and four panels' sums to hide the multiply-add
/// latency that a lone row's three sums would wait on.
const ROW_STREAMS: usize = 4;

/// The first panel of each group of [`ROW_STREAMS`] whole panels (the first `whole` of the
/// product) in `panels`, which a lone row reads at once, and the panels left for the tiles.
fn row_stream_groups(
    panels: std::ops::Range<usize>,
    whole: usize,
) -> (impl Iterator<Item = usize>, std::ops::Range<usize>) {
    let groups = panels.end.min(whole).saturating_sub(panels.start) / ROW_STREAMS;
    let rest = panels.start + groups * ROW_STREAMS..panels.end;
    ((0..groups).map(move |g| panels.start + g * ROW_STREAMS), rest)
}

/// Row `row` of the output for activations `x` (its one row) against whole packed panels
/// `first..first + ROW_STREAMS`.
///
/// # Safety
/// The CPU must have `V`'s instructions; `w` must be packed for `V`'s level and the panels
/// whole; no other task may write these columns of the row.
#[inline(always)]
unsafe fn one_row<V: F32x, W: Weight>(
    w: &Weights<W>,
    x: &[f32],
    first: usize,
    activation: Activation,
    residual: Option<&[f32]>,
    row: usize,
    out: Output,
) {
    let (k, n, panel) = (w.inputs, w.outputs, w.panel);
    let nv = panel_vectors(V::LANES);
    let mut acc = [[V::zero(); 3]; ROW_STREAMS];
    // SAFETY: the caller's level; every panel read is within panel `first + s` (k rows of
    // `panel` weights, `nv` vectors each), every bias and output vector within its columns.
    unsafe {
        let mut streams = [w.panels.as_ptr(); ROW_STREAMS];
        for (s, (sums, stream)) in acc.iter_mut().zip(streams.iter_mut()).enumerate() {
            *stream = w.panels.as_ptr().add((first + s) * k * panel);
            for (v, sum) in sums[..nv].iter_mut().enumerate() {
                *sum = V::load(w.bias.as_ptr().add((first + s) * panel + v * V::LANES));
            }
        }
        for (kk, &value) in x.iter().enumerate() {
            let xv = V::splat(value);
            for (sums, stream) in acc.iter_mut().zip(&streams) {
                for (v, sum) in sums[..nv].iter_mut().enumerate() {
                    *sum = xv.mul_add(W::load::<V>(stream.add(kk * panel + v * V::LANES)), *sum);
                }
            }
        }
        for (s, sums) in acc.iter().enumerate() {
            for (v, &sum) in sums[..nv].iter().enumerate() {
                let column = (first + s) * panel + v * V::LANES;
                let mut value = activation.apply_lanes(sum);
                if let Some(residual) = residual {
                    value = value.add(V::load(residual.as_ptr().add(row * n + column)));
                }
                value.store(out.0.add(row * n + column));
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
    /// The panel's bias: whole vectors for the panel's columns.
    bias: *const f32,
    /// How the sums are stored, into the panel's valid columns (all but in the last panel).
    epilogue: Epilogue,
    /// A stretch of the task's next panel that the tile asks the caches for as it goes, one
    /// cache line per step (`prefetch_step` 64 bytes; 0 where the tile has none to fetch):
    /// a packed panel comes from memory once per task, and fetched ahead it arrives while the
    /// current panel computes instead of stalling the next one's first tile.
    prefetch: *const u8,
    prefetch_step: usize,
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
        #[cfg(target_arch = "x86_64")]
        if V::LANES == 16 && self.rows == 8 && self.k > 0 {
            // SAFETY: sixteen lanes are AVX-512's (the only such level), so the CPU has it;
            // the weights are f32 or bf16 as `IS_F32` says; panels are 48 columns wide, zero
            // past the matrix; the rest is the caller's.
            unsafe {
                match (W::IS_F32, self.epilogue.columns) {
                    (true, 33..) => whole_tile::avx512_8x48(self, out),
                    (true, 25..=32) => whole_tile::avx512_8x32(self, out),
                    (true, 17..=24) => whole_tile::avx512_8x24(self, out),
                    (true, _) => whole_tile::avx512_8x16(self, out),
                    (false, 33..) => whole_tile::avx512_8x48_bf16(self, out),
                    (false, 25..=32) => whole_tile::avx512_8x32_bf16(self, out),
                    (false, 17..=24) => whole_tile::avx512_8x24_bf16(self, out),
                    (false, _) => whole_tile::avx512_8x16_bf16(self, out),
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if V::LEVEL == Level::Avx2 && self.rows == 6 && self.epilogue.columns > 8 && self.k > 0 {
            // SAFETY: `V` is AVX2's vector, so the CPU has AVX2 and FMA (the trait's
            // contract); panels are 16 columns wide, zero past the matrix; the rest is the
            // caller's.
            unsafe {
                if W::IS_F32 {
                    whole_tile::avx2_6x16(self, out)
                } else {
                    whole_tile::avx2_6x16_bf16(self, out)
                }
            }
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            if self.epilogue.columns > 2 * V::LANES {
                rows!(3)
            } else if self.epilogue.columns > V::LANES {
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
                crate::prefetch(self.prefetch.wrapping_add(k * self.prefetch_step));
                let mut wv = [V::zero(); NV];
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = W::load::<V>(w.add(v * V::LANES));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = V::splat(*self.a.add(r * self.k + k));
                    for v in 0..NV {
                        row[v] = x.mul_add(wv[v], row[v]);
                    }
                }
                w = w.add(panel_vectors(V::LANES) * V::LANES);
            }
            self.epilogue.store(acc, out);
        }
    }
}

/// How a tile's sums become its output: the activation, the residual added after it (at the
/// tile's first row and column), the output's row length and the columns the tile writes.
/// Every tile kernel, f32 or bf16, generic or in assembly, ends here.
#[derive(Clone, Copy)]
struct Epilogue {
    activation: Activation,
    residual: Option<*const f32>,
    n: usize,
    columns: usize,
}

impl Epilogue {
    /// Activation, residual and store of a tile's sums into `out` (its first row and column).
    /// The activation and the residual's presence are constants of each arm, so that the
    /// stores carry no branch per vector.
    ///
    /// # Safety
    /// The CPU must have `V`'s instructions; the residual must cover `R` rows of the columns,
    /// and `out` their writes.
    #[inline(always)]
    unsafe fn store<V: F32x, const R: usize, const NV: usize>(self, acc: [[V; NV]; R], out: *mut f32) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match (self.activation, self.residual) {
                (Activation::Identity, None) => self.finish(acc, Activation::Identity, None, out),
                (Activation::Relu6, None) => self.finish(acc, Activation::Relu6, None, out),
                (Activation::GeluTanh, None) => self.finish(acc, Activation::GeluTanh, None, out),
                (activation, Some(residual)) => self.finish(acc, activation, Some(residual), out),
            }
        }
    }

    /// The stores of [`Epilogue::store`]: activation, residual, store; whole vectors with
    /// plain stores, a partial one (at the end of the last panel) with a masked one. The sums
    /// come by value: lent by reference, they had an address, and LLVM then kept them in
    /// memory through the loop over the inputs, storing every sum at every step.
    ///
    /// # Safety
    /// As [`Epilogue::store`]'s.
    #[inline(always)]
    unsafe fn finish<V: F32x, const R: usize, const NV: usize>(
        self,
        acc: [[V; NV]; R],
        activation: Activation,
        residual: Option<*const f32>,
        out: *mut f32,
    ) {
        // SAFETY: the caller's contract covers every read and write below.
        unsafe {
            for (r, row) in acc.into_iter().enumerate() {
                for (v, value) in row.into_iter().enumerate() {
                    let at = r * self.n + v * V::LANES;
                    let columns = self.columns.saturating_sub(v * V::LANES).min(V::LANES);
                    let mut value = activation.apply_lanes(value);
                    if columns == V::LANES {
                        if let Some(residual) = residual {
                            value = value.add(V::load(residual.add(at)));
                        }
                        value.store(out.add(at));
                    } else {
                        if let Some(residual) = residual {
                            value = value.add(V::load_part(residual.add(at), columns));
                        }
                        value.store_part(out.add(at), columns);
                    }
                }
            }
        }
    }
}

/// Products over bf16 weights held in input pairs ([`Level::Avx512Bf16`]): `vdpbf16ps` adds
/// two products of bf16 pairs into each f32 lane, so a step covers two inputs at the cost of
/// one multiply-add, and weights need no widening. The activations are rounded to bf16 once
/// per product (to nearest even), which moves a result by about as much as rounding the
/// weights did.
#[cfg(target_arch = "x86_64")]
mod pairs {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use half::bf16;

    use super::{
        panel_vectors, row_stream_groups, tile_rows, Activation, Epilogue, Output, Weight, Weights,
        ROW_STREAMS,
    };
    use crate::Avx512;

    /// `a` (rows, k) as words of two bf16, inputs `2i` (low half) and `2i + 1`, the last
    /// one zero for an odd `k`: (rows, ceil(k / 2)), rows in parallel. (In memory the words
    /// are each row's values in order, as bf16.)
    pub fn activations(a: &[f32], rows: usize, k: usize) -> Vec<u32> {
        use rayon::prelude::*;

        let pairs = k.div_ceil(2);
        let mut words = vec![0u32; rows * pairs];
        if pairs > 0 {
            words
                .par_chunks_exact_mut(pairs)
                .zip(a.par_chunks_exact(k))
                // SAFETY: pairs are packed, and products run over them, at AVX-512 BF16 only.
                .for_each(|(dst, row)| unsafe { round_row(row, dst) });
        }
        words
    }

    /// One row rounded to bf16 (to nearest even), sixteen values an instruction.
    ///
    /// # Safety
    /// The CPU must have AVX-512 BF16; `dst` holds `row.len().div_ceil(2)` words.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512dq,avx512vl")]
    unsafe fn round_row(row: &[f32], dst: &mut [u32]) {
        let vectors = row.len() / 16;
        let out = dst.as_mut_ptr().cast::<u16>();
        // SAFETY: sixteen values are read from and eight words written to whole vectors of
        // the row, which `dst` covers.
        unsafe {
            for i in 0..vectors {
                let narrow = _mm512_cvtneps_pbh(_mm512_loadu_ps(row.as_ptr().add(16 * i)));
                _mm256_storeu_si256(
                    out.add(16 * i).cast(),
                    std::mem::transmute::<__m256bh, __m256i>(narrow),
                );
            }
        }
        for (i, &x) in row.iter().enumerate().skip(16 * vectors) {
            let word = &mut dst[i / 2];
            *word |= u32::from(bf16::from_f32(x).to_bits()) << (16 * (i % 2));
        }
    }

    /// Rows `rows` times panels `panels` of a product over pair-packed weights.
    ///
    /// # Safety
    /// The CPU must have AVX-512 BF16; `w` must hold pairs; no other task may write these rows
    /// and panels of `out`, a (rows, w.outputs) buffer.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512dq,avx512vl,fma")]
    pub unsafe fn task<W: Weight>(
        a16: &[u32],
        w: &Weights<W>,
        activation: Activation,
        residual: Option<&[f32]>,
        rows: Range<usize>,
        panels: Range<usize>,
        out: Output,
    ) {
        let (n, panel) = (w.outputs, w.panel);
        debug_assert_eq!(panel, panel_vectors(16) * 16);
        let pairs = w.inputs.div_ceil(2);
        let panel_len = w.panel_len();
        let mut panels = panels;
        // A lone row (a decode step): four whole panels at a time.
        if rows.len() == 1 {
            let (groups, rest) = row_stream_groups(panels, n / panel);
            let x = &a16[rows.start * pairs..][..pairs];
            for first in groups {
                // SAFETY: the caller's level, rows and panels; these panels are whole.
                unsafe { one_row(x, w, first, activation, residual, rows.start, out) };
            }
            panels = rest;
        }
        for p in panels {
            let first = p * panel;
            let tile = PairTile {
                a: std::ptr::null(),
                pairs,
                rows: 0,
                panel: w.panels[p * panel_len..][..panel_len].as_ptr().cast::<u32>(),
                bias: w.bias[first..][..panel].as_ptr(),
                epilogue: Epilogue {
                    activation,
                    residual: None,
                    n,
                    columns: panel.min(n - first),
                },
            };
            for start in rows.clone().step_by(tile_rows(16)) {
                let tile = PairTile {
                    a: a16[start * pairs..].as_ptr(),
                    rows: tile_rows(16).min(rows.end - start),
                    epilogue: Epilogue {
                        residual: residual.map(|r| r[start * n + first..].as_ptr()),
                        ..tile.epilogue
                    },
                    ..tile
                };
                // SAFETY: the caller's level and rows; the reads lie in the slices above.
                unsafe { tile.compute(out.0.add(start * n + first)) };
            }
        }
    }

    /// Row `row` of the output for its activation pairs `x` against whole pair-packed panels
    /// `first..first + ROW_STREAMS`: four far-apart weight streams, as the f32 product's
    /// `one_row` reads them (one panel at a time is one stream, which the prefetchers serve
    /// more slowly), and four panels' sums, so that twelve chains of `vdpbf16ps` overlap. Each
    /// sum adds its pairs in the order a one-row tile does.
    ///
    /// # Safety
    /// The CPU must have AVX-512 BF16; `w` must hold pairs, these panels whole; no other task
    /// may write these columns of the row.
    #[inline(always)]
    unsafe fn one_row<W: Weight>(
        x: &[u32],
        w: &Weights<W>,
        first: usize,
        activation: Activation,
        residual: Option<&[f32]>,
        row: usize,
        out: Output,
    ) {
        let (n, panel, panel_len) = (w.outputs, w.panel, w.panel_len());
        // SAFETY: the caller's level; every read lies in panel `first + s` (`x.len()` pairs
        // of 48 words), its bias' three vectors, and the residual's and output's columns.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 3]; ROW_STREAMS];
            let mut streams = [std::ptr::null::<u32>(); ROW_STREAMS];
            for (s, (sums, stream)) in acc.iter_mut().zip(&mut streams).enumerate() {
                *stream = w.panels[(first + s) * panel_len..].as_ptr().cast::<u32>();
                for (v, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_loadu_ps(w.bias.as_ptr().add((first + s) * panel + 16 * v));
                }
            }
            for (i, &word) in x.iter().enumerate() {
                let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
                for (sums, stream) in acc.iter_mut().zip(&streams) {
                    for (v, sum) in sums.iter_mut().enumerate() {
                        let weights = _mm512_loadu_si512(stream.add(i * 48 + 16 * v).cast());
                        *sum =
                            _mm512_dpbf16_ps(*sum, pair, std::mem::transmute::<__m512i, __m512bh>(weights));
                    }
                }
            }
            for (s, sums) in acc.into_iter().enumerate() {
                let column = (first + s) * panel;
                let epilogue = Epilogue {
                    activation,
                    residual: residual.map(|r| r[row * n + column..].as_ptr()),
                    n,
                    columns: panel,
                };
                epilogue.store::<Avx512, 1, 3>([sums.map(Avx512)], out.0.add(row * n + column));
            }
        }
    }

    /// Up to 8 rows of bf16 activation pairs times one pair-packed panel.
    #[derive(Clone, Copy)]
    struct PairTile {
        /// The first row's pairs; rows are `pairs` words apart.
        a: *const u32,
        pairs: usize,
        rows: usize,
        /// The panel: per pair of inputs, 48 columns of two bf16 (a word each).
        panel: *const u32,
        bias: *const f32,
        epilogue: Epilogue,
    }

    impl PairTile {
        #[inline(always)]
        unsafe fn compute(&self, out: *mut f32) {
            if self.rows == 8 && self.epilogue.columns == 48 && self.pairs > 0 {
                // SAFETY: forwarded from the caller.
                unsafe { self.whole(out) };
                return;
            }
            macro_rules! rows {
                ($v:literal) => {
                    match self.rows {
                        8 => self.of::<8, $v>(out),
                        7 => self.of::<7, $v>(out),
                        6 => self.of::<6, $v>(out),
                        5 => self.of::<5, $v>(out),
                        4 => self.of::<4, $v>(out),
                        3 => self.of::<3, $v>(out),
                        2 => self.of::<2, $v>(out),
                        _ => self.of::<1, $v>(out),
                    }
                };
            }
            // SAFETY: forwarded from the caller.
            unsafe {
                if self.epilogue.columns > 32 {
                    rows!(3)
                } else if self.epilogue.columns > 16 {
                    rows!(2)
                } else {
                    rows!(1)
                }
            }
        }

        /// The whole tile, 8 rows by 48 columns, its step in assembly as the f32 tile's
        /// (`whole_tile`): three weight loads, eight broadcast pairs, 24 `vdpbf16ps`.
        #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512dq,avx512vl,fma")]
        unsafe fn whole(&self, out: *mut f32) {
            // SAFETY: the caller's level and contract: the assembly reads 8 rows of `pairs`
            // words and `pairs` rows of 48 words of the panel, and writes only the named
            // registers; the epilogue writes the tile's 8 rows of 48 values.
            unsafe {
                let mut acc = [_mm512_setzero_ps(); 24];
                for v in 0..3 {
                    let bias = _mm512_loadu_ps(self.bias.add(16 * v));
                    for r in 0..8 {
                        acc[3 * r + v] = bias;
                    }
                }
                let lda = self.pairs * 4;
                let [mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7, mut a8, mut a9, mut a10, mut a11, mut a12, mut a13, mut a14, mut a15, mut a16, mut a17, mut a18, mut a19, mut a20, mut a21, mut a22, mut a23] =
                    acc;
                std::arch::asm!(
                    "2:",
                    "vmovups zmm24, [{w}]",
                    "vmovups zmm25, [{w} + 64]",
                    "vmovups zmm26, [{w} + 128]",
                    "vpbroadcastd zmm27, dword ptr [{a}]",
                    "vdpbf16ps {a0}, zmm24, zmm27",
                    "vdpbf16ps {a1}, zmm25, zmm27",
                    "vdpbf16ps {a2}, zmm26, zmm27",
                    "vpbroadcastd zmm28, dword ptr [{a} + {lda}]",
                    "vdpbf16ps {a3}, zmm24, zmm28",
                    "vdpbf16ps {a4}, zmm25, zmm28",
                    "vdpbf16ps {a5}, zmm26, zmm28",
                    "vpbroadcastd zmm29, dword ptr [{a} + {lda} * 2]",
                    "vdpbf16ps {a6}, zmm24, zmm29",
                    "vdpbf16ps {a7}, zmm25, zmm29",
                    "vdpbf16ps {a8}, zmm26, zmm29",
                    "vpbroadcastd zmm30, dword ptr [{a} + {lda3}]",
                    "vdpbf16ps {a9}, zmm24, zmm30",
                    "vdpbf16ps {a10}, zmm25, zmm30",
                    "vdpbf16ps {a11}, zmm26, zmm30",
                    "vpbroadcastd zmm31, dword ptr [{b}]",
                    "vdpbf16ps {a12}, zmm24, zmm31",
                    "vdpbf16ps {a13}, zmm25, zmm31",
                    "vdpbf16ps {a14}, zmm26, zmm31",
                    "vpbroadcastd zmm27, dword ptr [{b} + {lda}]",
                    "vdpbf16ps {a15}, zmm24, zmm27",
                    "vdpbf16ps {a16}, zmm25, zmm27",
                    "vdpbf16ps {a17}, zmm26, zmm27",
                    "vpbroadcastd zmm28, dword ptr [{b} + {lda} * 2]",
                    "vdpbf16ps {a18}, zmm24, zmm28",
                    "vdpbf16ps {a19}, zmm25, zmm28",
                    "vdpbf16ps {a20}, zmm26, zmm28",
                    "vpbroadcastd zmm29, dword ptr [{b} + {lda3}]",
                    "vdpbf16ps {a21}, zmm24, zmm29",
                    "vdpbf16ps {a22}, zmm25, zmm29",
                    "vdpbf16ps {a23}, zmm26, zmm29",
                    "add {a}, 4",
                    "add {b}, 4",
                    "add {w}, 192",
                    "dec {k}",
                    "jnz 2b",
                    a = inout(reg) self.a => _,
                    b = inout(reg) self.a.add(4 * self.pairs) => _,
                    lda = in(reg) lda,
                    lda3 = in(reg) 3 * lda,
                    w = inout(reg) self.panel => _,
                    k = inout(reg) self.pairs => _,
                    a0 = inout(zmm_reg) a0, a1 = inout(zmm_reg) a1, a2 = inout(zmm_reg) a2,
                    a3 = inout(zmm_reg) a3, a4 = inout(zmm_reg) a4, a5 = inout(zmm_reg) a5,
                    a6 = inout(zmm_reg) a6, a7 = inout(zmm_reg) a7, a8 = inout(zmm_reg) a8,
                    a9 = inout(zmm_reg) a9, a10 = inout(zmm_reg) a10, a11 = inout(zmm_reg) a11,
                    a12 = inout(zmm_reg) a12, a13 = inout(zmm_reg) a13, a14 = inout(zmm_reg) a14,
                    a15 = inout(zmm_reg) a15, a16 = inout(zmm_reg) a16, a17 = inout(zmm_reg) a17,
                    a18 = inout(zmm_reg) a18, a19 = inout(zmm_reg) a19, a20 = inout(zmm_reg) a20,
                    a21 = inout(zmm_reg) a21, a22 = inout(zmm_reg) a22, a23 = inout(zmm_reg) a23,
                    out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                    out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
                    options(nostack, readonly),
                );
                let sums = [
                    [a0, a1, a2],
                    [a3, a4, a5],
                    [a6, a7, a8],
                    [a9, a10, a11],
                    [a12, a13, a14],
                    [a15, a16, a17],
                    [a18, a19, a20],
                    [a21, a22, a23],
                ];
                self.epilogue
                    .store::<Avx512, 8, 3>(sums.map(|row| row.map(Avx512)), out);
            }
        }

        #[inline(always)]
        unsafe fn of<const R: usize, const NV: usize>(&self, out: *mut f32) {
            // SAFETY: the caller's level; reads of `R` rows of `pairs` words, `pairs` rows of
            // the panel's `NV` vectors, the bias' `NV` vectors, and the residual's and
            // output's `columns` per row.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); NV]; R];
                for v in 0..NV {
                    let bias = _mm512_loadu_ps(self.bias.add(16 * v));
                    for row in acc.iter_mut() {
                        row[v] = bias;
                    }
                }
                let mut w = self.panel;
                for i in 0..self.pairs {
                    let mut wv = [_mm512_setzero_si512(); NV];
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_loadu_si512(w.add(16 * v).cast());
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        let x: __m512bh =
                            std::mem::transmute(_mm512_set1_epi32(*self.a.add(r * self.pairs + i) as i32));
                        for v in 0..NV {
                            row[v] =
                                _mm512_dpbf16_ps(row[v], x, std::mem::transmute::<__m512i, __m512bh>(wv[v]));
                        }
                    }
                    w = w.add(48);
                }
                self.epilogue.store(acc.map(|row| row.map(Avx512)), out);
            }
        }
    }
}

/// The whole tiles that nearly every tile of a large product is, with their step written out
/// in assembly: AVX-512's 8 rows of one, two or three vectors of columns, and AVX2's 6 rows of
/// two. Compiled from the generic tile, the rows' activation addresses took integer
/// instructions on the ports the multiply-adds use (AVX-512), or registers that the sums
/// needed (AVX2), and the tile ran well below the multiply-add rate. Here the rows are
/// addressed from two pointers and a stride, so a step of the 48-column tile is three weight
/// loads, eight broadcasts and 24 multiply-adds, and the loop costs four integer instructions.
#[cfg(target_arch = "x86_64")]
mod whole_tile {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use super::{Tile, Weight};
    use crate::{Avx2, Avx512};

    /// The operand modifier that names a register's `ymm` half (`y`), or none (`z`).
    macro_rules! half {
        (z) => {
            ""
        };
        (y) => {
            ":y"
        };
    }

    /// One 8-row tile in assembly: `load` fills the weight registers (`zmm24`.. for the
    /// `vectors` named in `weights`) from `[{w}]`, `weight_row_bytes` steps `{w}` to the next
    /// input, and `rows` names each row's sums, one per weight register. The eight rows are
    /// addressed from `{a}` (rows 0-3) and `{b}` (rows 4-7) with the stride `{lda}`, and
    /// their broadcasts rotate through `zmm27`-`zmm31`. A weight register named as `ymm`
    /// (`weights: [.., "ymm25" y]`) is a half vector: its sums' multiply-adds take the `ymm`
    /// halves of their registers (which zeroes the upper ones), at half the cost of whole
    /// ones on a CPU that splits 512-bit operations in two.
    macro_rules! tile_8_rows {
        (
            $(#[$attr:meta])*
            $name:ident,
            load: [$($load:literal),+ $(,)?],
            weights: [$($w:literal $x:ident),+],
            weight_row_bytes: $step:literal,
            rows: [$($r0:ident),+] [$($r1:ident),+] [$($r2:ident),+] [$($r3:ident),+]
                  [$($r4:ident),+] [$($r5:ident),+] [$($r6:ident),+] [$($r7:ident),+] $(,)?
        ) => {
            $(#[$attr])*
            ///
            /// # Safety
            /// The CPU must have AVX-512 F; `tile.k > 0`, 8 rows, panels 48 columns wide
            /// (zero-padded) of the weight type the loads read; `tile`'s pointers must cover
            /// its reads and `out` its writes (8 rows `tile.epilogue.n` apart, `tile.epilogue.columns` each).
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
            pub unsafe fn $name<W: Weight>(tile: &Tile<W>, out: *mut f32) {
                const VECTORS: usize = [$($w),+].len();
                // SAFETY: the caller's contract covers every access; the assembly reads the 8
                // rows of `k` activations and `k` rows of the panel's first columns, and
                // writes only the named registers.
                unsafe {
                    let mut acc = [_mm512_setzero_ps(); 8 * VECTORS];
                    for row in acc.chunks_exact_mut(VECTORS) {
                        for (v, sum) in row.iter_mut().enumerate() {
                            *sum = _mm512_loadu_ps(tile.bias.add(16 * v));
                        }
                    }
                    let lda = tile.k * 4;
                    let [$(mut $r0,)+ $(mut $r1,)+ $(mut $r2,)+ $(mut $r3,)+
                         $(mut $r4,)+ $(mut $r5,)+ $(mut $r6,)+ $(mut $r7,)+] = acc;
                    asm!(
                        "2:",
                        "prefetcht1 [{pf}]",
                        "add {pf}, {pfs}",
                        $($load,)+
                        "vbroadcastss zmm27, dword ptr [{a}]",
                        $(concat!("vfmadd231ps {", stringify!($r0), half!($x), "}, ", $w, ", ", stringify!($x), "mm27"),)+
                        "vbroadcastss zmm28, dword ptr [{a} + {lda}]",
                        $(concat!("vfmadd231ps {", stringify!($r1), half!($x), "}, ", $w, ", ", stringify!($x), "mm28"),)+
                        "vbroadcastss zmm29, dword ptr [{a} + {lda} * 2]",
                        $(concat!("vfmadd231ps {", stringify!($r2), half!($x), "}, ", $w, ", ", stringify!($x), "mm29"),)+
                        "vbroadcastss zmm30, dword ptr [{a} + {lda3}]",
                        $(concat!("vfmadd231ps {", stringify!($r3), half!($x), "}, ", $w, ", ", stringify!($x), "mm30"),)+
                        "vbroadcastss zmm31, dword ptr [{b}]",
                        $(concat!("vfmadd231ps {", stringify!($r4), half!($x), "}, ", $w, ", ", stringify!($x), "mm31"),)+
                        "vbroadcastss zmm27, dword ptr [{b} + {lda}]",
                        $(concat!("vfmadd231ps {", stringify!($r5), half!($x), "}, ", $w, ", ", stringify!($x), "mm27"),)+
                        "vbroadcastss zmm28, dword ptr [{b} + {lda} * 2]",
                        $(concat!("vfmadd231ps {", stringify!($r6), half!($x), "}, ", $w, ", ", stringify!($x), "mm28"),)+
                        "vbroadcastss zmm29, dword ptr [{b} + {lda3}]",
                        $(concat!("vfmadd231ps {", stringify!($r7), half!($x), "}, ", $w, ", ", stringify!($x), "mm29"),)+
                        "add {a}, 4",
                        "add {b}, 4",
                        concat!("add {w}, ", $step),
                        "dec {k}",
                        "jnz 2b",
                        a = inout(reg) tile.a => _,
                        b = inout(reg) tile.a.add(4 * tile.k) => _,
                        lda = in(reg) lda,
                        lda3 = in(reg) 3 * lda,
                        w = inout(reg) tile.panel.cast::<u8>() => _,
                        k = inout(reg) tile.k => _,
                        pf = inout(reg) tile.prefetch => _,
                        pfs = in(reg) tile.prefetch_step,
                        $($r0 = inout(zmm_reg) $r0,)+ $($r1 = inout(zmm_reg) $r1,)+
                        $($r2 = inout(zmm_reg) $r2,)+ $($r3 = inout(zmm_reg) $r3,)+
                        $($r4 = inout(zmm_reg) $r4,)+ $($r5 = inout(zmm_reg) $r5,)+
                        $($r6 = inout(zmm_reg) $r6,)+ $($r7 = inout(zmm_reg) $r7,)+
                        out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                        out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
                        options(nostack, readonly),
                    );
                    let sums = [
                        [$(Avx512($r0)),+], [$(Avx512($r1)),+], [$(Avx512($r2)),+], [$(Avx512($r3)),+],
                        [$(Avx512($r4)),+], [$(Avx512($r5)),+], [$(Avx512($r6)),+], [$(Avx512($r7)),+],
                    ];
                    tile.epilogue.store::<Avx512, 8, VECTORS>(sums, out);
                }
            }
        };
    }

    /// One 6-row AVX2 tile of two vectors (16 columns) in assembly: `load` fills `ymm12` and
    /// `ymm13` from `[{w}]`, `weight_row_bytes` steps `{w}` to the next input. The rows are
    /// addressed from `{a}` (rows 0-2) and `{b}` (rows 3-5) with the stride `{lda}`, their
    /// broadcasts alternate between `ymm14` and `ymm15`, and the twelve sums take the other
    /// twelve registers. Compiled from the generic tile, the loop's address arithmetic and
    /// its epilogue competed for the sixteen registers: an epilogue that needed a few more
    /// left the row stride to be reloaded from the stack six times per step.
    macro_rules! tile_6_rows {
        ($(#[$attr:meta])* $name:ident, load: [$($load:literal),+ $(,)?], weight_row_bytes: $step:literal $(,)?) => {
            $(#[$attr])*
            ///
            /// # Safety
            /// The CPU must have AVX2 and FMA; `tile.k > 0`, 6 rows, panels 16 columns wide
            /// (zero-padded) of the weight type the loads read; `tile`'s pointers must cover
            /// its reads and `out` its writes (6 rows `tile.epilogue.n` apart, `tile.epilogue.columns` each).
            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn $name<W: Weight>(tile: &Tile<W>, out: *mut f32) {
                // SAFETY: the caller's contract covers every access; the assembly reads the 6
                // rows of `k` activations and `k` rows of the panel, and writes only the named
                // registers.
                unsafe {
                    let (low, high) = (_mm256_loadu_ps(tile.bias), _mm256_loadu_ps(tile.bias.add(8)));
                    let [mut s0, mut s2, mut s4, mut s6, mut s8, mut s10] = [low; 6];
                    let [mut s1, mut s3, mut s5, mut s7, mut s9, mut s11] = [high; 6];
                    let lda = tile.k * 4;
                    asm!(
                        "2:",
                        "prefetcht0 [{pf}]",
                        "add {pf}, {pfs}",
                        $($load,)+
                        "vbroadcastss ymm14, dword ptr [{a}]",
                        "vfmadd231ps {s0}, ymm12, ymm14",
                        "vfmadd231ps {s1}, ymm13, ymm14",
                        "vbroadcastss ymm15, dword ptr [{a} + {lda}]",
                        "vfmadd231ps {s2}, ymm12, ymm15",
                        "vfmadd231ps {s3}, ymm13, ymm15",
                        "vbroadcastss ymm14, dword ptr [{a} + {lda} * 2]",
                        "vfmadd231ps {s4}, ymm12, ymm14",
                        "vfmadd231ps {s5}, ymm13, ymm14",
                        "vbroadcastss ymm15, dword ptr [{b}]",
                        "vfmadd231ps {s6}, ymm12, ymm15",
                        "vfmadd231ps {s7}, ymm13, ymm15",
                        "vbroadcastss ymm14, dword ptr [{b} + {lda}]",
                        "vfmadd231ps {s8}, ymm12, ymm14",
                        "vfmadd231ps {s9}, ymm13, ymm14",
                        "vbroadcastss ymm15, dword ptr [{b} + {lda} * 2]",
                        "vfmadd231ps {s10}, ymm12, ymm15",
                        "vfmadd231ps {s11}, ymm13, ymm15",
                        "add {a}, 4",
                        "add {b}, 4",
                        concat!("add {w}, ", $step),
                        "dec {k}",
                        "jnz 2b",
                        a = inout(reg) tile.a => _,
                        b = inout(reg) tile.a.add(3 * tile.k) => _,
                        lda = in(reg) lda,
                        w = inout(reg) tile.panel.cast::<u8>() => _,
                        k = inout(reg) tile.k => _,
                        pf = inout(reg) tile.prefetch => _,
                        pfs = in(reg) tile.prefetch_step,
                        s0 = inout(ymm_reg) s0, s1 = inout(ymm_reg) s1, s2 = inout(ymm_reg) s2,
                        s3 = inout(ymm_reg) s3, s4 = inout(ymm_reg) s4, s5 = inout(ymm_reg) s5,
                        s6 = inout(ymm_reg) s6, s7 = inout(ymm_reg) s7, s8 = inout(ymm_reg) s8,
                        s9 = inout(ymm_reg) s9, s10 = inout(ymm_reg) s10, s11 = inout(ymm_reg) s11,
                        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                        options(nostack, readonly),
                    );
                    let sums = [
                        [Avx2(s0), Avx2(s1)],
                        [Avx2(s2), Avx2(s3)],
                        [Avx2(s4), Avx2(s5)],
                        [Avx2(s6), Avx2(s7)],
                        [Avx2(s8), Avx2(s9)],
                        [Avx2(s10), Avx2(s11)],
                    ];
                    tile.epilogue.store::<Avx2, 6, 2>(sums, out);
                }
            }
        };
    }

    tile_6_rows! {
        /// The 6-row AVX2 tile of 2 vectors (16 columns, the last partial where the panel ends), f32 weights.
        avx2_6x16,
        load: ["vmovups ymm12, [{w}]", "vmovups ymm13, [{w} + 32]"],
        weight_row_bytes: "64",
    }

    tile_6_rows! {
        /// The 6-row AVX2 tile of 2 vectors, bf16 weights (widened as they are loaded).
        avx2_6x16_bf16,
        load: [
            "vpmovzxwd ymm12, [{w}]", "vpslld ymm12, ymm12, 16",
            "vpmovzxwd ymm13, [{w} + 16]", "vpslld ymm13, ymm13, 16",
        ],
        weight_row_bytes: "32",
    }

    tile_8_rows! {
        /// The 8-row tile of 1 vector (16 columns, the last partial where the panel ends), f32 weights.
        avx512_8x16,
        load: ["vmovups zmm24, [{w}]"],
        weights: ["zmm24" z],
        weight_row_bytes: "192",
        rows: [a0] [a1] [a2] [a3] [a4] [a5] [a6] [a7],
    }

    tile_8_rows! {
        /// The 8-row tile of 2 vectors (32 columns, the last partial where the panel ends), f32 weights.
        avx512_8x32,
        load: ["vmovups zmm24, [{w}]", "vmovups zmm25, [{w} + 64]"],
        weights: ["zmm24" z, "zmm25" z],
        weight_row_bytes: "192",
        rows: [a0, a1] [a2, a3] [a4, a5] [a6, a7] [a8, a9] [a10, a11] [a12, a13] [a14, a15],
    }

    tile_8_rows! {
        /// The 8-row tile of a vector and a half (24 columns, the last partial where the panel
        /// ends), f32 weights: 24 of a 32-column tile's multiply-adds.
        avx512_8x24,
        load: ["vmovups zmm24, [{w}]", "vmovups ymm25, [{w} + 64]"],
        weights: ["zmm24" z, "ymm25" y],
        weight_row_bytes: "192",
        rows: [a0, a1] [a2, a3] [a4, a5] [a6, a7] [a8, a9] [a10, a11] [a12, a13] [a14, a15],
    }

    tile_8_rows! {
        /// The 8-row tile of 3 vectors (48 columns, the last partial where the panel ends), f32 weights.
        avx512_8x48,
        load: ["vmovups zmm24, [{w}]", "vmovups zmm25, [{w} + 64]", "vmovups zmm26, [{w} + 128]"],
        weights: ["zmm24" z, "zmm25" z, "zmm26" z],
        weight_row_bytes: "192",
        rows: [a0, a1, a2] [a3, a4, a5] [a6, a7, a8] [a9, a10, a11]
              [a12, a13, a14] [a15, a16, a17] [a18, a19, a20] [a21, a22, a23],
    }

    tile_8_rows! {
        /// The 8-row tile of 1 vector, bf16 weights (widened as they are loaded: zero-extended
        /// to 32 bits and shifted into the high half, which is the f32 of the same value).
        avx512_8x16_bf16,
        load: ["vpmovzxwd zmm24, [{w}]", "vpslld zmm24, zmm24, 16"],
        weights: ["zmm24" z],
        weight_row_bytes: "96",
        rows: [a0] [a1] [a2] [a3] [a4] [a5] [a6] [a7],
    }

    tile_8_rows! {
        /// The 8-row tile of 2 vectors, bf16 weights (widened as they are loaded).
        avx512_8x32_bf16,
        load: [
            "vpmovzxwd zmm24, [{w}]", "vpslld zmm24, zmm24, 16",
            "vpmovzxwd zmm25, [{w} + 32]", "vpslld zmm25, zmm25, 16",
        ],
        weights: ["zmm24" z, "zmm25" z],
        weight_row_bytes: "96",
        rows: [a0, a1] [a2, a3] [a4, a5] [a6, a7] [a8, a9] [a10, a11] [a12, a13] [a14, a15],
    }

    tile_8_rows! {
        /// The 8-row tile of a vector and a half, bf16 weights (widened as they are loaded).
        avx512_8x24_bf16,
        load: [
            "vpmovzxwd zmm24, [{w}]", "vpslld zmm24, zmm24, 16",
            "vpmovzxwd ymm25, [{w} + 32]", "vpslld ymm25, ymm25, 16",
        ],
        weights: ["zmm24" z, "ymm25" y],
        weight_row_bytes: "96",
        rows: [a0, a1] [a2, a3] [a4, a5] [a6, a7] [a8, a9] [a10, a11] [a12, a13] [a14, a15],
    }

    tile_8_rows! {
        /// The 8-row tile of 3 vectors, bf16 weights (widened as they are loaded).
        avx512_8x48_bf16,
        load: [
            "vpmovzxwd zmm24, [{w}]", "vpslld zmm24, zmm24, 16",
            "vpmovzxwd zmm25, [{w} + 32]", "vpslld zmm25, zmm25, 16",
            "vpmovzxwd zmm26, [{w} + 64]", "vpslld zmm26, zmm26, 16",
        ],
        weights: ["zmm24" z, "zmm25" z, "zmm26" z],
        weight_row_bytes: "96",
        rows: [a0, a1, a2] [a3, a4, a5] [a6, a7, a8] [a9, a10, a11]
              [a12, a13, a14] [a15, a16, a17] [a18, a19, a20] [a21, a22, a23],
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
                // A lone row over groups of whole panels and the rest.
                (1, 37, 480),
                (1, 37, 960),
                (1, 64, 1000),
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
                // The pair layout whether or not this CPU's calibration picks it.
                let paired = (level == Level::Avx512Bf16)
                    .then(|| Weights::<bf16>::from_fn_as(level, &bias, k, n, |j, c| w[j * n + c], true));
                let here = Weights::<f32>::pack_here(level, &w, &bias, k, n);
                assert_eq!(packed.panels, here.panels, "{level} {rows}x{k}x{n}");
                let narrow_here = Weights::<bf16>::pack_here(level, &w, &bias, k, n);
                assert_eq!(narrow.panels, narrow_here.panels, "{level} bf16 {rows}x{k}x{n}");
                for (activation, with_residual) in [
                    (Activation::Relu6, false),
                    (Activation::Identity, true),
                    (Activation::GeluTanh, true),
                ] {
                    let residual = with_residual.then_some(&residual[..]);
                    // Pair-packed bf16 weights (AVX-512 BF16) multiply bf16-rounded activations.
                    let rounded: Vec<f32> = a.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
                    let check = |got: &[f32], weight: &dyn Fn(usize, usize) -> f32, what: &str| {
                        let a = if what == "bf16 pairs" || (what == "bf16" && narrow.pairs) {
                            &rounded
                        } else {
                            &a
                        };
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
                    if let Some(paired) = &paired {
                        check(
                            &product(&a, rows, paired, activation, residual),
                            &|j, c| paired.get(j, c),
                            "bf16 pairs",
                        );
                    }
                    check(
                        &product(&a, rows, &narrow, activation, residual),
                        &|j, c| narrow.get(j, c),
                        "bf16",
                    );
                }
            }
        }
    }

    /// Weights read where they lie, at every level, for row counts below, at and past a task's
    /// chunk and outputs of one and several panels: the plain loop's values.
    #[test]
    fn row_major_products_match_a_plain_loop_at_every_level() {
        for level in Level::supported() {
            for (i, &(rows, k, n)) in [(1, 5, 16), (9, 37, 48), (40, 64, 96), (200, 20, 32), (17, 8, 112)]
                .iter()
                .enumerate()
            {
                let a = values(rows * k, 400 + i as u64);
                let w = values(k * n, 500 + i as u64);
                let bias = values(n, 600 + i as u64);
                let mut got = vec![MaybeUninit::uninit(); rows * n];
                let matrix = RowMajor {
                    weight: &w[..],
                    bias: &bias,
                    inputs: k,
                    outputs: n,
                };
                product_row_major_into(level, &a, rows, matrix, Activation::Relu6, None, &mut got);
                for r in 0..rows {
                    for c in 0..n {
                        // SAFETY: the product wrote every value.
                        let got = unsafe { got[r * n + c].assume_init() };
                        let sum: f32 = (0..k).map(|j| a[r * k + j] * w[j * n + c]).sum::<f32>() + bias[c];
                        let want = Activation::Relu6.apply(sum);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{level} {rows}x{k}x{n} row {r} column {c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// GELU's tanh form across the range activations take and far past it, at every level
    /// this CPU has, in place and for lengths that leave a partial vector: within a few parts
    /// in 10^7 of the formula.
    #[test]
    fn gelu_matches_the_formula_at_every_level() {
        let x: Vec<f32> = (0..40_003).map(|i| (i as f32 - 20_000.0) / 1000.0).collect();
        for level in Level::supported() {
            let mut got = x.clone();
            Activation::GeluTanh.apply_in_place(level, &mut got);
            for (&x, &got) in x.iter().zip(&got) {
                let want = Activation::GeluTanh.apply(x);
                assert!(
                    (got - want).abs() <= 4e-7 * x.abs().max(1.0),
                    "{level}: gelu({x}) = {got}, formula {want}"
                );
            }
        }
    }
}
