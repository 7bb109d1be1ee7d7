//! GPT-2 in the Hugging Face layout (`Conv1D` weights stored in x out), any size from its
//! `config.json`, the LM head tied to the token embedding.
//!
//! The dense weights (attention and MLP matrices, the tied embedding and head) are held in f32
//! or bf16 ([`WeightPrecision`]); biases, norms, positions and every activation are f32.
//!
//! The model holds no per-request state: each generation owns a [`KvCache`], so any number of
//! requests can run against one loaded model.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use serde::Deserialize;
use simd::Level;

use crate::activation::Gelu;
use crate::attention::{attend_alone, attend_cached, Heads, KvCache, SequenceRows};
use crate::TextError;

/// How the dense weights are held in memory. Decoding reads every dense weight once per step,
/// so bf16 (half the bytes) decodes up to twice as fast; each weight is rounded to 8 bits of
/// mantissa, which moves the logits by a few tenths of a percent of their spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    #[default]
    F32,
    Bf16,
}

impl WeightPrecision {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// The fields of GPT-2's `config.json` the network needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".into()
}

impl Gpt2Config {
    pub fn from_json(text: &str) -> Result<Self, TextError> {
        let config: Self = serde_json::from_str(text).map_err(|e| TextError::Config(e.to_string()))?;
        if config.n_head == 0 || !config.n_embd.is_multiple_of(config.n_head) {
            return Err(TextError::Config(format!(
                "n_embd {} is not a multiple of n_head {}",
                config.n_embd, config.n_head
            )));
        }
        Gelu::from_config(&config.activation_function)?;
        Ok(config)
    }
}

#[derive(Debug)]
struct Linear {
    weight: DenseWeight,
    bias: Tensor,
}

/// A dense layer's weight, in the layout its decode-step product streams fastest on this
/// kind of machine (measured: one layout is not best for both types).
#[derive(Debug)]
enum DenseWeight {
    /// f32 (in, out), as Hugging Face's `Conv1D` stores it: each thread streams a block of
    /// input rows into its own partial sums ([`crate::matvec::linear`]).
    InputsByOutputs(Tensor),
    /// bf16 transposed to (out, in): one dot product per output row
    /// ([`crate::matvec::matmul_transposed`]), which read bf16 weights 20-35% faster than the
    /// input split in a decode step (its sums cost more per weight byte at half the bytes).
    OutputsByInputs(Tensor),
}

impl Linear {
    fn forward(&self, level: Level, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weight {
            DenseWeight::InputsByOutputs(w) => crate::matvec::linear(level, x, w, &self.bias),
            DenseWeight::OutputsByInputs(w) => {
                crate::matvec::matmul_transposed(level, x, w)?.broadcast_add(&self.bias)
            }
        }
    }
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
    }
}

#[derive(Debug)]
struct Block {
    gelu: Gelu,
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

impl Block {
    /// `x + mlp(ln_2(x))`.
    fn feed_forward(&self, level: Level, x: Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.c_fc.forward(level, &self.ln_2.forward(&x)?)?;
        let h = self.mlp_proj.forward(level, &self.gelu.apply(level, &hidden)?)?;
        x + h
    }
}

/// GPT-2 with its language-model head, its kernels those of one [`Level`].
#[derive(Debug)]
pub struct Gpt2 {
    config: Gpt2Config,
    level: Level,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    /// Loads `config.json` and `model.safetensors` (with or without the `transformer.` prefix),
    /// holding the dense weights in `precision` whatever the file's type, for the kernels of
    /// `level` (normally [`simd::level`]).
    pub fn load(
        config_path: &Path,
        weights_path: &Path,
        precision: WeightPrecision,
        level: Level,
    ) -> Result<Self, TextError> {
        let text = std::fs::read_to_string(config_path)
            .map_err(|e| TextError::Config(format!("cannot read {}: {e}", config_path.display())))?;
        let config = Gpt2Config::from_json(&text)?;
        let tensors = hub::load_safetensors(weights_path).map_err(|e| TextError::Weights(e.to_string()))?;
        Self::from_tensors(config, tensors, precision, level)
    }

