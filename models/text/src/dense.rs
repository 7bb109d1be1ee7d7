//! GPT-2's large weights in the forms their products read, and the products as candle ops.
//!
//! f32 weights start where they lie in the memory-mapped `model.safetensors`, in Hugging
//! Face's `Conv1D` layout (inputs, outputs): nothing is copied at start, so a cold start pays
//! for mapping the file, not for reading 500 MB into fresh memory. From there a product of a
//! few rows (a decode step) streams them with each thread summing its own block of input rows
//! ([`crate::matvec`]); a product of many rows (a prompt, a batch of passages) runs as the GEMM
//! of [`simd::gemm`], which packs each panel of the weights as it goes. [`Dense::pack`]
//! (called by a background thread once the service is up) packs them for good into the GEMM's
//! panels in huge-page memory, which every product then reads contiguously: the page cache's
//! small pages stop the hardware prefetchers at every 4 KiB. bf16 weights are converted at
//! load anyway, so they are packed then.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Tensor};
use half::bf16;
use hub::F32Values;
use rayon::prelude::*;
use simd::gemm::{self, Activation, RowMajor, Weights};
use simd::Level;

use crate::matvec;

/// Rows above which a product of mapped f32 weights runs as the GEMM rather than as a
/// stream of the weights into each thread's partial sums.
const STREAMED_ROWS: usize = 8;

/// A dense layer's weight (inputs, outputs).
#[derive(Debug)]
enum DenseWeight {
    /// f32, row-major where the file holds it, until packed.
    F32 {
        mapped: F32Values,
        packed: OnceLock<Weights<f32>>,
    },
    /// bf16 packed into the GEMM's panels at load, with the bias.
    Bf16(Weights<bf16>),
}

/// A dense layer: `x @ weight + bias`.
#[derive(Debug)]
pub(crate) struct Dense {
    weight: DenseWeight,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    /// f32 weights (inputs, outputs), used where they lie.
    pub fn f32(weight: F32Values, bias: Vec<f32>) -> Self {
        let (inputs, outputs) = (weight.shape()[0], weight.shape()[1]);
        Self {
            weight: DenseWeight::F32 {
                mapped: weight,
                packed: OnceLock::new(),
            },
            bias,
            inputs,
            outputs,
        }
    }

    /// Packs f32 weights into the GEMM's panels for `level`, on the calling thread; products
    /// use the packed weights from then on. Does nothing for weights already packed.
    pub fn pack(&self, level: Level) {
        if let DenseWeight::F32 { mapped, packed } = &self.weight {
            packed.get_or_init(|| Weights::pack_here(level, mapped, &self.bias, self.inputs, self.outputs));
            mapped.release_pages();
        }
    }

    /// Weights (inputs, outputs) rounded to bf16 and packed for `level`.
    pub fn bf16(level: Level, weight: &[f32], bias: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        Self {
            weight: DenseWeight::Bf16(Weights::pack(level, weight, &bias, inputs, outputs)),
            bias,
            inputs,
            outputs,
        }
    }

    /// `activation(x @ weight + bias) + residual` for `x` (rows, inputs), at `level`: the
    /// activation and the residual are applied in the product's epilogue where it has one.
    pub fn forward(
        &self,
        level: Level,
        x: &Tensor,
        activation: Activation,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let op = DenseOp {
            dense: self,
            level,
            activation,
        };
        let x = x.contiguous()?;
        match residual {
            Some(residual) => x.apply_op2_no_bwd(&residual.contiguous()?, &op),
            None => x.apply_op1_no_bwd(&op),
        }
    }

    fn product(
        &self,
        level: Level,
        x: &[f32],
        rows: usize,
        activation: Activation,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        if let DenseWeight::F32 { packed, .. } = &self.weight {
            if let Some(w) = packed.get().filter(|w| w.level() == level) {
                return gemm::product(x, rows, w, activation, residual);
            }
        }
        match &self.weight {
            DenseWeight::F32 { mapped: w, .. }
                if rows <= STREAMED_ROWS || !self.outputs.is_multiple_of(level.lanes()) =>
            {
                let mut y = matvec::rows_times_matrix(level, x, w, &self.bias, rows, self.inputs);
                activation.apply_in_place(level, &mut y);
                if let Some(residual) = residual {
                    y.iter_mut().zip(residual).for_each(|(y, r)| *y += r);
                }
                y
            }
            DenseWeight::F32 { mapped: w, .. } => {
                let mut out = Vec::with_capacity(rows * self.outputs);
                let matrix = RowMajor {
                    weight: &w[..],
                    bias: &self.bias,
                    inputs: self.inputs,
                    outputs: self.outputs,
                };
                let spare = &mut out.spare_capacity_mut()[..rows * self.outputs];
                gemm::product_row_major_into(level, x, rows, matrix, activation, residual, spare);
                // SAFETY: the product wrote every value of the rows x outputs answer.
                unsafe { out.set_len(rows * self.outputs) };
                out
            }
            DenseWeight::Bf16(w) => gemm::product(x, rows, w, activation, residual),
        }
    }
}

struct DenseOp<'a> {
    dense: &'a Dense,
    level: Level,
    activation: Activation,
}

impl DenseOp<'_> {
    fn run(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inputs) = layout.shape().dims2()?;
        if inputs != self.dense.inputs {
            candle_core::bail!("dense: {:?} rows for {} inputs", layout.dims(), self.dense.inputs)
        }
        if residual.is_some_and(|r| r.len() != rows * self.dense.outputs) {
            candle_core::bail!("dense: the residual is not {rows}x{}", self.dense.outputs)
        }
        let x = f32_rows(storage, layout)?;
        let y = self.dense.product(self.level, x, rows, self.activation, residual);
        Ok((CpuStorage::F32(y), Shape::from((rows, self.dense.outputs))))
    }
}

impl CustomOp1 for DenseOp<'_> {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(storage, layout, None)
    }
}

impl CustomOp2 for DenseOp<'_> {
    fn name(&self) -> &'static str {
        "dense-residual"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let residual = f32_rows(residual, residual_layout)?;
        self.run(storage, layout, Some(residual))
    }
}

pub(crate) fn f32_rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("needs contiguous f32 rows, got {:?}", storage.dtype()),
    }
}

/// The token embedding (vocab, d), which is also the LM head (tied weights): rows looked up
/// for the input, dot products with every row for the logits.
#[derive(Debug)]
pub(crate) enum TokenTable {
    /// f32 where the file holds it, until copied into huge-page memory.
    F32 {
        mapped: F32Values,
        copy: OnceLock<Vec<f32>>,
    },
    /// Rounded to bf16 at load (half the bytes each decode step streams for the logits).
    Bf16 { values: Vec<bf16>, shape: [usize; 2] },
}

impl TokenTable {
    /// f32 values (vocab, d), used where they lie.
    pub fn f32(values: F32Values) -> Self {
        Self::F32 {
            mapped: values,
            copy: OnceLock::new(),
        }
    }

    /// Copies f32 values into memory backed by huge pages, on the calling thread; lookups and
    /// logits read the copy from then on (each decode step streams the whole table).
    pub fn copy_to_huge_pages(&self) {
        if let Self::F32 { mapped, copy } = self {
            copy.get_or_init(|| {
                let mut values = Vec::with_capacity(mapped.len());
                hub::advise_huge_pages(values.spare_capacity_mut());
                values.extend_from_slice(mapped);
                values
            });
            mapped.release_pages();
        }
    }

    /// The f32 values: the copy once made, else the mapped ones.
    fn f32_values<'a>(mapped: &'a F32Values, copy: &'a OnceLock<Vec<f32>>) -> &'a [f32] {
        copy.get().map_or(&mapped[..], Vec::as_slice)
    }

    /// `values` (vocab, d) rounded to bf16, in memory backed by huge pages where the kernel
    /// grants them: every decode step streams the whole table.
    pub fn bf16(values: &[f32], vocab: usize, d: usize) -> Self {
        /// Values per parallel task.
        const SLICE: usize = 1 << 16;
        let mut narrowed: Vec<bf16> = Vec::with_capacity(values.len());
        hub::advise_huge_pages(narrowed.spare_capacity_mut());
        narrowed.spare_capacity_mut()[..values.len()]
            .par_chunks_mut(SLICE)
            .zip(values.par_chunks(SLICE))
            .for_each(|(dst, src)| {
                for (d, &v) in dst.iter_mut().zip(src) {
                    d.write(bf16::from_f32(v));
                }
            });
        // SAFETY: the loop above wrote each of the first `values.len()` elements.
        unsafe { narrowed.set_len(values.len()) };
        Self::Bf16 {
            values: narrowed,
            shape: [vocab, d],
        }
    }

    fn shape(&self) -> [usize; 2] {
        match self {
            Self::F32 { mapped, .. } => [mapped.shape()[0], mapped.shape()[1]],
            Self::Bf16 { shape, .. } => *shape,
        }
    }

    /// The rows of `ids` as f32 (ids.len(), d); the ids are checked against the vocabulary.
    pub fn rows(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let [vocab, d] = self.shape();
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let id = id as usize;
            if id >= vocab {
                candle_core::bail!("token {id} is outside the vocabulary of {vocab}")
            }
            match self {
                Self::F32 { mapped, copy } => {
                    out.extend_from_slice(&Self::f32_values(mapped, copy)[id * d..(id + 1) * d])
                }
                Self::Bf16 { values, .. } => {
                    out.extend(values[id * d..(id + 1) * d].iter().map(|v| v.to_f32()))
                }
            }
        }
        Tensor::from_vec(out, (ids.len(), d), &Device::Cpu)
    }

    /// `hidden` (rows, d) @ table^T: the logits (rows, vocab), at `level`.
    pub fn logits(&self, level: Level, hidden: &Tensor) -> candle_core::Result<Tensor> {
        hidden
            .contiguous()?
            .apply_op1_no_bwd(&LogitsOp { table: self, level })
    }
}

struct LogitsOp<'a> {
    table: &'a TokenTable,
    level: Level,
}

impl CustomOp1 for LogitsOp<'_> {
    fn name(&self) -> &'static str {
        "logits"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, d) = layout.shape().dims2()?;
        let [vocab, table_d] = self.table.shape();
        if d != table_d {
            candle_core::bail!("logits: {:?} rows for a table of width {table_d}", layout.dims())
        }
        let x = f32_rows(storage, layout)?;
        let y = match self.table {
            TokenTable::F32 { mapped, copy } => {
                let e = TokenTable::f32_values(mapped, copy);
                matvec::rows_times_transposed(self.level, x, e, rows, d, vocab)
            }
            TokenTable::Bf16 { values, .. } => {
                matvec::rows_times_transposed(self.level, x, values, rows, d, vocab)
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((rows, vocab))))
    }
}