    /// Builds the model from its named tensors (as in `model.safetensors`).
    pub fn from_tensors(
        config: Gpt2Config,
        mut tensors: BTreeMap<String, Tensor>,
        precision: WeightPrecision,
        level: Level,
    ) -> Result<Self, TextError> {
        let mut take = |name: &str, shape: &[usize], dtype: DType| -> Result<Tensor, TextError> {
            let tensor = tensors
                .remove(name)
                .or_else(|| tensors.remove(&format!("transformer.{name}")))
                .ok_or_else(|| TextError::Weights(format!("missing tensor `{name}`")))?;
            let tensor = match dtype {
                DType::BF16 => bf16_on_huge_pages(&tensor, false)?,
                _ => tensor.to_dtype(dtype)?,
            };
            if tensor.dims() != shape {
                return Err(TextError::Weights(format!(
                    "`{name}` has shape {:?}, expected {shape:?}",
                    tensor.dims()
                )));
            }
            Ok(tensor)
        };
        let dense = precision.dtype();
        let d = config.n_embd;
        let eps = config.layer_norm_epsilon;
        let gelu = Gelu::from_config(&config.activation_function)?;
        let wte = take("wte.weight", &[config.vocab_size, d], dense)?;
        let wpe = take("wpe.weight", &[config.n_positions, d], DType::F32)?;
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            let mut linear = |name: &str, inputs: usize, outputs: usize| -> Result<Linear, TextError> {
                let weight = take(&format!("{p}.{name}.weight"), &[inputs, outputs], DType::F32)?;
                Ok(Linear {
                    weight: match precision {
                        WeightPrecision::F32 => DenseWeight::InputsByOutputs(weight),
                        WeightPrecision::Bf16 => {
                            DenseWeight::OutputsByInputs(bf16_on_huge_pages(&weight, true)?)
                        }
                    },
                    bias: take(&format!("{p}.{name}.bias"), &[outputs], DType::F32)?,
                })
            };
            let c_attn = linear("attn.c_attn", d, 3 * d)?;
            let attn_proj = linear("attn.c_proj", d, d)?;
            let c_fc = linear("mlp.c_fc", d, 4 * d)?;
            let mlp_proj = linear("mlp.c_proj", 4 * d, d)?;
            let mut norm = |name: &str| -> Result<LayerNorm, TextError> {
                Ok(LayerNorm {
                    weight: take(&format!("{p}.{name}.weight"), &[d], DType::F32)?,
                    bias: take(&format!("{p}.{name}.bias"), &[d], DType::F32)?,
                    eps,
                })
            };
            blocks.push(Block {
                gelu,
                ln_1: norm("ln_1")?,
                c_attn,
                attn_proj,
                ln_2: norm("ln_2")?,
                c_fc,
                mlp_proj,
            });
        }
        let ln_f = LayerNorm {
            weight: take("ln_f.weight", &[d], DType::F32)?,
            bias: take("ln_f.bias", &[d], DType::F32)?,
            eps,
        };
        Ok(Self {
            config,
            level,
            wte,
            wpe,
            blocks,
            ln_f,
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// The level of vector instructions the kernels run at.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Runs `tokens` after those already in `cache`, extending it; answers the final hidden
    /// states (new tokens, n_embd), after `ln_f` (for embeddings, retrieval, or [`Gpt2::logits`]).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor, TextError> {
        self.extend_batch(&[tokens], &mut [cache])
    }

    /// Runs independent sequences as one batch and answers each one's final hidden states
    /// (len, n_embd), as [`Gpt2::forward`] would from an empty cache. The dense layers see
    /// every sequence's rows at once, which keeps the matrix products large enough to run at
    /// full speed; attention stays within each sequence.
    pub fn forward_batch(&self, sequences: &[&[u32]]) -> Result<Vec<Tensor>, TextError> {
        on_compute_pool(|| {
            let spans = self.spans(sequences, &vec![0; sequences.len()])?;
            let x = self.run_rows(sequences, &spans, |_, qkv| {
                let attended = spans
                    .iter()
                    .filter(|span| span.len > 0)
                    .map(|span| attend_alone(&qkv.narrow(0, span.offset, span.len)?, self.heads()))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&attended, 0)
            })?;
            Ok(spans
                .iter()
                .map(|span| x.narrow(0, span.offset, span.len))
                .collect::<candle_core::Result<_>>()?)
        })
    }

    /// One step of several generations at once: `inputs[i]` (at least one token) follows what
    /// `caches[i]` holds: the token a generation sampled last, or a prompt or a piece of one
    /// when it starts. The dense layers read their weights once for all the rows, which is
    /// what makes a batch of generations cost little more than one, and lets a starting
    /// generation's prompt ride along with the others' tokens instead of stopping them for a
    /// pass of its own; attention runs per sequence against its own cache. Answers the final
    /// hidden states of every new row, sequence after sequence (total rows, n_embd).
    pub fn extend_batch(&self, inputs: &[&[u32]], caches: &mut [&mut KvCache]) -> Result<Tensor, TextError> {
        on_compute_pool(|| self.extend_batch_on_pool(inputs, caches))
    }

    fn extend_batch_on_pool(
        &self,
        inputs: &[&[u32]],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor, TextError> {
        if inputs.len() != caches.len() {
            return Err(TextError::Weights(format!(
                "{} inputs for {} caches",
                inputs.len(),
                caches.len()
            )));
        }
        if inputs.iter().any(|tokens| tokens.is_empty()) {
            return Err(TextError::Tokenizer("an input has no tokens".into()));
        }
        let starts: Vec<usize> = caches.iter().map(|cache| cache.len).collect();
        let spans = self.spans(inputs, &starts)?;
        for cache in caches.iter_mut() {
            cache.layers.resize_with(self.config.n_layer, Default::default);
        }
        let x = self.run_rows(inputs, &spans, |layer, qkv| {
            let mut layers: Vec<_> = caches.iter_mut().map(|cache| &mut cache.layers[layer]).collect();
            attend_cached(self.level, qkv, &spans, &mut layers, self.heads())
        })?;
        for (cache, span) in caches.iter_mut().zip(&spans) {
            cache.len = span.past + span.len;
        }
        Ok(x)
    }

    /// Where each sequence's rows sit in a batch, after checking its tokens.
    fn spans(&self, sequences: &[&[u32]], starts: &[usize]) -> Result<Vec<SequenceRows>, TextError> {
        let mut offset = 0;
        sequences
            .iter()
            .zip(starts)
            .map(|(tokens, &start)| {
                self.check(tokens, start)?;
                let span = SequenceRows {
                    offset,
                    len: tokens.len(),
                    past: start,
                };
                offset += tokens.len();
                Ok(span)
            })
            .collect()
    }

    /// The layers over a batch's rows, `attend(layer, qkv)` answering the attended rows; then
    /// `ln_f`.
    fn run_rows(
        &self,
        sequences: &[&[u32]],
        spans: &[SequenceRows],
        mut attend: impl FnMut(usize, &Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<Tensor, TextError> {
        let tokens: Vec<u32> = sequences.concat();
        let positions: Vec<u32> = spans
            .iter()
            .flat_map(|span| (span.past..span.past + span.len).map(|p| p as u32))
            .collect();
        let mut x = self.embed(&tokens, &positions)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let qkv = block.c_attn.forward(self.level, &block.ln_1.forward(&x)?)?;
            let attended = attend(layer, &qkv)?;
            x = block.feed_forward(self.level, (x + block.attn_proj.forward(self.level, &attended)?)?)?;
        }
        Ok(self.ln_f.forward(&x)?)
    }

    fn heads(&self) -> Heads {
        Heads {
            count: self.config.n_head,
            dim: self.config.n_embd / self.config.n_head,
        }
    }

    /// Refuses tokens outside the vocabulary, or that would run past the context after
    /// `start` tokens.
    pub fn check(&self, tokens: &[u32], start: usize) -> Result<(), TextError> {
        let end = start + tokens.len();
        if end > self.config.n_positions {
            return Err(TextError::ContextOverflow {
                tokens: end,
                context: self.config.n_positions,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(TextError::Weights(format!(
                "token {bad} is outside the vocabulary"
            )));
        }
        Ok(())
    }

    /// Token plus position embeddings.
    fn embed(&self, tokens: &[u32], positions: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let positions = Tensor::new(positions, &Device::Cpu)?;
        self.wte
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?
            .add(&self.wpe.index_select(&positions, 0)?)
    }

    /// (rows, vocab) next-token logits of final hidden states (the head tied to the token
    /// embedding). Kept apart from [`Gpt2::forward`] so that a prefill pays for the head only on
    /// the positions whose logits it needs (one vocabulary-wide product per row).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, TextError> {
        on_compute_pool(|| Ok(crate::matvec::matmul_transposed(self.level, hidden, &self.wte)?))
    }

    /// The logits of some rows of final hidden states, one list per row, in the order asked.
    pub fn logits_of_rows(&self, hidden: &Tensor, rows: &[u32]) -> Result<Vec<Vec<f32>>, TextError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = Tensor::new(rows, hidden.device())?;
        Ok(self.logits(&hidden.index_select(&rows, 0)?)?.to_vec2()?)
    }
}

/// Runs `work` on a rayon worker. Every layer's products split across the pool; started from
/// inside it they hand work to the other worker directly, where from outside each of the ~50
/// parallel loops of a decode step would put the calling thread to sleep and wake it again.
fn on_compute_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

/// `tensor` in bf16 (rounded to nearest, as candle's conversion), transposed if it is a matrix
/// and `transpose` is set, in memory backed by huge pages like the f32 weights the loader
/// reads: a decode step streams every weight once.
fn bf16_on_huge_pages(tensor: &Tensor, transpose: bool) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;

    /// Values per parallel task of a straight conversion.
    const SLICE: usize = 1 << 16;
    /// Destination rows per parallel task of a transpose: the task reads 64 consecutive
    /// values of each source row and keeps its 64 destination rows in the L2 cache.
    const BLOCK: usize = 64;
    let values = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut narrowed: Vec<bf16> = Vec::with_capacity(values.len());
    hub::advise_huge_pages(narrowed.spare_capacity_mut());
    let spare = &mut narrowed.spare_capacity_mut()[..values.len()];
    let dims = match *tensor.dims() {
        [rows, columns] if transpose && rows > 0 => {
            spare
                .par_chunks_mut(BLOCK * rows)
                .enumerate()
                .for_each(|(block, dst)| {
                    let first = block * BLOCK;
                    for (r, source) in values.chunks_exact(columns).enumerate() {
                        for (c, &v) in source[first..first + dst.len() / rows].iter().enumerate() {
                            dst[c * rows + r].write(bf16::from_f32(v));
                        }
                    }
                });
            vec![columns, rows]
        }
        _ => {
            spare
                .par_chunks_mut(SLICE)
                .zip(values.par_chunks(SLICE))
                .for_each(|(dst, src)| {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        d.write(bf16::from_f32(v));
                    }
                });
            tensor.dims().to_vec()
        }
    };
    // SAFETY: the loop above wrote each of the first `values.len()` elements.
    unsafe { narrowed.set_len(values.len()) };
    Tensor::from_vec(narrowed, dims, tensor.device())
}
